"""Llama (also SmolLM2, the offline default): RMSNorm ``w * x`` in the model dtype, no extra norms."""

from nlalab.pairs.families import Family

FAMILY = Family(name="llama", model_types=("llama",), fast_engine=("llama",), embed_scaled=False,
                norm_one_plus_w=False, sandwich_norms=False, qk_norm=False, fixture_arches=("llama",))
