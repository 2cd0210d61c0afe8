"""AV side: canonical prompt, injection, batched K-sample generation, explanation extraction."""

from nlalab.verbalize.dispatch import verbalize  # noqa: F401
from nlalab.verbalize.extract import extract_explanation  # noqa: F401
from nlalab.verbalize.generate import GenerationSettings, Verbalization  # noqa: F401
from nlalab.verbalize.inject import injected_embeds, rescale  # noqa: F401
from nlalab.verbalize import backends  # noqa: F401,E402
from nlalab.verbalize import builtin_backends  # noqa: F401,E402  (registers loop, hf, fast and tp)
