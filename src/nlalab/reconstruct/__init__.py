"""AR side: explanation text -> vector.

The AR reads ``template.format(explanation=...)`` tokenized with ``add_special_tokens=True`` (BOS for
Gemma/Llama: dropping it took Gemma's fve_nrm from 0.77 to 0.31), and its value head is applied to
the rightmost real token, whatever the padding side.

Batch invariance (issue 16). In bf16 a row's reconstruction moves with the rows that share its batch.
Measured as the relative change ||v_batched - v_alone|| / ||v_alone|| at the AR's last token, batch 4
vs 1:

- right-padded batches, bf16: CPU mean 0.25-0.8 %, max 0.9-1.4 % (d=64 fixture pairs; the shipped
  SmolLM2-135M AR); H200 mean 0.99 %, max 1.3 % (random Qwen2 backbone, d=1536, 8 blocks, sdpa);
  fp32: <= 1e-6 on CPU, <= 4e-6 on the H200.
- equal-length batches without padding or mask, bf16: 0 on the d=64 fixtures, but up to 1.1 % on
  SmolLM2 (CPU) and 1.2 % on the H200: bf16 GEMMs change their blocking with the batch dimension, so
  removing padding alone does not fix it; fp32: 0 on CPU, <= 4e-6 on the H200.

At Gemma-12B's B_rv of 0.03 a 1 % change (1 - cos ~ 1e-4) moves fve_nrm by ~0.005. So the AR runs in
fp32 wherever its fp32 weights fit (:func:`choose_ar_dtype`), which removes the effect. Batches stay
right-padded and length-bucketed by default: equal-length batches without a mask (``pad_free=True``) do
not remove the bf16 effect (above) and cost ~4x in the whole study (the 7B-shape study's reconstruct
stage on one H200: 23.7 s pad-free vs 5.7 s bucketed, from many small batches). Tolerances:
:data:`BATCH_TOLERANCE`.

Shared-prefix forwards (:mod:`nlalab.reconstruct.trie`, ``share_prefix``, on by default for fp32 ARs):
token prefixes common to several inputs (the template; the prefix control's sentence prefixes) are computed
once. A row then moves by fp32 summation order, as with another batch size. Measured, as the largest
relative change over the offline demo's 667 AR inputs (bench/bench_ar_prefix.py):

- CPU, shipped SmolLM2-135M AR: shared vs padded <= 1.1e-6; 1.63x faster over both sets (46.2 -> 28.4 s;
  the prefix control's texts 1.82x);
- H200, random fp32 replicas with an identity head: Gemma-3-27B shape (L41) shared vs padded 6.6e-6, the
  padded forward's own batched-vs-alone change 6.4e-6, 1.65x faster; Qwen2.5-7B shape (L20) 2.0e-5 and
  2.1e-5, 1.54x. Deep fp32 models on a GPU thus exceed the fixtures' 1e-5 in either forward.

A check against the padded forward (:data:`CHECK_TOLERANCE`, once per loaded AR) catches a mask or
position that transformers did not take as given (that moves rows by 0.1-1: 0.97 with Gemma's sliding
window left out), and falls back with a warning.
"""

from __future__ import annotations

import warnings
import weakref
from pathlib import Path
from typing import Optional, Sequence

import torch

from nlalab.batching import exact_length_batches, length_buckets, right_padded
from nlalab.errors import NLALabError, UsageError
from nlalab.pairs import arch
from nlalab.reconstruct import trie

# max relative change of one reconstruction between a batched and an unbatched AR forward
BATCH_TOLERANCE = {"fp32": 1e-5, "bf16": 3e-2}


def max_rel_change(got: torch.Tensor, ref: torch.Tensor) -> float:
    """The largest per-vector ``||got - ref|| / ||ref||`` (last axis): the measure of :data:`BATCH_TOLERANCE`
    and :data:`CHECK_TOLERANCE`. Two zero vectors agree; a NaN gives NaN, which no tolerance passes."""
    diff = (got - ref).norm(dim=-1)
    return float((diff / ref.norm(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)).max())


# max relative change of a row between the shared-prefix and the padded forward before the check rejects the
# shared one: 50x the largest rounding change measured (2.1e-5, fp32, module doc), far below a structural error
CHECK_TOLERANCE = {"fp32": 1e-3, "bf16": 1e-1}
AR_DTYPES = ("auto", "fp32", "bf16")
FP32_HEADROOM = 1.25  # weights x this must fit in free device memory (activations of short AR inputs are small)


def ar_param_count(ar_dir) -> int:
    """Parameters in the AR's safetensors (headers only, nothing loaded)."""
    from safetensors import safe_open

    n = 0
    files = sorted(Path(ar_dir).glob("*.safetensors"))
    if not files:
        raise NLALabError(f"{ar_dir}: no *.safetensors weights. Fix: download the complete AR checkpoint.")
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                shape = sf.get_slice(k).get_shape()
                size = 1
                for x in shape:
                    size *= int(x)
                n += size
    return n


def choose_ar_dtype(ar_dir, requested: str = "auto", device: str = "auto",
                    free_bytes: Optional[int] = None) -> tuple[str, str]:
    """``(dtype, reason)`` for loading the AR: ``fp32`` where its fp32 weights fit, else ``bf16``.

    ``requested`` ``fp32``/``bf16`` is returned as is; ``auto`` picks fp32 on CPU, and on a GPU when
    ``4 bytes x params x FP32_HEADROOM`` fits in ``free_bytes`` (default: the device's free memory now).
    Why: bf16 AR outputs depend on batch composition by ~1 % (module doc), which moves fve_nrm visibly at
    low-variance layers (Gemma-12B B_rv 0.03); fp32 removes it.
    """
    if requested not in AR_DTYPES:
        raise UsageError(f"--ar-dtype {requested!r}: expected one of {', '.join(AR_DTYPES)}.")
    if requested != "auto":
        return requested, f"--ar-dtype {requested}"
    dev = device
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if not str(dev).startswith("cuda"):
        return "fp32", "auto: CPU"
    need = 4 * ar_param_count(ar_dir) * FP32_HEADROOM
    if free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(torch.device(dev))[0]
    gib = 2 ** 30
    if need <= free_bytes:
        return "fp32", f"auto: fp32 weights ({need / gib:.1f} GiB with headroom) fit in {free_bytes / gib:.1f} GiB free"
    return "bf16", (f"auto: fp32 weights ({need / gib:.1f} GiB with headroom) exceed {free_bytes / gib:.1f} GiB free; "
                    f"bf16 outputs may move by up to {BATCH_TOLERANCE['bf16']:.0%} with batch composition")


def ar_input_ids(ar, explanations: Sequence[str]) -> list[list[int]]:
    texts = [ar.template.format(explanation=e) for e in explanations]
    return [list(x) for x in ar.tokenizer(texts, add_special_tokens=True)["input_ids"]]


def last_real_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the rightmost 1 in each row (correct under left or right padding)."""
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), idx, torch.full_like(idx, -1)).max(dim=1).values


SHARE_PREFIX = ("auto", "on", "off")
CANARY_ROWS = 4  # rows of the first shared-prefix batch re-run on the padded forward, once per loaded AR
_checked: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # AR model -> canary passed (bool)


def _padded(ar, inner, ids: Sequence[Sequence[int]], pad: int, device, pad_free: bool, group=None,
            n_blocks: int = 0) -> torch.Tensor:
    """Value head at each row's last real token, one right-padded forward of ``ids``."""
    input_ids, mask = right_padded(list(ids), pad, device)
    with torch.inference_mode(), arch.sdpa_backends(device):
        last = last_real_index(mask)
        if group is not None:  # the trunk's output (no final norm) at the last real token, from the group
            sel = torch.stack([torch.arange(len(ids)), last.cpu()], 1)
            hl = group.hidden(ar.model, input_ids, mask, n_blocks, select=sel)
        else:
            h = inner(input_ids=input_ids, attention_mask=None if pad_free else mask,
                      use_cache=False).last_hidden_state
            hl = h[torch.arange(len(ids), device=h.device), last.to(h.device)]
        v = ar.value_head(hl.to(ar.value_head.weight.device, torch.float32))
    return v.float().cpu()


def _shared(ar, inner, group_chunks, pad: int, device) -> tuple[list[int], torch.Tensor]:
    """(rows, value head outputs) of one batch of trie chunks (:mod:`nlalab.reconstruct.trie`)."""
    ids, pos, mask = trie.batch_tensors(group_chunks, pad)
    ids, pos, mask = ids.to(device), pos.to(device), mask.to(device)
    m = trie.layer_masks(ar.model, mask, pos, next(ar.model.parameters()).dtype)
    with torch.inference_mode(), arch.sdpa_backends(device):
        h = inner(input_ids=ids, attention_mask=m, position_ids=pos, use_cache=False).last_hidden_state
        rows = [r for c in group_chunks for r in c.ends]
        gi = torch.tensor([g for g, c in enumerate(group_chunks) for _ in c.ends], device=h.device)
        ni = torch.tensor([n for c in group_chunks for n in c.ends.values()], device=h.device)
        v = ar.value_head(h[gi, ni].to(ar.value_head.weight.device, torch.float32))
    return rows, v.float().cpu()


def share_prefix_plan(ar, ids: Sequence[Sequence[int]], share_prefix: str, pad_free: bool,
                      tensor_parallel) -> tuple[bool, str]:
    """(use the shared-prefix forward, why) for this AR and these inputs."""
    if share_prefix not in SHARE_PREFIX:
        raise UsageError(f"--ar-share-prefix {share_prefix!r}: expected one of {', '.join(SHARE_PREFIX)}.")
    if share_prefix == "off":
        return False, "off"
    if pad_free or tensor_parallel is not None:
        return False, "pad-free or tensor-parallel AR forward"
    devs = {p.device for p in ar.model.parameters()}
    if len(devs) != 1:
        return False, "AR weights on several devices"
    dtype = next(ar.model.parameters()).dtype
    if share_prefix == "auto" and dtype != torch.float32:
        return False, f"auto: AR in {dtype} (bf16 outputs move with batch composition; 'on' to share anyway)"
    why = trie.unsupported_reason(ar.model)
    if why:
        return False, why
    if _checked.get(ar.model) is False:
        return False, "failed its check against the padded forward earlier in this process"
    return True, "on"


def reconstruct(ar, explanations: Sequence[str], batch_size: int = 16, max_length: Optional[int] = None,
                progress: bool = False, pad_free: bool = False, tensor_parallel=None,
                share_prefix: str = "auto", info: Optional[dict] = None) -> torch.Tensor:
    """fp32 [N, d] reconstructions on CPU, rows in the order of ``explanations``.

    ``share_prefix`` (``auto``: fp32 ARs; ``on``: any dtype; ``off``): token prefixes shared by several
    inputs are computed once (:mod:`nlalab.reconstruct.trie`); a row moves by summation order only, as with
    another batch size (module doc), checked once per loaded AR against the padded forward. Where it cannot
    apply (pad-free or tensor-parallel forwards, weights on several devices, unsupported models), the padded
    forward runs.
    ``pad_free=True`` batches only AR inputs of identical length and passes no attention mask, so a
    row's reconstruction does not depend on which rows share its batch (see :data:`BATCH_TOLERANCE`);
    ``pad_free=False`` (default) is right-padded length-bucketed batching (fewer, fuller batches).
    ``tensor_parallel`` (a device count or list; None: off) runs the AR's trunk on the tensor-parallel group
    (``nlalab.verbalize.tp``: the last block's output at each row's last real token comes back) and applies
    the value head here, on rank 0; with fewer than two devices, or an AR it cannot split, the forward stays
    in this process. ``info`` (a dict) receives ``forward``: ``shared-prefix``, or ``padded`` and why.
    """
    if len(explanations) == 0:
        raise NLALabError("Nothing to reconstruct: no explanations.")
    ids = ar_input_ids(ar, explanations)
    if max_length is not None:
        too_long = [i for i, x in enumerate(ids) if len(x) > max_length]
        if too_long:
            raise NLALabError(f"{len(too_long)} AR inputs exceed max_length={max_length} tokens (first: row {too_long[0]}).")
    pad = ar.tokenizer.pad_token_id if ar.tokenizer.pad_token_id is not None else 0
    group = None
    if tensor_parallel is not None:
        from nlalab.verbalize.tp import tp_forward_group

        group = tp_forward_group(ar.model, tensor_parallel)
    device = torch.device("cpu") if group is not None else arch.input_device(ar.model)
    inner = arch.inner_model(ar.model)
    n_blocks = len(arch.decoder_layers(ar.model))
    out = torch.empty(len(ids), ar.d_model, dtype=torch.float32)
    share, why = share_prefix_plan(ar, ids, share_prefix, pad_free, group)
    if share and not _shared_into(out, ar, inner, ids, pad, device, batch_size, progress):
        share, why = False, "failed its check against the padded forward"
    if not share:
        batches = exact_length_batches if pad_free else length_buckets
        for batch in batches(ids, batch_size, "reconstruct" if progress else None):
            out[torch.tensor(batch)] = _padded(ar, inner, [ids[i] for i in batch], pad, device, pad_free, group,
                                               n_blocks)
    if info is not None:
        info["forward"] = "shared-prefix" if share else f"padded ({why})"
    return _finite(out)


def _shared_into(out: torch.Tensor, ar, inner, ids, pad: int, device, batch_size: int, progress: bool) -> bool:
    """Fill ``out`` through the shared-prefix forward; False (``out`` untouched where it matters) when the
    once-per-AR check against the padded forward fails."""
    groups = trie.batches(trie.plan(ids), batch_size)
    if progress:
        from tqdm.auto import tqdm

        groups = tqdm(groups, desc="reconstruct", unit="batch")
    for gi, grp in enumerate(groups):
        rows, v = _shared(ar, inner, grp, pad, device)
        if gi == 0 and ar.model not in _checked:
            some = rows[:CANARY_ROWS]
            ref = _padded(ar, inner, [ids[r] for r in some], pad, device, False)
            dtype = next(ar.model.parameters()).dtype
            tol = CHECK_TOLERANCE["fp32" if dtype == torch.float32 else "bf16"]
            rel = max_rel_change(v[:len(some)], ref)
            _checked[ar.model] = ok = rel <= tol  # NaN: not ok
            if not ok:
                warnings.warn(f"AR shared-prefix forward moved a reconstruction by {rel:.2e} relative to the padded "
                              f"forward (tolerance {tol:.0e}); using the padded forward for this AR.")
                return False
        out[torch.tensor(rows)] = v
    return True


def _finite(out: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(out).all():
        raise NLALabError("AR reconstructions contain NaN/Inf. Fix: check that the final norm was replaced "
                          "(nlalab does this) and that the AR runs in bf16/fp32, not fp16.")
    return out
