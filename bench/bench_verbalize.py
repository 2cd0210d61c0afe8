"""Benchmark: verbalization throughput on random-initialised replicas of the released AV shapes.

A script, not a test. Run on a CUDA machine, e.g.

    PYTHONPATH=src python bench/bench_verbalize.py --shape qwen2.5-7b
    PYTHONPATH=src python bench/bench_verbalize.py --shape gemma3-27b --only ours

It builds the model directly on the GPU (meta device -> ``to_empty`` -> ``normal_`` in bf16, non-persistent
buffers such as rotary frequencies rebuilt from the config), a fixed prompt of token ids with a marker row,
random vectors, and times in ONE process on ONE device:

- ``default``: ``model.generate(inputs_embeds=...)`` with the default (dynamic) cache;
- ``static``: the same with ``cache_implementation="static"`` (first call = compile + run, reported apart);
- ``ours``: ``nlalab.verbalize.fast.FastEngine`` (first call = compile + capture, then timed runs), and
  ``ours_nocompile`` (CUDA graphs with only the sampler compiled) for the profile; ``full_float64_sampler``
  times it with the Triton sampler off (``OPTIONS.gpu_screen = False``, same tokens), and the profile's
  ``sampling_ms_per_step_full_float64`` the head with the full float64 sampler.

All sample at temperature 1 over the full vocabulary (no top-k/top-p) for a fixed number of new tokens
(end-of-turn stopping disabled). Results go to ``bench/results/<shape>_<device>.json``.

With ``--devices N`` (N >= 2 GPUs; or ``--only dp --devices N``) section ``dp`` times ours on 1 GPU vs
N GPUs data parallel (``nlalab.verbalize.parallel``) in the same process, for each ``--dp-rows`` count
(150 and 600), and records ``speedup_vs_1gpu`` (at ``--rows``) and ``data_parallel`` in the JSON
(``<shape>_<device>_dp<N>.json`` when dp runs alone), e.g.

    PYTHONPATH=src python bench/bench_verbalize.py --shape qwen2.5-7b --only dp --devices 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nlalab.verbalize import fast  # noqa: E402
from nlalab.verbalize.fast import kernel  # noqa: E402
from nlalab.verbalize.generate import GenerationSettings  # noqa: E402

try:  # the public name since the fast-engine commit; older trees had the private one
    from nlalab.verbalize.generate import decode_loop as decode_loop  # noqa: E402
except ImportError:  # pragma: no cover
    from nlalab.verbalize.generate import decode_loop  # noqa: E402
from nlalab.verbalize.inject import injected_embeds  # noqa: E402
from nlalab.verbalize.sampling import row_keys  # noqa: E402

# Shapes of the released AVs' base models (public config.json of each).
SHAPES = {
    "qwen2.5-7b": dict(kind="qwen2", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, intermediate_size=18944, vocab_size=152064, rms_norm_eps=1e-6,
                       rope_theta=1_000_000.0, max_position_embeddings=32768, tie_word_embeddings=False),
    "gemma3-12b": dict(kind="gemma3_text", hidden_size=3840, num_hidden_layers=48, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=256, intermediate_size=15360, vocab_size=262208,
                       sliding_window=1024, query_pre_attn_scalar=256, rms_norm_eps=1e-6,
                       max_position_embeddings=131072, rope_scaling={"rope_type": "linear", "factor": 8.0},
                       tie_word_embeddings=True),
    "gemma3-27b": dict(kind="gemma3_text", hidden_size=5376, num_hidden_layers=62, num_attention_heads=32,
                       num_key_value_heads=16, head_dim=128, intermediate_size=21504, vocab_size=262208,
                       sliding_window=1024, query_pre_attn_scalar=168, rms_norm_eps=1e-6,
                       max_position_embeddings=131072, rope_scaling={"rope_type": "linear", "factor": 8.0},
                       tie_word_embeddings=True),
    # Llama-3.3-70B-Instruct: 141 GB in bf16, so several GPUs (bench/bench_study.py --devices N)
    "llama3.3-70b": dict(kind="llama", hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                         num_key_value_heads=8, intermediate_size=28672, vocab_size=128256, rms_norm_eps=1e-5,
                         rope_theta=500_000.0, max_position_embeddings=131072,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                         tie_word_embeddings=False),
}


def config_from_spec(spec: dict):
    """A transformers config from one SHAPES-style entry (``kind`` = qwen2, llama or gemma3_text)."""
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind in ("qwen2", "llama"):
        from transformers import LlamaConfig, Qwen2Config

        theta = spec.pop("rope_theta")
        scaling = spec.pop("rope_scaling", None)
        cfg = (Qwen2Config if kind == "qwen2" else LlamaConfig)(**spec)
        rope = {"rope_type": "default", "rope_theta": theta}
        if scaling:
            rope.update(scaling, rope_theta=theta)
        try:  # transformers 5.x keeps rope settings in rope_parameters
            cfg.rope_parameters = rope
        except Exception:
            cfg.rope_theta = theta
            if scaling:
                cfg.rope_scaling = dict(scaling)
        return cfg
    from transformers import Gemma3TextConfig

    n = spec["num_hidden_layers"]
    scaling = spec.pop("rope_scaling")
    cfg = Gemma3TextConfig(
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)],
        hidden_activation="gelu_pytorch_tanh", **spec)
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and "full_attention" in rp:  # 5.x: per layer type
        rp["full_attention"] = {"rope_type": "linear", "factor": scaling["factor"], "rope_theta": 1_000_000.0}
        rp["sliding_attention"] = {"rope_type": "default", "rope_theta": 10_000.0}
    return cfg


def make_config(shape: str):
    return config_from_spec(SHAPES[shape])


def init_random_(model, cfg, std: float = 0.02, seed: int = 0) -> None:
    """Fill a model materialised with ``to_empty`` (on one or several devices): normal(0, std) linear and
    embedding weights, zero biases, unit norms, rotary buffers rebuilt from the config. One generator per
    device, seeded alike; every parameter must be covered (``to_empty`` leaves garbage)."""
    gens: dict = {}

    def gen_for(t):
        if t.device not in gens:
            gens[t.device] = torch.Generator(device=t.device).manual_seed(seed)
        return gens[t.device]

    done = set()
    with torch.no_grad():
        for name, mod in model.named_modules():
            if "RMSNorm" in type(mod).__name__:
                # Gemma's norms scale by (1 + w): w = 0; Llama/Qwen2 scale by w: w = 1
                mod.weight.fill_(0.0 if "Gemma" in type(mod).__name__ else 1.0)
                done.add(id(mod.weight))
            elif isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
                mod.weight.normal_(0.0, std, generator=gen_for(mod.weight))
                done.add(id(mod.weight))
                if getattr(mod, "bias", None) is not None:
                    mod.bias.zero_()
                    done.add(id(mod.bias))
            if "Rotary" in type(mod).__name__:  # non-persistent buffers: rebuild from the config on the CPU
                fresh = type(mod)(config=getattr(mod, "config", cfg))
                for bn, b in fresh.named_buffers():
                    mod.get_buffer(bn).copy_(b)
            if torch.is_tensor(getattr(mod, "embed_scale", None)):
                mod.embed_scale.fill_(getattr(mod, "scalar_embed_scale", cfg.hidden_size ** 0.5))
    missed = [n for n, p in model.named_parameters() if id(p) not in done]
    if missed:
        raise RuntimeError(f"init_random_: parameters left uninitialised: {missed[:5]}")


def finish_random_(model) -> None:
    """Tie embeddings (``to_empty`` allocates tied parameters separately), check buffers, inference mode."""
    if getattr(model.config, "tie_word_embeddings", False):
        try:
            model.tie_weights()
        except TypeError:
            model.lm_head.weight = model.get_input_embeddings().weight
    for n_, b in model.named_buffers():
        assert b.device.type != "meta" and torch.isfinite(b.float()).all(), n_
    model.eval().requires_grad_(False)
    model.generation_config.eos_token_id = None  # fixed-length timing
    model.generation_config.pad_token_id = 0


def build_model(shape: str, device: str = "cuda", std: float = 0.02, cfg=None, dtype=torch.bfloat16):
    """Random bf16 replica built on the meta device and materialised on the GPU (seconds, not minutes).
    ``cfg`` (a transformers config) replaces the named shape, e.g. a tiny one for a CPU check."""
    from transformers import AutoModelForCausalLM

    cfg = cfg if cfg is not None else make_config(shape)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.to_empty(device=device)
    init_random_(model, cfg, std)
    finish_random_(model)
    return model, cfg


def sync():
    torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def peak_gb_of(fn):
    sync()
    torch.cuda.reset_peak_memory_stats()
    dt, out = timed(fn)
    return dt, torch.cuda.max_memory_allocated() / 2**30, out


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (the memory ceiling)."""
    a = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    ts = []
    for _ in range(10):
        dt, _ = timed(lambda: b.copy_(a))
        ts.append(dt)
    del a, b
    return 2 * 2 * 2**30 / statistics.median(ts)


def hf_generate(model, emb, new, static: bool):
    mask = torch.ones(emb.shape[:2], dtype=torch.long, device=emb.device)
    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
              pad_token_id=0)
    if static:
        kw["cache_implementation"] = "static"
    torch.manual_seed(0)
    with torch.inference_mode():
        return model.generate(inputs_embeds=emb, attention_mask=mask, **kw)


def kernel_profile(eng, st, sp, fns, steps: int = 3) -> dict:
    """GPU kernel time of eager (un-graphed) decode steps, grouped by kind."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        st.t.fill_(1)  # stay inside the static buffers
        eng._step(st, sp, fns)
        sync()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                eng._step(st, sp, fns)
            st.t.fill_(1)
            sync()
    groups: dict[str, float] = {}
    top = []
    n_k = 0
    for ev in prof.key_averages():
        us = getattr(ev, "device_time_total", None)
        if us is None:
            us = getattr(ev, "cuda_time_total", 0.0)
        if not us or getattr(ev, "device_type", None) is not None and "CUDA" not in str(ev.device_type):
            continue
        name = ev.key.lower()
        top.append((us / 1000.0 / steps, ev.count // steps, ev.key[:90]))
        if any(s in name for s in ("fmha", "attention", "flash")):
            g = "attention"
        elif any(s in name for s in ("gemm", "cutlass", "xmma", "sm90", "cublas", "gemv", "splitk")):
            g = "gemm"
        elif "triton" in name:
            g = "triton_fused"
        elif "index" in name or "copy" in name or "cat" in name:
            g = "copy_index"
        else:
            g = "other_elementwise"
        groups[g] = groups.get(g, 0.0) + us / 1000.0 / steps
        n_k += ev.count
    groups = {k: round(v, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}
    groups["kernels_per_step"] = n_k // steps
    groups["top"] = [f"{ms:.3f} ms x{c}: {k}" for ms, c, k in sorted(top, reverse=True)[:10]]
    return groups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="qwen2.5-7b", choices=sorted(SHAPES))
    ap.add_argument("--rows", type=int, default=150)
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--prompt-len", type=int, default=118)
    ap.add_argument("--marker", type=int, default=100)
    ap.add_argument("--only", default="default,static,ours", help="comma list of default,static,ours,autotune")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--devices", type=int, default=1,
                    help="N > 1: also time ours on 1 GPU vs N GPUs data parallel (section dp)")
    ap.add_argument("--dp-rows", default="150,600", help="comma list of row counts for the dp section")
    ap.add_argument("--attn-launch", default=None,
                    help="BN,WARPS,STAGES: the decode-attention kernel's launch (bench/tune_decode_attn.py)")
    args = ap.parse_args()
    if args.attn_launch:
        bn, warps, stages = (int(x) for x in args.attn_launch.split(","))
        kernel.LAUNCH.update(bn=bn, num_warps=warps, num_stages=stages)
    todo = set(args.only.split(","))
    if args.devices > 1:
        todo.add("dp")
    if "dp" in todo and not 2 <= args.devices <= torch.cuda.device_count():
        raise SystemExit(f"--only dp needs --devices N with 2 <= N <= {torch.cuda.device_count()} (visible GPUs)")
    import transformers

    dev_name = torch.cuda.get_device_name()
    res: dict = dict(device=dev_name, torch=torch.__version__, transformers=transformers.__version__,
                     shape=args.shape, model_shape=SHAPES[args.shape], rows=args.rows, new_tokens=args.new,
                     prompt_len=args.prompt_len, marker_pos=args.marker, sampling="temperature 1, full vocab")
    res["decode_attn_launch"] = dict(kernel.LAUNCH)
    print(f"[bench] {args.shape} on {dev_name}, torch {torch.__version__}, transformers {transformers.__version__}",
          flush=True)
    bw = copy_bandwidth()
    t0 = time.perf_counter()
    model, cfg = build_model(args.shape)
    sync()
    res["build_s"] = round(time.perf_counter() - t0, 2)
    n_params = sum(p.numel() for p in model.parameters())
    emb_w = model.get_input_embeddings().weight
    streamed = sum(p.numel() * p.element_size() for p in model.parameters()
                   if p is not emb_w or model.lm_head.weight is emb_w)
    res["params_b"] = round(n_params / 1e9, 3)
    res["weights_gb"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    res["copy_bandwidth_tb_s"] = round(bw / 1e12, 3)
    floor_ms = streamed / bw * 1e3
    res["floor_weights_ms_per_step"] = round(floor_ms, 3)
    print(f"[bench] built in {res['build_s']} s: {res['params_b']} B params, {res['weights_gb']} GiB; "
          f"copy bw {bw / 1e12:.2f} TB/s -> weight-streaming floor {floor_ms:.2f} ms/step", flush=True)

    g = torch.Generator(device="cpu").manual_seed(1)
    prompt = torch.randint(10, cfg.vocab_size - 10, (args.prompt_len,), generator=g).tolist()
    vecs = torch.randn(args.rows, cfg.hidden_size, generator=g).cuda()
    scale = float(cfg.hidden_size) ** 0.5 * 4
    tokens = args.rows * args.new

    slug = re.sub(r"[^a-z0-9]+", "-", dev_name.lower().replace("nvidia", "")).strip("-")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{args.shape}_{slug}.json"
    if todo <= {"dp"}:  # a data-parallel run alone keeps the one-GPU results file as it is
        path = out_dir / f"{args.shape}_{slug}_dp{args.devices}.json"

    def save():
        if "ours" in res:
            if "default" in res:
                res["speedup_vs_default"] = round(res["default"]["wall_s"] / res["ours"]["wall_s"], 2)
            if "static" in res:
                res["speedup_vs_static"] = round(res["static"]["wall_s"] / res["ours"]["wall_s"], 2)
        at = res.get("ours_autotune")
        if isinstance(at, dict):
            for base in ("default", "static"):
                if base in res:
                    res[f"autotune_speedup_vs_{base}"] = round(res[base]["wall_s"] / at["wall_s"], 2)
        text = json.dumps(res, indent=2) + "\n"
        path.write_text(text)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], path.name).write_text(text)

    # the library path: verbalize()'s fast branch (auto micro-batch, layout choice, OOM halving)
    fake_av = SimpleNamespace(model=model, prompt_ids=prompt, marker_pos=args.marker, injection_scale=scale,
                              eos_ids=[], tokenizer=SimpleNamespace(pad_token_id=0))
    gs = GenerationSettings(max_new_tokens=args.new, temperature=1.0, seed=42, engine="fast")
    rows = [(i, 0) for i in range(args.rows)]

    def run_ours():
        return list(fast.iter_fast(fake_av, vecs, rows, list(range(args.rows)), gs))

    if "ours" in todo:
        fast.OPTIONS.compile = "all"
        fast.OPTIONS.profile = True  # two syncs per micro-batch, so the prefill/decode split is device time
        print(f"[ours] before: allocated {torch.cuda.memory_allocated() / 2**30:.2f} GiB, reserved "
              f"{torch.cuda.memory_reserved() / 2**30:.2f} GiB, free {torch.cuda.mem_get_info()[0] / 2**30:.2f} GiB",
              flush=True)
        first, peak, _ = peak_gb_of(run_ours)
        eng = fast.get_engine(fake_av)
        print(f"[ours] first call (compile + capture + run) {first:.1f} s; batch {eng.stats.batch}, "
              f"attention {eng.stats.attention}, peak {peak:.2f} GiB, max_rows {eng.max_rows}", flush=True)
        runs = []
        for _ in range(args.repeats):
            torch.cuda.reset_peak_memory_stats()
            dt, _ = timed(run_ours)
            runs.append((dt, eng.stats))
            print(f"[ours] {dt:.3f} s  prefill {eng.stats.prefill_s * 1e3:.1f} ms  decode "
                  f"{eng.stats.decode_s / max(1, eng.stats.steps - 1) * 1e3:.2f} ms/step", flush=True)
        peak = max(peak, torch.cuda.max_memory_allocated() / 2**30)
        wall = statistics.median(r[0] for r in runs)
        st = min(runs, key=lambda r: r[0])[1]
        # what one verbalize() call costs by default: a fresh engine (prefix K/V, rotary tables, Triton
        # self-check, buffers, graph capture), compiled step functions reused from the process
        eng = None
        fast.release_engines(model)
        fresh, _ = timed(run_ours)
        eng = fast.get_engine(fake_av)
        print(f"[ours] fresh engine (per-call default): {fresh:.3f} s", flush=True)
        ours = dict(wall_s=round(wall, 3), runs_s=[round(r[0], 3) for r in runs], tok_s=round(tokens / wall, 1),
                    first_call_s=round(first, 2), compile_and_capture_s=round(first - wall, 2),
                    wall_s_fresh_engine=round(fresh, 3),
                    peak_gb=round(peak, 2), batch=st.batch, prefix_len=st.prefix_len, suffix_len=st.suffix_len,
                    attention=st.attention, capture_s=round(st.capture_s, 3), micro_batches=math.ceil(args.rows / st.batch))
        # profile: prefill, decode per step, head+sampler alone, kernel mix (prefill/decode of the last batch)
        shared = st.attention.startswith("shared")
        keys = row_keys(42, torch.arange(args.rows, device="cuda"), torch.zeros(args.rows, dtype=torch.long,
                                                                                device="cuda"))
        kw = dict(injection_scale=scale, max_new_tokens=args.new, eos_ids=[], pad_id=0, temperature=1.0)
        stt = eng.states[(st.batch, st.suffix_len, args.new, shared)]
        sp = stt.sp
        fns = eng._decode_fns()
        x = torch.randn(st.batch, cfg.hidden_size, device="cuda", dtype=torch.bfloat16)
        tt = torch.ones(1, dtype=torch.long, device="cuda")

        def head(screen=eng.gpu_screen):
            return fns["head"](x, eng.norm_w, eng.norm_eps, eng.gemma, eng.lm_w, eng.lm_b, eng.final_softcap,
                               stt.keys, tt, eng.hv, stt.done, sp["eos"], sp["pad"], 1.0, 0, 1.0, False,
                               screen=screen)

        def head_full():  # the full float64 sampler, for comparison with the Triton one
            return head(False)

        def gemm():
            return torch.nn.functional.linear(x, eng.lm_w)

        with torch.no_grad():
            for f in (head, gemm, head_full):
                f()
            h_ms = statistics.median(timed(lambda: [head() for _ in range(20)])[0] for _ in range(3)) / 20 * 1e3
            hf_ms = statistics.median(timed(lambda: [head_full() for _ in range(20)])[0] for _ in range(3)) / 20 * 1e3
            g_ms = statistics.median(timed(lambda: [gemm() for _ in range(20)])[0] for _ in range(3)) / 20 * 1e3
        dec_ms = st.decode_s / max(1, st.steps - 1) * 1e3
        L0 = eng.layers[0]
        xg = torch.randn(st.batch, cfg.hidden_size, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            up = statistics.median(timed(lambda: [torch.nn.functional.linear(xg, L0.wu) for _ in range(50)])[0]
                                   for _ in range(3)) / 50
        gemm_bw = L0.wu.numel() * 2 / up / 1e12
        prof = dict(prefill_s=round(st.prefill_s, 4), decode_ms_per_step=round(dec_ms, 3),
                    decode_s=round(st.decode_s, 3), lm_head_gemm_ms=round(g_ms, 3),
                    sampling_ms_per_step=round(max(0.0, h_ms - g_ms), 3), head_total_ms=round(h_ms, 3),
                    sampler="triton screen" if eng.gpu_screen else "full float64",
                    sampling_ms_per_step_full_float64=round(max(0.0, hf_ms - g_ms), 3),
                    floor_weights_ms_per_step=round(floor_ms, 3),
                    mlp_up_gemm_tb_s=round(gemm_bw, 3),
                    decode_over_floor=round(dec_ms / floor_ms, 2))
        try:
            prof["kernels_ms_per_step_eager"] = kernel_profile(eng, stt, sp, fns)
        except Exception as e:  # profiler trouble must not lose the timings
            prof["kernels_ms_per_step_eager"] = f"profiler failed: {e!r}"
        ours["profile"] = prof
        print(f"[ours] profile {json.dumps(prof)}", flush=True)
        # sanity: greedy tokens of ours vs the loop engine on a few rows (bf16: rare divergence allowed)
        with torch.no_grad():
            n_chk, n_tok = 4, 24
            toks_f, _ = eng.generate(vecs[:n_chk], keys[:n_chk], injection_scale=scale, max_new_tokens=args.new,
                                     eos_ids=[], pad_id=0, greedy=True, batch=st.batch, shared=shared)
            toks_f = toks_f[:, :n_tok]
            fake = SimpleNamespace(model=model, eos_ids=[-1], tokenizer=SimpleNamespace(pad_token_id=0))
            emb = injected_embeds(model, prompt, vecs[:n_chk], args.marker, scale)
            toks_l, _ = decode_loop(fake, emb, keys[:n_chk], GenerationSettings(max_new_tokens=n_tok, greedy=True))
            agree = (toks_f.cpu() == toks_l.cpu()).float().mean().item()
        ours["greedy_token_agreement_vs_loop"] = round(agree, 3)
        print(f"[ours] greedy agreement with loop (bf16, {n_chk}x{n_tok}): {agree:.3f}", flush=True)
        # the other cache layout, same engine (prefix kept once vs copied into each row)
        try:
            eng.drop_states()
            torch.cuda.empty_cache()
            b2 = fast.auto_batch(eng, args.rows, args.new, shared=not shared)
            if b2 >= st.batch:
                kw2 = dict(kw, batch=st.batch, shared=not shared)
                f2, pk2, _ = peak_gb_of(lambda: eng.generate(vecs[:st.batch], keys[:st.batch], **kw2))
                d2 = statistics.median(timed(lambda: eng.generate(vecs[:st.batch], keys[:st.batch], **kw2))[0]
                                       for _ in range(2))
                ours["other_layout"] = dict(attention="copy" if shared else "shared", batch=st.batch,
                                            wall_s_one_batch=round(d2, 3), first_call_s=round(f2, 2),
                                            peak_gb=round(pk2, 2))
                print(f"[ours/{'copy' if shared else 'shared'} layout] {d2:.3f} s per batch of {st.batch}, "
                      f"peak {pk2:.1f} GiB", flush=True)
        except torch.cuda.OutOfMemoryError as e:
            ours["other_layout"] = f"OOM: {str(e)[:120]}"
        eng.drop_states()
        torch.cuda.empty_cache()
        # the full float64 sampler instead of the Triton one (same tokens): what the sampler kernel buys
        fast.release_engines()
        fast.OPTIONS.gpu_screen = False
        try:
            timed(run_ours)
            full_runs = [timed(run_ours)[0] for _ in range(args.repeats)]
            ours["full_float64_sampler"] = dict(wall_s=round(statistics.median(full_runs), 3),
                                                runs_s=[round(r, 3) for r in full_runs])
            print(f"[ours/full float64 sampler] {statistics.median(full_runs):.3f} s", flush=True)
        finally:
            fast.OPTIONS.gpu_screen = None
        # graphs with only the sampler compiled: what compiling the layers buys
        fast.release_engines()
        fast.OPTIONS.compile = "sampler"
        first2, _ = timed(run_ours)
        dt2 = statistics.median(timed(run_ours)[0] for _ in range(2))
        ours["nocompile_layers"] = dict(wall_s=round(dt2, 3), first_call_s=round(first2, 2),
                                        tok_s=round(tokens / dt2, 1))
        print(f"[ours/graphs, layers eager] {dt2:.3f} s (first call {first2:.1f} s)", flush=True)
        res["ours"] = ours
        save()
        del eng
        fast.release_engines()
        fast.OPTIONS.compile = None
        torch.cuda.empty_cache()

    if "autotune" in todo:
        # the same library path with NLALAB_FAST_AUTOTUNE=1: inductor max-autotune picks, per decode-step
        # GEMM shape, the faster of cuBLAS and its Triton templates (longer first call)
        os.environ["NLALAB_FAST_AUTOTUNE"] = "1"
        fast.release_engines()
        fast.OPTIONS.compile, fast.OPTIONS.keep_state, fast.OPTIONS.profile = "all", True, True
        try:
            first, peak, _ = peak_gb_of(run_ours)
            runs_at = [timed(run_ours)[0] for _ in range(args.repeats)]
            eng = fast.get_engine(fake_av)
            dec_ms = eng.stats.decode_s / max(1, eng.stats.steps - 1) * 1e3
            wall = statistics.median(runs_at)
            res["ours_autotune"] = dict(wall_s=round(wall, 3), runs_s=[round(r, 3) for r in runs_at],
                                        tok_s=round(tokens / wall, 1), first_call_s=round(first, 2),
                                        decode_ms_per_step=round(dec_ms, 3), peak_gb=round(peak, 2))
            print(f"[ours/autotune] {wall:.3f} s, decode {dec_ms:.2f} ms/step (first call {first:.1f} s)", flush=True)
        except Exception as e:  # autotune trouble must not lose the other timings
            res["ours_autotune"] = f"failed: {type(e).__name__}: {str(e)[:300]}"
            print(f"[ours/autotune] failed: {e!r}"[:400], flush=True)
        eng = None
        fast.release_engines()
        fast.OPTIONS.compile, fast.OPTIONS.keep_state, fast.OPTIONS.profile = None, False, False
        os.environ.pop("NLALAB_FAST_AUTOTUNE", None)
        torch.cuda.empty_cache()
        save()

    if "dp" in todo:
        # ours on 1 GPU vs N GPUs data parallel, the library path (nlalab.verbalize.parallel.iter_parallel:
        # one replica of the weights per extra GPU, one thread per GPU, contiguous shards), per-call default
        # state (fresh engines each call; the N-GPU call also copies the weights to the other GPUs)
        from nlalab.verbalize import parallel

        fast.release_engines()
        fast.OPTIONS.compile, fast.OPTIONS.keep_state, fast.OPTIONS.profile = "all", False, False
        devs1 = [torch.device("cuda", 0)]
        devsN = [torch.device("cuda", i) for i in range(args.devices)]
        dp: dict = dict(devices=args.devices, gpus=[torch.cuda.get_device_name(i) for i in range(args.devices)],
                        note="per-call default: fresh engine per call on every GPU; N GPUs include copying the "
                             "weights to the other GPUs (replicate_s) in every call", runs={})
        gdp = torch.Generator(device="cpu").manual_seed(2)

        def toks_of(out):
            by = {}
            for vidx, sidx, t, _d in out:
                for r, i in enumerate(vidx):
                    by[i] = t[r].tolist()
            return [by[i] for i in sorted(by)]

        try:
            for n_rows in [int(x) for x in args.dp_rows.split(",") if x.strip()]:
                vv = vecs if n_rows == args.rows else torch.randn(n_rows, cfg.hidden_size, generator=gdp).cuda()
                rows = [(i, 0) for i in range(n_rows)]
                keys = list(range(n_rows))

                def run(devs, fbs=0):
                    gs = GenerationSettings(max_new_tokens=args.new, temperature=1.0, seed=42, engine="fast",
                                            fast_batch_size=fbs)
                    return list(parallel.iter_parallel(fake_av, vv, rows, keys, gs, "fast", devs))

                first1, out1 = timed(lambda: run(devs1))
                firstN, outN = timed(lambda: run(devsN))
                t1 = [timed(lambda: run(devs1))[0] for _ in range(args.repeats)]
                tN, infos = [], []
                for _ in range(args.repeats):
                    tN.append(timed(lambda: run(devsN))[0])
                    infos.append(parallel.last_info())
                w1, wN = statistics.median(t1), statistics.median(tN)
                rep_s = statistics.median(i["replicate_s"] for i in infos)
                a, b = toks_of(out1), toks_of(outN)
                entry = dict(rows=n_rows, wall_s_1gpu=round(w1, 3), wall_s_ngpu=round(wN, 3),
                             runs_s_1gpu=[round(x, 3) for x in t1], runs_s_ngpu=[round(x, 3) for x in tN],
                             speedup=round(w1 / wN, 2), replicate_s=round(rep_s, 3),
                             speedup_without_replication=round(w1 / max(1e-9, wN - rep_s), 2),
                             tok_s_1gpu=round(n_rows * args.new / w1, 1), tok_s_ngpu=round(n_rows * args.new / wN, 1),
                             first_call_s_1gpu=round(first1, 2), first_call_s_ngpu=round(firstN, 2),
                             shard_rows=infos[-1]["rows"], shard_seconds=infos[-1]["seconds"],
                             identical_rows_vs_1gpu=round(sum(x == y for x, y in zip(a, b)) / n_rows, 3))
                if n_rows == args.rows and n_rows % args.devices == 0:
                    # the same micro-batch shape on 1 and N GPUs (rows/N per micro-batch): the rows should then
                    # agree (other shapes may round differently in bf16; each GPU compiles its own kernels)
                    fbs = n_rows // args.devices
                    _, s1 = timed(lambda: run(devs1, fbs))
                    _, sN = timed(lambda: run(devsN, fbs))
                    entry["same_shape_micro_batch"] = fbs
                    entry["same_shape_identical_rows"] = round(
                        sum(x == y for x, y in zip(toks_of(s1), toks_of(sN))) / n_rows, 3)
                dp["runs"][str(n_rows)] = entry
                print(f"[dp] {n_rows} rows x {args.new}: 1 GPU {w1:.3f} s, {args.devices} GPUs {wN:.3f} s "
                      f"(replicate {rep_s:.2f} s) -> speedup {entry['speedup']}x "
                      f"({entry['speedup_without_replication']}x without the copy); shards {entry['shard_rows']} "
                      f"{entry['shard_seconds']} s; identical rows {entry['identical_rows_vs_1gpu']}"
                      f"{'' if 'same_shape_identical_rows' not in entry else ', same shape: ' + str(entry['same_shape_identical_rows'])}",
                      flush=True)
                res["data_parallel"] = dp
                main_run = dp["runs"].get(str(args.rows)) or entry
                res["speedup_vs_1gpu"] = main_run["speedup"]
                save()
        except Exception as e:  # keep what was measured
            dp["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            res["data_parallel"] = dp
            print(f"[dp] failed: {e!r}"[:400], flush=True)
        fast.release_engines()
        fast.OPTIONS.compile = None
        torch.cuda.empty_cache()
        save()

    emb = None
    if todo & {"default", "static"}:
        emb = injected_embeds(model, prompt, vecs, args.marker, scale)
    if "default" in todo:
        hf_generate(model, emb[:4], 4, static=False)  # warm-up
        dt, peak, out = peak_gb_of(lambda: hf_generate(model, emb, args.new, static=False))
        assert out.shape == (args.rows, args.new), out.shape
        res["default"] = dict(wall_s=round(dt, 3), tok_s=round(tokens / dt, 1), peak_gb=round(peak, 2),
                              ms_per_step=round(dt / args.new * 1e3, 2))
        print(f"[default generate] {dt:.2f} s ({dt / args.new * 1e3:.1f} ms/step), peak {peak:.1f} GiB", flush=True)
        save()
        torch.cuda.empty_cache()
    if "static" in todo:
        first, _, out = peak_gb_of(lambda: hf_generate(model, emb, args.new, static=True))
        dt, peak, out = peak_gb_of(lambda: hf_generate(model, emb, args.new, static=True))
        assert out.shape == (args.rows, args.new), out.shape
        res["static"] = dict(wall_s=round(dt, 3), tok_s=round(tokens / dt, 1), peak_gb=round(peak, 2),
                             first_call_s=round(first, 2), compile_s=round(first - dt, 2),
                             ms_per_step=round(dt / args.new * 1e3, 2))
        print(f"[static generate] {dt:.2f} s ({dt / args.new * 1e3:.1f} ms/step) after a first call of "
              f"{first:.1f} s, peak {peak:.1f} GiB", flush=True)
    save()
    print(f"[bench] wrote {path}")
    summary = {k: res.get(k, {}).get("wall_s") for k in ("default", "static", "ours")}
    print(f"[bench] SUMMARY {args.shape} {dev_name}: wall_s {summary} "
          f"speedup_vs_default {res.get('speedup_vs_default')} speedup_vs_static {res.get('speedup_vs_static')} "
          f"peak_gb ours {res.get('ours', {}).get('peak_gb')}"
          + (f" speedup_vs_1gpu ({args.devices} GPUs) {res.get('speedup_vs_1gpu')}" if "dp" in todo else ""),
          flush=True)


if __name__ == "__main__":
    main()
