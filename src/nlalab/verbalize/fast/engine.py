"""``FastEngine``: one AV model + one prompt (prefix K/V, rotary tables, static buffers, graphs).

Over 500 lines because the class is one state machine (set-up, prefill, decode step, capture, generate)
whose parts share its buffers and invariants; the maths, kernel, weights and runner live beside it."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from nlalab.errors import NLALabError
from nlalab.pairs import arch, families
from nlalab.pairs.arch import sdpa_backends
from nlalab.verbalize.fast.kernel import _triton_kernel, attend_decode_triton
from nlalab.verbalize.fast.maths import (
    _attend,
    _attend_sdpa,
    _compiled_fns,
    _head_sample,
    _post_attn,
    _pre_attn,
    _rms,
    SamplerWork,
    screen_self_check,
    token_hash,
)
from nlalab.verbalize.fast.options import (
    DEVICE_LOCK,
    OPTIONS,
    _resolved_compile,
    _resolved_graphs,
    empty_cache,
    on_device,
)
from nlalab.verbalize.fast.weights import _eps, _Layer, layer_weights, read_rope_tables, unsupported_reason
from nlalab.verbalize.inject import injected_embeds
from torch import nn


@dataclass
class _State:
    """Static buffers of one batch shape; the CUDA graph reads and writes exactly these tensors."""

    B: int
    S: int
    Lr: int
    max_new: int
    kr: list
    vr: list
    cur: torch.Tensor
    t: torch.Tensor
    keys: torch.Tensor
    done: torch.Tensor
    out: torch.Tensor
    kpos_r: torch.Tensor
    shared: bool  # prefix K/V kept once (True) or copied into slots [0, P) of every row (False)
    off: int  # cache slot of prompt position P (the marker): 0 if shared, else P
    graph: Any = None
    graph_key: Any = None
    sp: Any = None  # the sampling settings (and eos tensor) the graph was captured with


@dataclass
class Stats:
    """What the last ``generate`` did (for tests and the benchmark's profile line)."""

    prefix_len: int = 0
    suffix_len: int = 0
    batch: int = 0
    steps: int = 0
    graphs: bool = False
    compile: str = "none"
    attention: str = ""
    prefill_s: float = 0.0
    decode_s: float = 0.0
    capture_s: float = 0.0
    extra: dict = field(default_factory=dict)


_LAST: list = [Stats()]
# (device, vocabulary, margin) -> the Triton sampler's self-check result, '' = passed (FastEngine._screen_ok)
_SCREEN_CHECKED: dict = {}


def last_stats() -> Stats:
    """Stats of the most recent ``FastEngine.generate`` in this process (engines may be gone by now)."""
    return _LAST[0]


def duplicate_rows(x: torch.Tensor) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """``(rep, inv)`` with ``x[rep][inv]`` equal to ``x`` bit for bit: ``rep`` the first row of each distinct
    row, in row order; None when every row differs. Why: the K samples of one activation (and the blind
    control's samples of one prompt) share their whole prompt, so their prefill is one computation copied;
    rows compare by bit pattern (-0.0 is not 0.0, NaN equals itself)."""
    B = x.shape[0]
    if B < 2:
        return None
    flat = x.reshape(B, -1)
    if flat.is_floating_point():
        flat = flat.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()])
    u, inv = torch.unique(flat, dim=0, return_inverse=True)
    U = u.shape[0]
    if U == B:
        return None
    first = torch.full((U,), B, dtype=torch.long, device=x.device).scatter_reduce_(
        0, inv, torch.arange(B, device=x.device), "amin")
    order = first.argsort()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(U, device=x.device)
    return first[order], rank[inv]


class _EmbedOnly:
    """What ``injected_embeds`` needs of a model, without holding the model itself."""

    def __init__(self, embed: nn.Module):
        self._embed = embed

    def get_input_embeddings(self) -> nn.Module:
        return self._embed


class FastEngine:
    """One AV model + one prompt (prefix K/V cached). Use ``get_engine(av)``.

    Holds the model's Parameters and a weak reference to the model, never copies of the weights."""

    def __init__(self, model: nn.Module, prompt_ids: Sequence[int], marker_pos: int, rope_len: int = 0):
        why = unsupported_reason(model)
        if why:
            raise NLALabError(f"The fast engine does not support this AV: {why}. Use engine='loop'.")
        self._model = weakref.ref(model)
        self.cfg = arch.text_config(model.config)
        self.prompt_ids = [int(i) for i in prompt_ids]
        self.P = int(marker_pos)
        self.T = len(self.prompt_ids)
        if not 0 <= self.P < self.T:
            raise NLALabError(f"marker_pos {self.P} outside the prompt of {self.T} tokens.")
        self.embed = model.get_input_embeddings()
        self.device = self.embed.weight.device
        self.dtype = self.embed.weight.dtype
        inner = arch.inner_model(model)
        layers = arch.decoder_layers(model)
        a0 = layers[0].self_attn
        fam = families.family_of(getattr(self.cfg, "model_type", ""))
        self.gemma = bool(fam.norm_one_plus_w)  # (1 + w) fp32 RMSNorm and sandwich norms (nlalab.pairs.families)
        if fam.sandwich_norms != hasattr(layers[0], "pre_feedforward_layernorm"):
            raise NLALabError(f"fast engine: {type(layers[0]).__name__} does not have the layer norms the "
                              f"{fam.name} family declares (nlalab.pairs.families). Use engine='loop'.")
        self.n_heads = int(self.cfg.num_attention_heads)
        self.n_kv = int(self.cfg.num_key_value_heads)
        self.head_dim = int(getattr(a0, "head_dim", None) or self.cfg.hidden_size // self.n_heads)
        self.scaling = float(getattr(a0, "scaling", self.head_dim ** -0.5))
        # Gemma-3's attention modules do not pass attn_logit_softcapping to the attention function.
        fs = getattr(self.cfg, "final_logit_softcapping", None)
        self.final_softcap = float(fs) if fs is not None else None
        self.eps = _eps(layers[0].input_layernorm)
        self.qk_eps = _eps(a0.q_norm) if getattr(a0, "q_norm", None) is not None else self.eps
        self.act = layers[0].mlp.act_fn
        self.norm_w = inner.norm.weight
        self.norm_eps = _eps(inner.norm)
        self.lm_w = model.lm_head.weight
        self.lm_b = getattr(model.lm_head, "bias", None)
        self.vocab = int(self.lm_w.shape[0])
        self._check_norms(layers[0])
        self.layers: list[_Layer] = []
        for lay in layers:
            win = getattr(lay.self_attn, "sliding_window", None)
            self.layers.append(_Layer(**vars(layer_weights(lay, self.gemma)), window=int(win) if win else None))
        self.windows = sorted({L.window for L in self.layers}, key=lambda w: -1 if w is None else w)
        self._fused: list = []
        if OPTIONS.fuse_weights is not False:  # None (default): on every device
            self._fuse(layers)
        self.cos: list[torch.Tensor] = []
        self.sin: list[torch.Tensor] = []
        self.kp: list[torch.Tensor] = []
        self.vp: list[torch.Tensor] = []
        self.hv = token_hash(self.vocab, self.device)
        # eager CPU decoding: reused [B, V] buffers and the screened sampler (maths.SamplerWork)
        screen = self.device.type == "cpu" and OPTIONS.cpu_screen is not False
        self.work: Optional[SamplerWork] = SamplerWork(self._bounded_head()) if screen else None
        self.compile_policy = _resolved_compile(self.device)
        self.compile_mode = "none" if self.compile_policy == "auto" else self.compile_policy
        self.use_graphs = _resolved_graphs(self.device)
        self.max_rows: Optional[int] = None  # largest micro-batch known to fit (after an OOM)
        self._fns = None
        self._cap_stream = None  # this engine's CUDA graph capture stream (made at the first capture)
        self.states: dict = {}
        self.stats = Stats()
        self.prefill_rows = 0  # rows the last prefill computed (fewer than the batch when rows repeat)
        with torch.no_grad():
            self._rope_tables(max(self.T + 256, int(rope_len)))  # one forward of the model: size it once
            self._prefix()
        self.triton = self._triton_ok()
        self.gpu_screen = self._screen_ok()

    # ---------------------------------------------------------------------------------- set-up

    def _fuse(self, layers) -> None:
        """q/k/v and gate/up of each layer into one buffer each; the Parameters become views of it."""
        with torch.no_grad():
            for lay, L in zip(layers, self.layers):
                at, mlp = lay.self_attn, lay.mlp
                groups = [[at.q_proj.weight, at.k_proj.weight, at.v_proj.weight],
                          [mlp.gate_proj.weight, mlp.up_proj.weight]]
                bs = [at.q_proj.bias, at.k_proj.bias, at.v_proj.bias]
                if all(b is not None for b in bs):
                    groups.append(bs)
                elif any(b is not None for b in bs):
                    continue
                fused = []
                for ps in groups:
                    buf = torch.cat([p.data for p in ps], 0)
                    o = 0
                    for p in ps:
                        p.data = buf[o:o + p.shape[0]]
                        o += p.shape[0]
                    fused.append(buf)
                    self._fused.extend(ps)
                L.wqkv, L.wgu = fused[0], fused[1]
                L.bqkv = fused[2] if len(fused) > 2 else None
        if self.device.type == "cuda":
            empty_cache()  # the old per-matrix blocks would otherwise stay reserved and fragment

    def unfuse(self) -> None:
        """Give every fused Parameter its own storage again (values unchanged). Needs one fused buffer of
        free memory at a time; if even that is missing, the Parameters stay views (same values)."""
        for L in self.layers:
            L.wqkv = L.bqkv = L.wgu = None
        with torch.no_grad():
            for p in self._fused:
                if p.device.type == "meta":
                    continue
                try:
                    p.data = p.data.clone()
                except torch.cuda.OutOfMemoryError:
                    empty_cache()
                    try:
                        p.data = p.data.clone()
                    except torch.cuda.OutOfMemoryError:
                        warnings.warn("fast engine: no memory to un-fuse the AV's q/k/v and gate/up weights; "
                                      "they stay views of one buffer per layer (same values).")
                        break
        self._fused = []
        for L in self.layers:
            L.wqkv = L.bqkv = L.wgu = None

    def _bounded_head(self):
        """The CPU head that samples from bf16 logits with a proven bound (fast.head), when it passes its
        checks on this machine; else None (the full fp32 head)."""
        if OPTIONS.cpu_bf16_head is False or self.lm_b is not None or self.final_softcap is not None:
            return None
        from nlalab.verbalize.fast.head import BoundedHead

        with torch.no_grad():
            return BoundedHead.build(self.lm_w, force=OPTIONS.cpu_bf16_head is True)

    def alive(self) -> bool:
        m = self._model()
        return m is not None and self.lm_w.device.type != "meta" and self.lm_w.device == self.device

    def _check_norms(self, layer) -> None:
        """Our RMSNorm must equal the model's module bitwise (guards against an unknown norm variant)."""
        g = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(2, 3, layer.input_layernorm.weight.shape[0], generator=g).to(self.device, self.dtype)
        with torch.no_grad():
            ref = layer.input_layernorm(x)
            ours = _rms(x, layer.input_layernorm.weight, self.eps, self.gemma)
        if not torch.equal(ref, ours):
            raise NLALabError(f"fast engine: {type(layer.input_layernorm).__name__} differs from our RMSNorm.")

    def _triton_ok(self) -> bool:
        """Triton decode attention: CUDA, half precision, and it must match the torch attention here."""
        if OPTIONS.triton is False or self.device.type != "cuda" or self.dtype not in (torch.bfloat16,
                                                                                        torch.float16):
            return False
        if self.head_dim & (self.head_dim - 1) or self.head_dim < 16:
            return False
        if not _triton_kernel():
            return False
        try:
            g = torch.Generator(device=self.device).manual_seed(0)
            B, P, L, D = 3, max(self.P, 1), 70, self.head_dim
            mk = lambda *s: torch.randn(*s, device=self.device, generator=g).to(self.dtype)  # noqa: E731
            q = mk(B, self.n_heads, 1, D)
            kp, vp = mk(self.n_kv, P, D), mk(self.n_kv, P, D)
            kr, vr = mk(B, self.n_kv, L, D), mk(B, self.n_kv, L, D)
            worst = 0.0
            for pos_v, win in ((P + 5, None), (P + L - 1, None), (P + 40, 17)):
                pos = torch.tensor([pos_v], device=self.device)
                got = attend_decode_triton(q, kp, vp, kr, vr, pos, P, win, self.scaling).float()
                kpos_p = torch.arange(P, device=self.device)
                kpos_r = P + torch.arange(L, device=self.device)
                mp, mr = kpos_p <= pos_v, kpos_r <= pos_v
                if win:
                    mp, mr = mp & (kpos_p > pos_v - win), mr & (kpos_r > pos_v - win)
                ref = _attend(q.float(), kp.float(), vp.float(), kr.float(), vr.float(), mp[None], mr[None],
                              self.scaling)
                worst = max(worst, float((got - ref).norm() / ref.norm()))
            if worst > 2e-2 or not math.isfinite(worst):
                warnings.warn(f"fast engine: Triton decode attention failed its self-check (rel. err {worst:.3g}); "
                              "using torch attention.")
                return False
            return True
        except Exception as e:  # pragma: no cover - depends on the GPU stack
            warnings.warn(f"fast engine: Triton decode attention unavailable ({e!r}); using torch attention.")
            return False

    def _screen_ok(self) -> bool:
        """The Triton sampler (``fast.sampler_kernel``): CUDA, and it must pick the full path's tokens here.
        The self-check runs once per device, vocabulary size and margin in the process (engines are rebuilt
        for every ``verbalize`` call)."""
        if OPTIONS.gpu_screen is False or self.device.type != "cuda":
            return False
        from nlalab.verbalize.fast import sampler_kernel

        if not sampler_kernel.available():
            return False
        key = (self.device, self.vocab, sampler_kernel.ABS, sampler_kernel.REL)
        bad = _SCREEN_CHECKED.get(key)
        if bad is None:
            try:
                bad = screen_self_check(self.hv)
            except Exception as e:  # pragma: no cover - depends on the GPU stack
                bad = f"unavailable: {e!r}"
            _SCREEN_CHECKED[key] = bad
        if bad:  # every engine that falls back says so
            warnings.warn(f"fast engine: Triton sampler failed its self-check ({bad}); using the full float64 "
                          "sampler.")
        return not bad

    def _rope_tables(self, length: int) -> None:
        """cos/sin per layer exactly as the model computes them: read off its own forward (hooks)."""
        self.cos, self.sin, idx = read_rope_tables(self._model(), length, self.device, self.dtype)
        for lay, i in zip(self.layers, idx):
            lay.rope = i
        self.rope_len = length

    def _masks(self, pos_q: torch.Tensor, kpos_r: torch.Tensor) -> dict:
        """window -> (mask over the prefix [S,P], mask over the row cache [S,L]) for query positions."""
        kpos_p = torch.arange(self.P, device=pos_q.device)
        out = {}
        for w in self.windows:
            mp = kpos_p[None, :] <= pos_q[:, None]
            mr = kpos_r[None, :] <= pos_q[:, None]
            if w is not None:
                mp = mp & (kpos_p[None, :] > pos_q[:, None] - w)
                mr = mr & (kpos_r[None, :] > pos_q[:, None] - w)
            out[w] = (mp, mr)
        return out

    def _eager_fns(self) -> dict:
        return {"pre": _pre_attn, "post": _post_attn, "head": _head_sample}

    def _decode_fns(self) -> dict:
        if self._fns is None:
            with DEVICE_LOCK:
                self._fns = _compiled_fns(self.compile_mode)
        return self._fns

    def _rope_rows(self, pos) -> dict:
        """rope table -> (cos, sin) rows at ``pos``: gathered once per forward for every layer that shares
        the table (28-62 layers, one or two tables) instead of twice per layer."""
        return {r: (self.cos[r].index_select(0, pos), self.sin[r].index_select(0, pos))
                for r in {L.rope for L in self.layers}}

    def _pre(self, fns, L: _Layer, x, cs: dict):
        """``cs``: :meth:`_rope_rows` at this forward's positions."""
        cos, sin = cs[L.rope]
        if L.wqkv is not None:
            w = (L.wqkv, L.bqkv if L.bqkv is not None else None, None, None, None, None)
        else:
            w = (L.wq, L.bq, L.wk, L.bk, L.wv, L.bv)
        return fns["pre"](x, L.ln_in, *w, L.qn, L.kn, cos, sin, self.eps, self.qk_eps, self.gemma, self.n_heads,
                          self.n_kv, self.head_dim)

    def _post(self, fns, L: _Layer, x, a):
        wg, wu = (L.wgu, None) if L.wgu is not None else (L.wg, L.wu)
        return fns["post"](x, a, L.wo, L.bo, L.ln_post_attn, L.ln_pre_ff, L.ln_post_ff, wg, wu, L.wd, self.act,
                           self.eps, self.gemma)

    def _prefix(self) -> None:
        """K/V of the prompt tokens before the marker, computed once at batch 1 and shared by all rows."""
        self.kp, self.vp = [], []
        if self.P == 0:
            return
        ids = torch.tensor(self.prompt_ids[: self.P], device=self.device)[None]
        x = self.embed(ids)
        pos = torch.arange(self.P, device=self.device)
        fns = self._eager_fns()
        cs = self._rope_rows(pos)
        with sdpa_backends(self.device):
            for L in self.layers:
                q, k, v = self._pre(fns, L, x, cs)
                self.kp.append(k[0].contiguous())
                self.vp.append(v[0].contiguous())
                mr = pos[None, :] <= pos[:, None]
                if L.window is not None:
                    mr = mr & (pos[None, :] > pos[:, None] - L.window)
                x = self._post(fns, L, x, _attend_sdpa(q, k, v, mr, self.scaling))

    def _state(self, B: int, S: int, max_new: int, shared: bool) -> _State:
        key = (B, S, max_new, shared)
        st = self.states.get(key)
        if st is None:
            off = 0 if shared else self.P
            Lr = off + S + max_new
            if self.device.type == "cuda":
                Lr = -(-Lr // 16) * 16  # aligned rows for the attention kernels; extra slots stay masked
            dev = self.device
            shape = (B, self.n_kv, Lr, self.head_dim)
            st = _State(
                B=B, S=S, Lr=Lr, max_new=max_new,
                kr=[torch.zeros(shape, device=dev, dtype=self.dtype) for _ in self.layers],
                vr=[torch.zeros(shape, device=dev, dtype=self.dtype) for _ in self.layers],
                cur=torch.zeros(B, dtype=torch.long, device=dev), t=torch.zeros(1, dtype=torch.long, device=dev),
                keys=torch.zeros(B, dtype=torch.long, device=dev), done=torch.zeros(B, dtype=torch.bool, device=dev),
                out=torch.zeros(B, max_new, dtype=torch.long, device=dev),
                kpos_r=(self.P - off) + torch.arange(Lr, device=dev), shared=shared, off=off,
            )
            if not shared and self.P:  # broadcast the prefix K/V once; these slots are never written again
                for i in range(len(self.layers)):
                    st.kr[i][:, :, :self.P].copy_(self.kp[i][None])
                    st.vr[i][:, :, :self.P].copy_(self.vp[i][None])
            self.states[key] = st
        return st

    def drop_states(self) -> None:
        """Free every per-batch buffer and graph (after an OOM, at the end of a call, or on request)."""
        self.states.clear()
        if self.work is not None:
            self.work = SamplerWork(self.work.head)

    def _work_kw(self) -> dict:
        """The head's sampler arguments: ``work`` for eager CPU decoding (compiled/graphed steps never get
        it), ``screen`` for CUDA engines whose Triton sampler passed its self-check."""
        if self.work is not None:
            return {"work": self.work}
        return {"screen": True} if self.gpu_screen else {}

    # -------------------------------------------------------------------------------- running

    def _prefill(self, st: _State, embeds: torch.Tensor, sp: dict, fns: dict) -> None:
        """The suffix rows [marker, end of prompt) of every row, over the shared prefix (sdpa, fp32 scores).
        Rows with the same injected vector (the K samples of one activation, padding rows) are computed once
        and their K/V and last hidden state copied (:func:`duplicate_rows`)."""
        S, a, b = st.S, st.off, st.off + st.S
        pos = self.P + torch.arange(S, device=self.device)
        dup = duplicate_rows(embeds[:, 0]) if OPTIONS.dedup_prefill else None
        x = embeds if dup is None else embeds.index_select(0, dup[0])
        self.prefill_rows = int(x.shape[0])
        masks = self._masks(pos, st.kpos_r[:b])
        eager = self._eager_fns()
        cs = self._rope_rows(pos)
        for i, L in enumerate(self.layers):
            q, k, v = self._pre(eager, L, x, cs)
            st.kr[i][:, :, a:b].copy_(k if dup is None else k.index_select(0, dup[1]))
            st.vr[i][:, :, a:b].copy_(v if dup is None else v.index_select(0, dup[1]))
            mp, mr = masks[L.window]
            if st.shared and self.P:
                B = x.shape[0]
                kk = torch.cat([self.kp[i][None].expand(B, -1, -1, -1), k], dim=2)
                vv = torch.cat([self.vp[i][None].expand(B, -1, -1, -1), v], dim=2)
                att = _attend_sdpa(q, kk, vv, torch.cat([mp, mr], dim=-1), self.scaling)
            elif dup is None:
                att = _attend_sdpa(q, st.kr[i][:, :, :b], st.vr[i][:, :, :b], mr, self.scaling)
            else:  # copy layout: the representative rows' own cache rows (prefix copies + the K/V just written)
                att = _attend_sdpa(q, st.kr[i][dup[0], :, :b], st.vr[i][dup[0], :, :b], mr, self.scaling)
            x = self._post(eager, L, x, att)
        st.done.zero_()
        st.t.zero_()
        last = x[:, -1] if dup is None else x[:, -1].index_select(0, dup[1])
        nxt, done = fns["head"](last, self.norm_w, self.norm_eps, self.gemma, self.lm_w, self.lm_b,
                                self.final_softcap, st.keys, st.t, self.hv, st.done, sp["eos"], sp["pad"],
                                sp["temperature"], sp["top_k"], sp["top_p"], sp["greedy"], **self._work_kw())
        st.out[:, 0].copy_(nxt)
        st.cur.copy_(nxt)
        st.done.copy_(done)
        st.t.fill_(1)

    def _attend_step(self, st: _State, i: int, L: _Layer, q, k, v, pos, slot, masks, upto: Optional[int] = None):
        kp = self.kp[i] if self.P else None
        vp = self.vp[i] if self.P else None
        if st.shared and self.triton:  # the kernel also writes k/v into the cache
            return attend_decode_triton(q, kp, vp, st.kr[i], st.vr[i], pos, self.P, L.window, self.scaling, k, v)
        if upto is not None:  # eager: a slice write (index_copy_ took ~150 us per call at 128 rows on the CPU),
            st.kr[i][:, :, upto - 1:upto].copy_(k)  # and attention over the filled slots only (cost ~ length)
            st.vr[i][:, :, upto - 1:upto].copy_(v)
            kr, vr = st.kr[i][:, :, :upto], st.vr[i][:, :, :upto]
        else:
            st.kr[i].index_copy_(2, slot, k)
            st.vr[i].index_copy_(2, slot, v)
            kr, vr = st.kr[i], st.vr[i]
        if st.shared:
            mp, mr, *bias = masks[L.window]  # eager CPU steps add the window's additive bias (see _step)
            return _attend(q, kp, vp, kr, vr, mp, mr, self.scaling, bias=bias[0] if bias else None)
        return _attend_sdpa(q, kr, vr, masks[L.window][1], self.scaling)

    def _step(self, st: _State, sp: dict, fns: dict, upto: Optional[int] = None) -> None:
        """One decode step on the static buffers; the body of the CUDA graph. ``upto`` (eager CPU decode
        only): the number of filled cache slots after this step's write, so the copy-layout attention reads
        those alone, the same keys as a growing cache (``loop``) holds; measured on the CPU: SDPA time is
        proportional to the key length, and the masked tail changes outputs only at the 1e-7 level."""
        t = st.t
        pos = (self.P + st.S - 1) + t
        slot = (st.off + st.S - 1) + t
        x = self.embed(st.cur[:, None])
        # upto is never set where the Triton kernel runs (CUDA graphs); that kernel needs no masks
        masks = None if (st.shared and self.triton) else self._masks(pos, st.kpos_r[:upto])
        if upto is not None and st.shared:
            # eager: each window's masks as one additive fp32 bias, once per step instead of once per layer
            masks = {w: (mp, mr, torch.zeros(mp.shape[0], mp.shape[1] + mr.shape[1], device=self.device)
                         .masked_fill_(~torch.cat([mp, mr], dim=-1), float("-inf")))
                     for w, (mp, mr) in masks.items()}
        cs = self._rope_rows(pos)
        for i, L in enumerate(self.layers):
            q, k, v = self._pre(fns, L, x, cs)
            x = self._post(fns, L, x, self._attend_step(st, i, L, q, k, v, pos, slot, masks, upto))
        nxt, done = fns["head"](x[:, -1], self.norm_w, self.norm_eps, self.gemma, self.lm_w, self.lm_b,
                                self.final_softcap, st.keys, t, self.hv, st.done, sp["eos"], sp["pad"],
                                sp["temperature"], sp["top_k"], sp["top_p"], sp["greedy"], **self._work_kw())
        st.out.index_copy_(1, t, nxt[:, None])
        st.done.copy_(done)
        st.cur.copy_(nxt)
        st.t.add_(1)

    def _warm(self, st: _State, sp: dict, fns: dict) -> None:
        """Run the step twice on a side stream (compiles), then restore the state."""
        saved = (st.cur.clone(), st.done.clone(), st.t.clone(), st.out[:, 1].clone())
        s = torch.cuda.Stream(device=self.device)
        s.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(s):
            for _ in range(2):
                self._step(st, sp, fns)
                st.cur.copy_(saved[0]), st.done.copy_(saved[1]), st.t.copy_(saved[2])
        torch.cuda.current_stream(self.device).wait_stream(s)
        st.out[:, 1].copy_(saved[3])

    def _capture(self, st: _State, sp: dict, fns: dict) -> None:
        """Warm up, then capture one decode step as a CUDA graph.

        Thread-safe for one engine per device: one capture at a time in the process (``DEVICE_LOCK``), on
        this engine's own capture stream (``torch.cuda.graph``'s default stream is one per process, made on
        whichever device was current), in ``thread_local`` mode so other threads' work on other GPUs (syncs,
        allocations) does not invalidate the capture."""
        with DEVICE_LOCK, on_device(self.device):
            self._warm(st, sp, fns)
            saved = st.out[:, 1].clone()
            g = torch.cuda.CUDAGraph()
            if self._cap_stream is None:
                self._cap_stream = torch.cuda.Stream(device=self.device)
            with torch.cuda.graph(g, stream=self._cap_stream, capture_error_mode="thread_local"):
                self._step(st, sp, fns)
            st.out[:, 1].copy_(saved)
            st.graph = g

    def generate(self, vectors: torch.Tensor, keys: torch.Tensor, *, injection_scale: float, max_new_tokens: int,
                 eos_ids: Sequence[int], pad_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 greedy: bool = False, batch: Optional[int] = None, profile: bool = False,
                 shared: Optional[bool] = None):
        """Tokens [n, <=max_new] (pad after the end) and finished flags [n] for ``n`` rows.

        Rows beyond ``n`` up to ``batch`` are throw-away padding (so one graph serves all chunks)."""
        if not self.alive():
            raise NLALabError("fast engine: the AV's weights were released; load the AV again.")
        n = vectors.shape[0]
        B = max(n, int(batch or n))
        max_new = int(max_new_tokens)
        if max_new < 1:
            raise NLALabError("max_new_tokens must be >= 1.")
        greedy = bool(greedy or temperature == 0)
        profile = profile or OPTIONS.profile
        if shared is None:
            shared = self.default_shared()
        S = self.T - self.P
        if self.P + S + max_new + 16 > self.rope_len:
            with torch.no_grad():
                self._rope_tables(self.P + S + max_new + 256)
        sp = dict(eos=torch.tensor(sorted(set(int(e) for e in eos_ids)), device=self.device, dtype=torch.long)
                  if len(eos_ids) else None, pad=int(pad_id), temperature=1.0 if greedy else float(temperature),
                  top_k=0 if greedy else int(top_k or 0), top_p=1.0 if greedy else float(top_p), greedy=greedy)
        gkey = (sp["greedy"], sp["temperature"], sp["top_k"], sp["top_p"], tuple(eos_ids), sp["pad"])
        stats = Stats(prefix_len=self.P, suffix_len=S, batch=B, graphs=self.use_graphs, compile=self.compile_mode,
                      attention=("shared+triton" if self.triton else "shared") if shared else "copy")
        cuda = self.device.type == "cuda"
        sync = (lambda: torch.cuda.synchronize(self.device)) if cuda else (lambda: None)
        with torch.no_grad(), sdpa_backends(self.device), on_device(self.device):
            if B > n:
                vectors = torch.cat([vectors, vectors[-1:].expand(B - n, -1)], 0)
                keys = torch.cat([keys, keys[-1:].expand(B - n)], 0)
            st = self._state(B, S, max_new, bool(shared))
            if st.graph is not None and st.graph_key == gkey:
                sp = st.sp  # the captured graph reads this eos tensor
            fns = self._decode_fns() if cuda else self._eager_fns()
            if profile:
                sync()
            t0 = time.perf_counter()
            st.keys.copy_(keys.to(self.device))
            emb = injected_embeds(_EmbedOnly(self.embed), self.prompt_ids[self.P:], vectors, 0, injection_scale)
            # torch.compile is not thread safe: every call of compiled code that may (re)compile runs under
            # DEVICE_LOCK (prefill's head here, the warm-up in _capture; graph replays run no Python code)
            compiled = DEVICE_LOCK if cuda and self.compile_mode != "none" else contextlib.nullcontext()
            try:
                with compiled:
                    self._prefill(st, emb, sp, fns)
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:  # pragma: no cover - compile trouble on some stacks
                fns = self._compile_failed(e)
                self._prefill(st, emb, sp, fns)
            del emb
            if profile:
                sync()
            stats.prefill_s = time.perf_counter() - t0
            steps = 1
            if max_new > 1:
                if self.use_graphs and (st.graph is None or st.graph_key != gkey):
                    t1 = time.perf_counter()
                    st.graph = None
                    try:
                        try:
                            self._capture(st, sp, fns)
                        except torch.cuda.OutOfMemoryError:
                            raise
                        except Exception as e:
                            if "out of memory" in str(e).lower() or self.compile_mode == "none":
                                raise
                            fns = self._compile_failed(e)
                            self._capture(st, sp, fns)
                        st.graph_key, st.sp = gkey, sp
                    except torch.cuda.OutOfMemoryError:
                        raise
                    except Exception as e:  # pragma: no cover - depends on the GPU stack
                        if "out of memory" in str(e).lower():
                            raise torch.cuda.OutOfMemoryError(str(e)) from e
                        warnings.warn(f"fast engine: CUDA graph capture failed ({e!r}); running without graphs.")
                        self.use_graphs = False
                        stats.graphs = False
                    stats.capture_s = time.perf_counter() - t1
                t2 = time.perf_counter()
                every = max(1, int(OPTIONS.check_every))
                check = sp["eos"] is not None
                compiled = DEVICE_LOCK if cuda and self.compile_mode != "none" else contextlib.nullcontext()
                if not cuda and check and OPTIONS.compact:
                    steps = self._decode_compacting(st, sp, fns, max_new)
                else:
                    for step in range(1, max_new):
                        if st.graph is not None and self.use_graphs:
                            st.graph.replay()
                        else:
                            with compiled:  # no graphs (capture failed or off): compiled step, see prefill
                                self._step(st, sp, fns, upto=None if cuda else st.off + st.S + step)
                        steps = step + 1
                        if check and (step % every == 0 or not cuda) and bool(st.done.all()):
                            break
                if profile:
                    sync()
                stats.decode_s = time.perf_counter() - t2
            if profile and cuda:
                stats.extra["peak_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
            stats.steps = steps
            stats.extra["prefill_rows"] = self.prefill_rows
            self.stats = stats
            _LAST[0] = stats
            if OPTIONS.trace is not None:
                OPTIONS.trace.append({"mode": "inject", "rows": n, "batch": B, "steps": steps,
                                      "prefill_s": round(stats.prefill_s, 4), "capture_s": round(stats.capture_s, 4),
                                      "decode_s": round(stats.decode_s, 4), "at": time.time()})
            return st.out[:n, :steps].clone(), st.done[:n].clone()

    def _decode_compacting(self, st: _State, sp: dict, fns: dict, max_new: int) -> int:
        """The eager (CPU) decode loop that drops finished rows: when at least ``OPTIONS.compact`` of the rows
        still in the batch have ended, the others continue in a smaller batch (their caches, keys and outputs
        gathered), so no step computes rows that only emit padding. A row's computation is its own (per-row
        sampling, row-wise ops), so its tokens are those of the full batch (tests/unit/test_engine.py).
        Writes the results into ``st.out``/``st.done``; returns the number of steps."""
        full_out, full_done = st.out, st.done
        idx = torch.arange(st.B, device=self.device)
        cur = st
        steps = 1
        for step in range(1, max_new):
            self._step(cur, sp, fns, upto=cur.off + cur.S + step)
            steps = step + 1
            n_done = int(cur.done.sum())
            if n_done == cur.B:
                break
            if n_done >= max(1, OPTIONS.compact * cur.B):
                keep = (~cur.done).nonzero().squeeze(1)
                gone = (cur.done).nonzero().squeeze(1)
                full_out[idx[gone]] = cur.out[gone]
                full_out[idx[gone], steps:] = sp["pad"]
                full_done[idx[gone]] = True
                idx = idx[keep]
                cur = _State(B=len(keep), S=cur.S, Lr=cur.Lr, max_new=cur.max_new,
                             kr=[k.index_select(0, keep) for k in cur.kr], vr=[v.index_select(0, keep) for v in cur.vr],
                             cur=cur.cur[keep], t=cur.t, keys=cur.keys[keep], done=cur.done[keep],
                             out=cur.out[keep], kpos_r=cur.kpos_r, shared=cur.shared, off=cur.off)
        if cur is not st:
            full_out[idx] = cur.out
            full_done[idx] = cur.done
        return steps

    def plan_compile(self, decode_steps: int) -> str:
        """Compile policy ``auto``: compile the decode step only for a call long enough to repay it
        (``OPTIONS.compile_min_steps``); explicit modes are kept. Returns the mode the call runs with."""
        if self.compile_policy == "auto":
            mode = "all" if int(decode_steps) >= int(OPTIONS.compile_min_steps) else "none"
            if mode != self.compile_mode:
                self.compile_mode = mode
                self._fns = None
                for st in self.states.values():  # graphs were captured with the other functions
                    st.graph = None
        return self.compile_mode

    def _compile_failed(self, e: Exception) -> dict:
        warnings.warn(f"fast engine: torch.compile failed ({type(e).__name__}: {str(e)[:300]}); "
                      "running the decode step uncompiled.")
        self.compile_mode = "none"
        self._fns = None
        for st in self.states.values():
            st.graph = None
        return self._decode_fns()

    def default_shared(self) -> bool:
        """``auto``: the shared prefix layout with the Triton kernel on CUDA, and on the CPU (its two-part
        attention, one GEMM over the prefix for all rows, ran the offline demo's AV rows 10 % faster than the
        copied prefix: 18.9 vs 21.1 s for 60 rows x 128 tokens, every row identical)."""
        return OPTIONS.attention == "shared" or (OPTIONS.attention == "auto" and (
            self.triton or self.device.type == "cpu"))
