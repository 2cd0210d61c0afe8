"""Tiny random-initialised base models in the real architectures (Qwen2, Gemma-3 text and multimodal, Llama).

Why: tests must exercise the same transformers classes, config fields (layer_types, sliding
windows, Gemma's sqrt(d) embedding scale, the multimodal wrapper's key layout) and tied-embedding
defaults as the released bases, but load in milliseconds on a CPU. Weights are fp32 with a fixed
seed and a large init std (0.2) so activations and sampled tokens are not degenerate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from nlalab.pairs.families import families
from nlalab.testing.tokenizers import generation_eos_ids, make_tokenizer

Arch = Literal["qwen2", "gemma3_text", "gemma3_mm", "llama"]
ARCHES: tuple[str, ...] = ("qwen2", "gemma3_text", "gemma3_mm", "llama")
# fixture arch -> model family (nlalab.pairs.families), which also names its tokenizer
TOKENIZER_FAMILY = {a: f.name for f in families() for a in f.fixture_arches}

INIT_STD = 0.2
SLIDING_WINDOW = 8  # far shorter than the AV prompt, so sliding layers really differ from full ones


def gemma_layer_types(n_layers: int) -> list[str]:
    """Every third layer global (the real 5:1 pattern compressed), so a short AR still mixes both kinds."""
    return ["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(n_layers)]


def _token_ids(tok) -> dict:
    return dict(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def _gemma_text_config(vocab: int, n_layers, d_model, n_heads, n_kv_heads, ids):
    from transformers import Gemma3TextConfig

    head_dim = d_model // n_heads
    return Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        max_position_embeddings=2048,
        sliding_window=SLIDING_WINDOW,
        layer_types=gemma_layer_types(n_layers),
        initializer_range=INIT_STD,
        **ids,
    )


def make_config(arch: Arch, tokenizer, n_layers=4, d_model=64, n_heads=4, n_kv_heads=2):
    """The tiny config for ``arch`` (vocab = len(tokenizer)); tie_word_embeddings left at each family's default."""
    vocab = len(tokenizer)
    ids = _token_ids(tokenizer)
    common = dict(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=2048,
        initializer_range=INIT_STD,
        **ids,
    )
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(head_dim=d_model // n_heads, **common)
    if arch == "gemma3_text":
        return _gemma_text_config(vocab, n_layers, d_model, n_heads, n_kv_heads, ids)
    if arch == "gemma3_mm":
        from transformers import Gemma3Config, SiglipVisionConfig

        text = _gemma_text_config(vocab, n_layers, d_model, n_heads, n_kv_heads, ids)
        vision = SiglipVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            image_size=16, patch_size=8, num_channels=3, vision_use_head=False,  # as in real Gemma-3
        )
        tid = tokenizer.convert_tokens_to_ids
        return Gemma3Config(
            text_config=text.to_dict(),
            vision_config=vision.to_dict(),
            mm_tokens_per_image=4,  # 2x2 patches -> 2x2 soft tokens
            boi_token_index=tid("<start_of_image>"),
            eoi_token_index=tid("<end_of_image>"),
            image_token_index=tid("<image_soft_token>"),
            initializer_range=INIT_STD,
            **ids,
        )
    raise ValueError(f"Unknown arch {arch!r}; expected one of {ARCHES}.")


def _model_class(arch: Arch):
    import transformers

    return {
        "qwen2": transformers.Qwen2ForCausalLM,
        "gemma3_text": transformers.Gemma3ForCausalLM,
        "gemma3_mm": transformers.Gemma3ForConditionalGeneration,
        "llama": transformers.LlamaForCausalLM,
    }[arch]


def make_base_model(
    family: Arch,
    out_dir: str | Path,
    n_layers: int = 4,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Save a random-init tiny ``family`` model (safetensors, fp32) with tokenizer and generation_config."""
    from transformers import GenerationConfig

    if family not in ARCHES:
        raise ValueError(f"Unknown arch {family!r}; expected one of {ARCHES}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_family = TOKENIZER_FAMILY[family]
    tok = make_tokenizer(tok_family)  # type: ignore[arg-type]
    cfg = make_config(family, tok, n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads)
    torch.manual_seed(seed)
    model = _model_class(family)(cfg).to(torch.float32).eval()
    gen = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=generation_eos_ids(tok, tok_family),  # type: ignore[arg-type]
        pad_token_id=tok.pad_token_id,
    )
    model.generation_config = gen
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


__all__ = ["ARCHES", "TOKENIZER_FAMILY", "INIT_STD", "SLIDING_WINDOW", "gemma_layer_types", "make_config",
           "make_base_model"]
