"""nlalab: evaluate Natural Language Autoencoders (AV/AR pairs) correctly, fast and reproducibly.

Pipeline: load pair -> capture -> verbalize -> reconstruct -> score -> report.
The activation address used everywhere is ``blocks.{K}.hook_resid_post``: the output of decoder
block K, which is Hugging Face ``hidden_states[K+1]``.
"""

__version__ = "0.1.0"

from nlalab.errors import NLALabError  # noqa: E402,F401
