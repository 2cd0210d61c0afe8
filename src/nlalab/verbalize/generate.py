"""Batched K-sample generation from injected vectors.

Engines behind one function (``GenerationSettings.engine``), registered with their capabilities in
``nlalab.verbalize.backends``:
- ``auto`` (default): the first of ``backends.AUTO_ORDER`` for the AV's device that supports the model
  (``fast``, else ``loop``; on the CPU too, where ``fast`` runs eagerly).
- ``fast``: ``nlalab.verbalize.fast`` -- shared-prefix prefill, static KV cache, CUDA graphs, the same
  batch-invariant sampling as ``loop`` (same tokens whenever the logits agree).
- ``loop``: our KV-cached decode loop with batch-invariant per-row sampling, so every
  sample is fixed by (seed, vector key, sample index) whatever the batching, resume or device count.
- ``hf``: plain ``transformers.generate`` with ``inputs_embeds`` — the reference path; sampled
  outputs then depend on batch composition (torch's global RNG, seeded per batch).
Greedy outputs of both engines are token-identical (tested).

Several GPUs (``GenerationSettings.devices``, default ``"auto"``): when the AV sits on one CUDA device and
more are visible, the (vector, sample) rows are split into contiguous shards, one per GPU, each run by the
engine above on a replica of the AV in its own thread, and merged back in order
(``nlalab.verbalize.parallel``). Every row keeps its own noise stream, so the records are the same as on
one GPU whenever the logits agree (bitwise on CPU; in bf16 on the GPU a row can differ at a near-tie,
as with another micro-batch size).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Iterator, Literal, Sequence, Union

import torch

from nlalab.errors import NLALabError
from nlalab.settings import (DEFAULT_GREEDY, DEFAULT_MAX_NEW_TOKENS, DEFAULT_SEED, DEFAULT_TEMPERATURE,
                             DEFAULT_TOP_P, SamplingSettings)
from nlalab.verbalize.extract import extract_explanation
from nlalab.verbalize.inject import injected_embeds
from nlalab.verbalize.sampling import MASK32, hash32, row_keys, sample_next, stream_keys  # noqa: F401

Engine = Literal["auto", "fast", "loop", "hf", "tp"]


@dataclass
class GenerationSettings:
    # sampling defaults: declared once in nlalab.settings (SamplingSettings)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    top_k: int = 0
    greedy: bool = DEFAULT_GREEDY
    seed: int = DEFAULT_SEED
    batch_size: int = 32
    engine: Engine = "auto"
    fast_batch_size: int = 0  # fast engine rows per micro-batch; 0 = as many as GPU memory allows
    # Data parallel over GPUs (nlalab.verbalize.parallel.resolve_devices): "auto" = every visible GPU when
    # the AV is on cuda:0 alone (inference-loaded, not sharded, engine not hf), else the AV's device;
    # "all" = the same but an error where it cannot apply; None/"none" = the AV's device only; a count
    # ("2" / 2) = that many GPUs starting with the AV's; or devices ("cuda:0,cuda:1" or a list).
    # Default: $NLALAB_VERBALIZE_DEVICES, else "auto".
    devices: Union[None, str, int, Sequence[str]] = field(
        default_factory=lambda: os.environ.get("NLALAB_VERBALIZE_DEVICES", "auto"))

    def __post_init__(self) -> None:
        """Sampling values checked against the one declaration of their ranges (UsageError, one line)."""
        SamplingSettings(temperature=self.temperature, top_p=self.top_p, greedy=self.greedy,
                         max_new_tokens=self.max_new_tokens, seed=self.seed)

    @classmethod
    def from_sampling(cls, sampling: SamplingSettings, **execution) -> "GenerationSettings":
        """The checked sampling settings plus how to run them (batch_size, engine, devices, ...)."""
        return cls(**sampling.model_dump(), **execution)


def resolve_engine(engine: str, av, plain: bool = False) -> str:
    """``auto`` -> the first backend of ``backends.AUTO_ORDER`` for the AV's device that supports it;
    explicit names unchanged (``nlalab.verbalize.backends.resolve``)."""
    from nlalab.verbalize import backends

    return backends.resolve(engine, av if isinstance(av, torch.nn.Module) else av.model, plain=plain)


@dataclass
class Verbalization:
    vector_index: int
    sample: int
    raw_output: str
    explanation: str
    n_new_tokens: int
    truncated: bool
    missing_close_tag: bool
    empty: bool
    cjk_smell: bool
    cjk_fraction: float
    token_ids: list[int] = field(default_factory=list, repr=False)

    def to_dict(self, with_tokens: bool = False) -> dict:
        d = asdict(self)
        if not with_tokens:
            d.pop("token_ids")
        return d


def cache_arg_name(model) -> str:
    """transformers >= 5.2x calls the KV cache ``cache``; earlier 5.x ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(out):
    c = getattr(out, "cache", None)
    return c if c is not None else out.past_key_values


def decode_loop(av, embeds: torch.Tensor, keys: torch.Tensor, gs: GenerationSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns new tokens [B, <=max_new] (eos included, pad after) and a finished flag [B]."""
    model = av.model
    B = embeds.shape[0]
    device = embeds.device
    eos = torch.tensor(av.eos_ids, device=device)
    pad = av.tokenizer.pad_token_id if av.tokenizer.pad_token_id is not None else av.eos_ids[0]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    tokens = []
    with torch.inference_mode():
        cache_arg = cache_arg_name(model)
        out = model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        past = cache_of(out)
        for step in range(gs.max_new_tokens):
            nxt = sample_next(out.logits[:, -1, :], keys, step, gs.temperature, gs.top_k, gs.top_p, gs.greedy)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            tokens.append(nxt)
            done = done | torch.isin(nxt, eos)
            if bool(done.all()) or step == gs.max_new_tokens - 1:
                break
            out = model(input_ids=nxt.unsqueeze(1), use_cache=True, **{cache_arg: past})
            past = cache_of(out)
    return torch.stack(tokens, 1), done


def _decode_hf(av, embeds: torch.Tensor, batch_seed: int, gs: GenerationSettings) -> tuple[torch.Tensor, torch.Tensor]:
    model = av.model
    torch.manual_seed(batch_seed)
    kw = dict(max_new_tokens=gs.max_new_tokens, eos_token_id=av.eos_ids,
              pad_token_id=av.tokenizer.pad_token_id if av.tokenizer.pad_token_id is not None else av.eos_ids[0])
    if gs.greedy or gs.temperature == 0:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kw.update(do_sample=True, temperature=gs.temperature, top_p=gs.top_p, top_k=gs.top_k or None)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    with torch.inference_mode():
        seq = model.generate(inputs_embeds=embeds, attention_mask=mask, **kw)
    eos = torch.tensor(av.eos_ids, device=seq.device)
    done = torch.isin(seq, eos).any(1)
    return seq, done


def to_records(av, toks: torch.Tensor, done: torch.Tensor, vidx: Sequence[int], sidx: Sequence[int]) -> list[Verbalization]:
    eos = set(av.eos_ids)
    marker = av.sidecar.tokens.injection_char
    out = []
    for r in range(toks.shape[0]):
        row = toks[r].tolist()
        cut = next((i for i, t in enumerate(row) if t in eos), None)
        body = row if cut is None else row[:cut]
        raw = av.tokenizer.decode(body, skip_special_tokens=False)
        truncated = not bool(done[r])
        ex = extract_explanation(raw, truncated=truncated, marker=marker)
        out.append(Verbalization(vector_index=int(vidx[r]), sample=int(sidx[r]), raw_output=raw,
                                 n_new_tokens=len(body) + (0 if cut is None else 1), token_ids=body, **ex))
    return out


def iter_rows(av, vectors: torch.Tensor, todo: Sequence[tuple[int, int]], keys_v: Sequence,
              settings: GenerationSettings, engine: str, stop=None
              ) -> Iterator[tuple[list[int], list[int], torch.Tensor, torch.Tensor]]:
    """The single-device path: run the ``todo`` (vector, sample) rows on ``av`` with the resolved backend
    ``engine`` (``nlalab.verbalize.backends``), yielding (vidx, sidx, tokens, done) per micro-batch, on the
    CPU, in ``todo`` order.

    ``stop`` (a ``threading.Event``) ends it after the current micro-batch. A CUDA out-of-memory halves the
    micro-batch and retries (per engine, so per device). Close the generator when stopping early (the
    fast engine's per-call state is dropped in its ``finally``)."""
    if not todo:
        return
    from nlalab.verbalize import backends

    yield from backends.get(engine).rows(av, vectors, todo, keys_v, settings, stop)


def fast_rows(av, vectors, todo, keys_v, settings: GenerationSettings, stop=None):
    """The fast backend; with ``engine="auto"`` an engine that cannot be built falls back to ``loop``."""
    from nlalab.verbalize import fast

    try:
        fast.get_engine(av)
    except NLALabError as e:
        if settings.engine != "auto":
            raise
        warnings.warn(f"fast engine unavailable ({e}); using the loop engine.")
        yield from loop_rows(av, vectors, todo, keys_v, settings, stop)
        return
    try:
        for batch in fast.iter_fast(av, vectors, todo, keys_v, settings, batch_size=settings.fast_batch_size or None):
            yield batch
            if stop is not None and stop.is_set():
                return
    finally:
        fast.end_call(av)  # drop the engine: buffers, graphs, prefix K/V; fused weights restored


def loop_rows(av, vectors, todo, keys_v, settings: GenerationSettings, stop=None):
    return _chunked_rows(av, vectors, todo, keys_v, settings, stop, hf=False)


def hf_rows(av, vectors, todo, keys_v, settings: GenerationSettings, stop=None):
    return _chunked_rows(av, vectors, todo, keys_v, settings, stop, hf=True)


def _chunked_rows(av, vectors, todo, keys_v, settings: GenerationSettings, stop, hf: bool):
    bs = max(1, int(settings.batch_size))
    pos = 0
    while pos < len(todo):
        chunk = todo[pos:pos + bs]
        vidx = [i for i, _ in chunk]
        sidx = [s for _, s in chunk]
        oom = False
        try:
            embeds = injected_embeds(av.model, av.prompt_ids, vectors[vidx], av.marker_pos, av.injection_scale)
            if hf:
                toks, done = _decode_hf(av, embeds, settings.seed + pos, settings)
            else:
                keys = stream_keys(settings.seed, keys_v, vidx, sidx, embeds.device)
                toks, done = decode_loop(av, embeds, keys, settings)
        except torch.cuda.OutOfMemoryError:
            oom = True
        if oom:  # outside the except block, so the failed call's frames (and its buffers) are gone
            if bs == 1:
                raise NLALabError(
                    "GPU out of memory at batch size 1 while verbalizing. Fix: lower --max-new-tokens, "
                    "use a GPU with more memory, or shard the AV with --device-map auto."
                )
            bs = max(1, bs // 2)
            from nlalab.verbalize.fast import empty_cache

            empty_cache()
            continue
        yield vidx, sidx, toks.cpu(), done.cpu()
        pos += len(chunk)
        if stop is not None and stop.is_set():
            return
