"""Compatibility name of the fast engine: everything lives in ``nlalab.verbalize.fast`` (see its docstring).

``from nlalab.verbalize import engine as fast`` keeps working: this module *is* the package's namespace
(the same ``OPTIONS`` object, engine registry and functions), not a copy.
"""

import sys

from nlalab.verbalize import fast as _fast

sys.modules[__name__] = _fast
