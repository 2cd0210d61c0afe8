"""Gemma-3 (text model and the multimodal wrapper, whose decoder config is ``gemma3_text``): scaled
embeddings, (1 + w) RMSNorm in fp32, sandwich norms, q/k norms, sliding-window layers, logit soft-capping."""

from nlalab.pairs.families import Family

FAMILY = Family(name="gemma3", model_types=("gemma3_text", "gemma3"), fast_engine=("gemma3_text",),
                embed_scaled=True, norm_one_plus_w=True, sandwich_norms=True, qk_norm=True,
                fixture_arches=("gemma3_text", "gemma3_mm"))
