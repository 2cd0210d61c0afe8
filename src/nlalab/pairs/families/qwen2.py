"""Qwen2 / Qwen2.5: Llama's layer with q/k/v biases."""

from nlalab.pairs.families import Family

FAMILY = Family(name="qwen2", model_types=("qwen2",), fast_engine=("qwen2",), embed_scaled=False,
                norm_one_plus_w=False, sandwich_norms=False, qk_norm=False, fixture_arches=("qwen2",))
