"""The study's controls, one module each, registered in the order they run and render.

Add a control: write a module with a :class:`~nlalab.study.controls.base.Control` subclass decorated with
:func:`~nlalab.study.controls.base.register`, and import it here (or anywhere before the study runs)."""

from nlalab.study.controls.base import (Control, Figure, GenJob, PlainJob, StudyContext, get, names,  # noqa: F401
                                        register, registry, selectable, unregister)
from nlalab.study.controls import (recall_permutation, random_gaussian, directions, recon_permutation,  # noqa: F401
                                   blind, baselines, prefix, grounding, seeds, contrast_directions)
