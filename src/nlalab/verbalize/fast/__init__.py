"""Fast verbalization engine (``engine="fast"``): shared-prefix prefill, static KV cache, CUDA graphs.

What it does, and why each part is there:

- **Prefix sharing.** Every AV prompt is the same token sequence except the injected marker row, so
  the keys/values of the ``P = marker_pos`` tokens *before* the marker are computed once, at batch 1.
  Each row only computes the suffix from the marker on (``S = len(prompt) - P`` tokens) in prefill.
  Two cache layouts (``EngineOptions.attention``):
  ``shared`` keeps the prefix K/V once; decode attention reads it once per KV head per step (a Triton
  flash-decoding kernel on CUDA in bf16/fp16, reading only the filled cache slots; elsewhere a two-part
  GEMM attention) -- no per-row prefix slots, least memory and traffic. ``copy`` broadcasts the prefix
  K/V into slots ``[0, P)`` of every row's cache once per batch shape, and decode attention is
  ``F.scaled_dot_product_attention`` over the whole static cache with a mask. ``auto``: ``shared``
  when the Triton kernel is available (it passes a self-check at engine build) and on the CPU (measured
  faster there, rows identical), else ``copy`` unless memory fits more rows with ``shared``. Eager CPU
  decoding attends over the filled slots only.
- **Static cache.** Each row's cache holds ``(P +) S + max_new_tokens`` slots, allocated once per batch
  shape and reused; slots beyond the current step are masked (same mask for every row, since all
  rows advance in lockstep and share one prompt length). GQA without repeating K/V: the query heads
  of one KV head are stacked along the query axis.
- **One decode step = one CUDA graph replay.** Embedding, all layers (the projections, norms, RoPE and
  MLP ``torch.compile``'d per layer part when the call is long enough to repay the compile, see
  ``EngineOptions.compile``; one compiled graph serves every layer), attention, the
  final norm, the LM head, logit soft-capping and our counter-based sampler run inside the graph; the
  step counter is a device tensor that the graph increments itself. The host only replays, and looks
  at "all rows finished?" every ``check_every`` steps, so there is no per-step host sync; it stops
  early when all rows are done.
- **Sampling semantics are the ``loop`` engine's:** the noise for (seed, vector key, sample, step,
  token) is the same pure hash (``nlalab.verbalize.sampling``), so a row's tokens do not depend on
  batching, padding, micro-batch size or engine, whenever the logits agree (bitwise on CPU fp32).
- **Repeated rows share one prefill** (the K samples of one activation, of one blind prompt, padding rows):
  computed once, K/V and last hidden state copied (``OPTIONS.dedup_prefill``).
- **CPU head** (``head``): with the screened sampler, the head samples from bf16 logits with a proven
  error bound and exact fp32 logits for the few tokens that can win; the same tokens as the fp32 head.
- **CUDA sampler** (``sampler_kernel``): fp32 scores for the whole vocabulary and float64 ones only near
  each row's best (Triton, inside the graph); the same tokens as the full float64 pass, checked at engine
  build (``OPTIONS.gpu_screen``).
- **Micro-batching** in equal chunks (the last padded with throw-away rows, so one graph serves all
  chunks), halved and retried on CUDA out-of-memory (the engine remembers the size that fitted).

The math is our own re-implementation of the decoder (RMSNorm, RoPE with the model's own cos/sin
tables read off its forward, GQA attention with sliding windows, gated MLP, final logit soft-capping)
over the model's parameters, for Llama, Qwen2 and Gemma-3 text (also Gemma-3 wrapper checkpoints,
which nlalab loads as text models). Formulas follow transformers' modules operation by operation; on
CPU in fp32 greedy and sampled outputs are token-identical to ``loop``/``hf`` (tests/unit/test_engine.py).
Prefill attention is ``scaled_dot_product_attention`` (fp32 scores), decode attention keeps fp32 scores
too (Triton kernel, sdpa); compiled parts keep eager's bf16 rounding points (inductor
``emulate_precision_casts``). In bf16 two kernel sets still round differently, so a row can leave the
``loop`` row at a near-tie after some tokens (tests/gpu/test_gpu_engine.py compares that rate with the
rate at which ``loop`` disagrees with itself at another batch size).

The engine holds the model's Parameters (not copies), so ``nlalab.pairs.load.release`` frees the
weights; per-batch buffers and graphs are freed at the end of each ``verbalize`` call unless
``OPTIONS.keep_state``. On CPU the engine runs the same prefix-sharing, static-cache and step logic
eagerly (no graphs, no compile), so the CPU tests exercise it.

Package layout: ``options`` (knobs, device lock), ``maths`` (the decoder as pure functions, compiled
variants), ``kernel`` (Triton decode attention), ``weights`` (supported models, per-layer weight views;
per-family facts from ``nlalab.pairs.families``), ``engine`` (``FastEngine``), ``runner`` (engine
registry, micro-batch sizing, ``iter_fast``), ``head`` (the CPU head over bf16 logits with a bound),
``sampler_kernel`` (the CUDA Triton sampler),
``plain`` (plain mode: prompts of different lengths, no
injection). ``nlalab.verbalize.engine`` re-exports this package for older imports.
"""

from nlalab.verbalize.fast.engine import _LAST, FastEngine, Stats, _EmbedOnly, _State, last_stats  # noqa: F401
from nlalab.verbalize.fast.kernel import _triton_kernel, attend_decode_triton  # noqa: F401
from nlalab.verbalize.fast.maths import (  # noqa: F401
    _attend, _attend_sdpa, _compiled_fns, _head_sample, _mlp, _post_attn, _pre_attn, _rms, _rope, _rotate_half,
    _sample, token_hash, uniform_t)
from nlalab.verbalize.fast.options import (  # noqa: F401
    DEVICE_LOCK, OPTIONS, EngineOptions, _resolved_compile, _resolved_graphs, empty_cache, on_device)
from nlalab.verbalize.fast.runner import _ENGINES, auto_batch, end_call, get_engine, iter_fast, release_engines  # noqa: F401
from nlalab.verbalize.fast.weights import SUPPORTED_MODEL_TYPES, _eps, _Layer, unsupported_reason  # noqa: F401
