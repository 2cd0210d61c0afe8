"""Load AV, AR and target exactly as released.

- AV: full causal LM, text-only even when saved as a multimodal wrapper.
- AR: config cut to K+1 blocks *before* loading, final norm and lm_head replaced by Identity,
  value head loaded from its own ``value_head.safetensors``.
- Target: causal LM (text model of a wrapper), by default loaded with only K+1 blocks, since
  capture never needs the blocks after K.
"""

from __future__ import annotations

import gc
import os
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from nlalab.errors import FileFault, NLALabError, UsageError, ValidationProblem
from nlalab.pairs import arch
from nlalab.rundir.io import check_safetensors  # noqa: F401  (re-used by validate and vectors_io)
from nlalab.pairs.markers import av_prompt_ids, locate_marker
from nlalab.pairs.sidecar import DEFAULT_AR_TEMPLATE, DEFAULT_AV_TEMPLATE, Sidecar, read_sidecar

log = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"
# Gemma-3 wrapper checkpoints store the language model under one of these prefixes (old and new layout).
WRAPPER_KEY_MAPPING = {
    r"^language_model\.model\.": "model.",
    r"^model\.language_model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
}


@dataclass
class LoadOptions:
    """Where and how weights go. ``device_map``/``max_memory`` are passed to transformers for sharding."""

    device: str = field(default_factory=lambda: os.environ.get("NLALAB_DEVICE", "auto"))
    dtype: str = "auto"
    device_map: Optional[Union[str, dict]] = None
    max_memory: Optional[dict] = None
    attn_implementation: Optional[str] = None

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if self.resolved_device().type == "cuda" else torch.float32
        try:
            return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                    "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}[self.dtype]
        except KeyError:
            raise UsageError(f"Unknown dtype {self.dtype!r}. Fix: use one of auto, bf16, fp16, fp32.") from None


def parse_max_memory(spec: Optional[str]) -> Optional[dict]:
    if not spec:
        return None
    out: dict = {}
    for part in spec.split(","):
        key, _, val = part.partition("=")
        if not val:
            raise UsageError(f"--max-memory entry {part!r} is not DEVICE=SIZE. Fix: write e.g. 0=70GiB,1=70GiB.")
        key = key.strip()
        out[int(key) if key.isdigit() else key] = val.strip()
    return out


def _load_kwargs(opts: LoadOptions) -> dict[str, Any]:
    kw: dict[str, Any] = {"dtype": opts.resolved_dtype()}
    if opts.device_map is not None:
        kw["device_map"] = opts.device_map
        if opts.max_memory is not None:
            kw["max_memory"] = opts.max_memory
    if opts.attn_implementation:
        kw["attn_implementation"] = opts.attn_implementation
    return kw


@contextmanager
def quiet_transformers():
    """Missing/unexpected-key reports are expected for truncated or text-only loads; keep them at debug."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


# ------------------------------------------------------------------------------- weight-file checks

REFETCH = ("re-download the checkpoint (delete the file first; for a hub id, clear it from the Hugging Face "
           "cache), or rebuild it with the command that wrote it")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def check_weight_files(model_dir: str | Path, fix: str = REFETCH) -> list[Path]:
    """Every ``*.safetensors`` file of a checkpoint directory is whole, and every shard its index names
    exists. Returns the files checked. Header reads only."""
    import json

    d = Path(model_dir)
    for index in sorted(d.glob("*.safetensors.index.json")):
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise FileFault(str(index), "weight_map", "an unreadable index", "a JSON object with weight_map",
                            fix) from None
        missing = [s for s in shards if not (d / s).is_file()]
        if missing:
            raise FileFault(str(d), missing[0], "no such file", f"the {len(shards)} shards named in {index.name}",
                            fix)
    files = sorted(d.glob("*.safetensors"))
    for f in files:
        check_safetensors(f, fix)
    return files


def load_text_causal_lm(path: Path, opts: LoadOptions, n_layers: Optional[int] = None) -> nn.Module:
    """A text-only causal LM from a plain or wrapper checkpoint, optionally cut to ``n_layers`` blocks."""
    from transformers import AutoConfig, AutoModelForCausalLM

    check_weight_files(path)
    config = AutoConfig.from_pretrained(path)
    kwargs = _load_kwargs(opts)
    wrapper = arch.is_wrapper(config)
    if wrapper or n_layers is not None:
        tc = arch.truncated_text_config(config, n_layers or arch.n_layers_of(config))
        if wrapper:
            kwargs["key_mapping"] = WRAPPER_KEY_MAPPING
            # The wrapper's lm_head is tied to the text embeddings.
            if getattr(config, "tie_word_embeddings", None) is not None:
                tc.tie_word_embeddings = config.tie_word_embeddings
        try:
            cls = AutoModelForCausalLM._model_mapping[type(tc)]
        except KeyError:
            raise NLALabError(f"No causal-LM class for text config {type(tc).__name__} at {path}.") from None
        with quiet_transformers():
            model = cls.from_pretrained(path, config=tc, **kwargs)
    else:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if opts.device_map is None:
        model.to(opts.resolved_device())
    model.eval()
    model.requires_grad_(False)
    return model


def load_tokenizer(path: Path, padding_side: Optional[str] = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if padding_side:
        tok.padding_side = padding_side
    return tok


def release(*objs: Any) -> None:
    """Free the GPU memory of loaded models now, even if a caller still holds a reference.

    Moving parameters to the meta device drops their storage; the object is unusable afterwards.
    (The seed needed kernel restarts for Gemma-27B because ``del`` alone left memory held.)
    """
    import sys

    engine = sys.modules.get("nlalab.verbalize.fast")  # only if the fast engine was ever used
    parallel = sys.modules.get("nlalab.verbalize.parallel")  # data-parallel replicas (normally none left)
    tp = sys.modules.get("nlalab.verbalize.tp.group")  # tensor-parallel shards (on every rank)
    for o in objs:
        for m in (getattr(o, "model", o), getattr(o, "value_head", None)):
            if isinstance(m, nn.Module) and parallel is not None:
                parallel.release_replicas(m)
            if isinstance(m, nn.Module) and engine is not None:
                engine.release_engines(m)
            if isinstance(m, nn.Module) and tp is not None:
                tp.release(m)
            if isinstance(m, nn.Module):
                _remove_dispatch_hooks(m)
                try:
                    m.to("meta")
                except Exception:  # pragma: no cover - best effort
                    pass
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _remove_dispatch_hooks(m: nn.Module) -> None:
    """Take accelerate's hooks off a model sharded with ``device_map`` before freeing it.

    dispatch_model wraps the model's ``.to`` (it warns, and raises when some weights are offloaded), and
    a hook can hold references to tied weights. Like ``accelerate.hooks.remove_hook_from_module`` but
    without ``detach_hook``, which would first copy offloaded weights back to their devices.
    """
    added = ("to", "cuda", "npu", "xpu", "mlu", "sdaa", "musa", "neuron")
    try:
        from accelerate.hooks import _accelerate_added_attributes as added  # noqa: F811
    except Exception:  # pragma: no cover - older/newer accelerate
        pass
    for mod in m.modules():
        d = mod.__dict__
        if d.pop("_hf_hook", None) is not None and "_old_forward" in d:
            d.pop("_old_forward")
            d.pop("forward", None)  # the wrapper; the class's forward shows through again
        for attr in added:
            d.pop(attr, None)


# ----------------------------------------------------------------------------------------------- AV


class _PairModel:
    """What AV and AR share: width from the sidecar, device from the input embeddings."""

    sidecar: Sidecar
    model: nn.Module

    @property
    def d_model(self) -> int:
        return self.sidecar.d_model

    @property
    def device(self) -> torch.device:
        return arch.input_device(self.model)


@dataclass
class AV(_PairModel):
    """The activation verbalizer with everything generation needs precomputed."""

    model: nn.Module
    tokenizer: Any
    sidecar: Sidecar
    prompt_ids: list[int]
    marker_pos: int
    injection_scale: float
    eos_ids: list[int]
    path: Path
    revision: Optional[str] = None


def av_eos_ids(tokenizer, model: Optional[nn.Module] = None) -> list[int]:
    """End-of-turn ids: generation_config's, the tokenizer's eos, and the family's turn-close token."""
    ids: list[int] = []
    gc_ = getattr(model, "generation_config", None) if model is not None else None
    e = getattr(gc_, "eos_token_id", None)
    if isinstance(e, int):
        ids.append(e)
    elif isinstance(e, (list, tuple)):
        ids.extend(int(x) for x in e)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for tok in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"):
        if tok in vocab:
            ids.append(int(vocab[tok]))
    return sorted(set(ids))


def check_av_prompt(tokenizer, sc: Sidecar, where: str) -> tuple[list[int], int]:
    """Marker is one token equal to the sidecar's, appears once, with the pinned neighbours."""
    t = sc.tokens
    char = t.injection_char
    if not char or t.injection_token_id is None:
        raise ValidationProblem(where, "tokens.injection_char/injection_token_id", None, "both set",
                                "write the marker into the AV sidecar")
    enc = list(tokenizer.encode(char, add_special_tokens=False))
    if len(enc) != 1:
        raise ValidationProblem(where, "tokens.injection_char", f"{char!r} -> {len(enc)} tokens {enc}",
                                "exactly one token", "choose a marker that is one token (nlalab.pairs.markers.choose_marker)")
    if enc[0] != t.injection_token_id:
        raise ValidationProblem(where, "tokens.injection_token_id", t.injection_token_id,
                                f"{enc[0]} (what this tokenizer encodes {char!r} to)",
                                "the sidecar does not belong to this tokenizer; re-download the AV or fix the id")
    ids = av_prompt_ids(tokenizer, char, sc.av_template or DEFAULT_AV_TEMPLATE)
    try:
        site = locate_marker(ids, enc[0])
    except NLALabError as e:
        raise ValidationProblem(where, "prompt_templates.av", str(e), "marker exactly once", "fix the template") from None
    for side, found, pinned in (("left", site.left_id, t.injection_left_neighbor_id),
                                ("right", site.right_id, t.injection_right_neighbor_id)):
        if pinned is not None and found != pinned:
            raise ValidationProblem(
                where, f"tokens.injection_{side}_neighbor_id", f"{found} ({tokenizer.decode([found])!r})",
                f"{pinned} (pinned)",
                "the chat-templated prompt drifted (double BOS, a different chat template or system prompt); "
                "use the tokenizer shipped with the AV and apply_chat_template(tokenize=True) in one step",
            )
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        raise ValidationProblem(where, "AV prompt", "two BOS tokens", "one", "tokenize the chat template in one step")
    return ids, site.position


def load_av(path: Path, opts: LoadOptions = LoadOptions(), injection_scale: Optional[float] = None,
            revision: Optional[str] = None) -> AV:
    path = Path(path)
    sc = read_sidecar(path)
    if sc.role != "av":
        raise ValidationProblem(str(path), "role", sc.role, "av (or actor)", "pass the AV directory as --av")
    tok = load_tokenizer(path)
    ids, pos = check_av_prompt(tok, sc, str(path / "nla_meta.yaml"))
    scale = injection_scale if injection_scale is not None else sc.injection_scale
    if scale is None or not math.isfinite(scale) or scale <= 0:
        raise ValidationProblem(str(path / "nla_meta.yaml"), "extraction.injection_scale", scale,
                                "a positive number", "set it in the sidecar or pass --injection-scale")
    model = load_text_causal_lm(path, opts)
    d = arch.d_model_of(model.config)
    if d != sc.d_model:
        raise ValidationProblem(str(path / "nla_meta.yaml"), "d_model", sc.d_model, f"{d} (config.json hidden_size)",
                                "the sidecar belongs to another model")
    return AV(model=model, tokenizer=tok, sidecar=sc, prompt_ids=ids, marker_pos=pos,
              injection_scale=float(scale), eos_ids=av_eos_ids(tok, model), path=path, revision=revision)


# ----------------------------------------------------------------------------------------------- AR


@dataclass
class AR(_PairModel):
    """The activation reconstructor: truncated backbone + value head."""

    model: nn.Module
    value_head: nn.Linear
    tokenizer: Any
    sidecar: Sidecar
    template: str
    mse_scale: float
    layer: int
    path: Path
    revision: Optional[str] = None


def check_value_head(path: Path, d_model: int) -> None:
    """File present, one key ``weight`` of shape [d, d]; reads the header only."""
    from safetensors import safe_open

    f = Path(path) / VALUE_HEAD_FILE
    if not f.is_file():
        raise ValidationProblem(
            str(path), VALUE_HEAD_FILE, "no such file", "the AR value head next to the backbone weights",
            "download the complete AR checkpoint (from_pretrained does not fetch value_head.safetensors), or "
            "build an identity head with nlalab.pairs.build for an untrained AR",
        )
    check_safetensors(f)
    with safe_open(str(f), framework="pt") as sf:
        keys = list(sf.keys())
        if keys != ["weight"]:
            raise ValidationProblem(str(f), "keys", keys, "['weight']", "re-save the head with the single key `weight`")
        shape = list(sf.get_slice("weight").get_shape())
    if shape != [d_model, d_model]:
        raise ValidationProblem(str(f), "weight.shape", shape, [d_model, d_model],
                                "the value head belongs to a model of another width")


def read_value_head(path: Path, d_model: int) -> torch.Tensor:
    from safetensors.torch import load_file

    check_value_head(path, d_model)
    return load_file(str(Path(path) / VALUE_HEAD_FILE))["weight"]


def ar_layer(sc: Sidecar, config: Any, where: str, expected: Optional[int] = None) -> int:
    n = arch.n_layers_of(config)
    k = sc.layer if sc.layer is not None else expected
    if k is None:
        k = n - 1
    if expected is not None and k != expected:
        raise ValidationProblem(where, "extraction_layer_index", k, f"{expected} (the pair's layer)",
                                "AV, AR and target must use the same layer K")
    if n != k + 1:
        raise ValidationProblem(
            where.replace("nla_meta.yaml", "config.json"), "num_hidden_layers", n, f"{k + 1} (K+1 for K={k})",
            "the AR must keep blocks 0..K; an off-by-one here caps FVE",
        )
    return k


def check_layer(ar: str | Path, layer: int, target: Optional[str | Path] = None) -> int:
    """The run's layer against the AR (sidecar and K+1 blocks) and the target (has block K), reading only
    sidecars and config.json. Call it at pair resolution, before any model loads: a ``--layer`` that
    disagrees with the AR otherwise fails only after capture and verbalization ran."""
    from transformers import AutoConfig

    ar = Path(ar)
    sc = read_sidecar(ar)
    where = str(ar / "nla_meta.yaml")
    if sc.layer is not None and sc.layer != layer:
        raise ValidationProblem(where, "extraction_layer_index", f"{sc.layer} (the AR's layer K)",
                                f"{layer} (the requested --layer)",
                                f"pass --layer {sc.layer}, or leave --layer out to use the pair's own layer")
    k = ar_layer(sc, AutoConfig.from_pretrained(ar), where, layer)
    if target is not None:
        tcfg = Path(target) / "config.json"
        n = arch.n_layers_of(AutoConfig.from_pretrained(target))
        if not 0 <= k < n:
            raise ValidationProblem(str(tcfg), "num_hidden_layers", n, f"> {k} (the pair's layer)",
                                    "use the pair's own target model")
    return k


def load_ar(path: Path, opts: LoadOptions = LoadOptions(), layer: Optional[int] = None,
            revision: Optional[str] = None) -> AR:
    from transformers import AutoConfig

    path = Path(path)
    sc = read_sidecar(path)
    where = str(path / "nla_meta.yaml")
    if sc.role != "ar":
        raise ValidationProblem(where, "role", sc.role, "ar (or critic)", "pass the AR directory as --ar")
    if sc.mse_scale is None:
        raise ValidationProblem(where, "extraction.mse_scale", None, "a number (sqrt(d_model) in the release)",
                                "set extraction.mse_scale")
    config = AutoConfig.from_pretrained(path)
    k = ar_layer(sc, config, where, layer)
    d = arch.d_model_of(config)
    if d != sc.d_model:
        raise ValidationProblem(where, "d_model", sc.d_model, f"{d} (config.json hidden_size)", "fix the sidecar")
    w = read_value_head(path, d)
    model = load_text_causal_lm(path, opts, n_layers=k + 1)
    arch.strip_head_and_norm(model)
    # next to block K (the last device of a sharded AR); reconstruct() moves the hidden state there
    head = nn.Linear(d, d, bias=False, device=arch.module_device(arch.decoder_layers(model)[-1]),
                     dtype=torch.float32)
    with torch.no_grad():
        head.weight.copy_(w.to(torch.float32))
    head.requires_grad_(False)
    tok = load_tokenizer(path, padding_side="right")
    return AR(model=model, value_head=head, tokenizer=tok, sidecar=sc, template=sc.ar_template or DEFAULT_AR_TEMPLATE,
              mse_scale=float(sc.mse_scale), layer=k, path=path, revision=revision)


# ------------------------------------------------------------------------------------------- target


@dataclass
class Target:
    model: nn.Module
    tokenizer: Any
    layer: int
    path: Path
    truncated: bool
    revision: Optional[str] = None

    @property
    def d_model(self) -> int:
        return arch.d_model_of(self.model.config)


def load_target(path: Path, layer: int, opts: LoadOptions = LoadOptions(), truncate: bool = True,
                revision: Optional[str] = None) -> Target:
    """``truncate`` loads only blocks 0..K: less memory and time, same ``hidden_states[K+1]``."""
    from transformers import AutoConfig

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    n = arch.n_layers_of(config)
    if not 0 <= layer < n:
        raise UsageError(f"Layer {layer} is out of range for {path} ({n} blocks: 0..{n - 1}). Fix: pass a --layer "
                         "of this target (the pair's own layer).")
    model = load_text_causal_lm(path, opts, n_layers=layer + 1 if truncate else None)
    tok = load_tokenizer(path, padding_side="right")
    return Target(model=model, tokenizer=tok, layer=layer, path=path, truncated=truncate, revision=revision)
