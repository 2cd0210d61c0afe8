"""The ``nla_meta.yaml`` model sidecar: read (schema v1 and v2, av/actor and ar/critic names) and write.

The sidecar is the contract between a checkpoint and every consumer: marker, scales, prompts and
layer all come from it, so we parse it strictly and report problems as one line each.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nlalab.errors import NLALabError, ValidationProblem

SIDECAR_NAME = "nla_meta.yaml"

# Canonical prompts (kitft stage-3 defaults), quoted as data. No trailing newline.
DEFAULT_AV_TEMPLATE = (
    "You are a meticulous AI researcher conducting an important investigation into activation vectors "
    "from a language model. Your overall task is to describe the semantic content of that activation vector."
    "\n\n"
    "We will pass the vector enclosed in <concept> tags into your context. You must then produce an "
    "explanation for the vector, enclosed within <explanation> tags. The explanation consists of 2-3 text "
    "snippets describing that vector."
    "\n\n"
    "Here is the vector:"
    "\n\n"
    "<concept>{injection_char}</concept>"
    "\n\n"
    "Please provide an explanation."
)
DEFAULT_AR_TEMPLATE = "Summary of the following text: <text>{explanation}</text> <summary>"

ROLE_ALIASES = {"av": "av", "actor": "av", "ar": "ar", "critic": "ar"}


class Extraction(BaseModel):
    model_config = ConfigDict(extra="allow")
    injection_scale: Optional[float] = None
    mse_scale: Optional[float] = None


class Tokens(BaseModel):
    model_config = ConfigDict(extra="allow")
    injection_char: Optional[str] = None
    injection_token_id: Optional[int] = None
    injection_left_neighbor_id: Optional[int] = None
    injection_right_neighbor_id: Optional[int] = None
    critic_suffix_ids: Optional[list[int]] = None


class Sidecar(BaseModel):
    """A model sidecar, normalised: ``role`` is ``av``/``ar``, templates under ``av``/``ar``, ``layer`` = K."""

    model_config = ConfigDict(extra="allow")
    kind: str = "nla_model"
    schema_version: int = 2
    role: Literal["av", "ar"]
    stage: Optional[str] = None
    base_checkpoint: Optional[str] = None
    d_model: int
    extraction: Extraction = Field(default_factory=Extraction)
    tokens: Tokens = Field(default_factory=Tokens)
    av_template: Optional[str] = None
    ar_template: Optional[str] = None
    layer: Optional[int] = None
    trained_on: Optional[list[Any]] = None
    parent_checkpoints: Optional[list[Any]] = None
    created_at: Optional[str] = None
    created_by: Optional[str] = None
    path: Optional[str] = None

    @property
    def injection_scale(self) -> Optional[float]:
        return self.extraction.injection_scale

    @property
    def mse_scale(self) -> Optional[float]:
        return self.extraction.mse_scale


def _resolve_scale(value: Any, d_model: int) -> Optional[float]:
    """kitft ``resolve_target_scale``: None/'raw'/'none' -> None; 'sqrt_d_model' -> sqrt(d); number -> float."""
    if value is None:
        return None
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("raw", "none", "null", ""):
            return None
        if v == "sqrt_d_model":
            return math.sqrt(d_model)
        return float(v)
    return float(value)


def _int(value: Any, where: str, field: str, minimum: int, fix: str) -> int:
    """An integer sidecar field, or one line naming the field (``d_model: "sixty-four"``)."""
    ok = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        value, ok = int(value.strip()), True
    if not ok or value < minimum:
        raise ValidationProblem(where, field, repr(value), f"a whole number >= {minimum}", fix)
    return int(value)


def _field_of(loc: tuple) -> str:
    """A pydantic location in the sidecar's own spelling (``tokens.injection_token_id``)."""
    top = {"av_template": "prompt_templates.av", "ar_template": "prompt_templates.ar",
           "layer": "extraction_layer_index"}
    name = ".".join(str(x) for x in loc)
    return top.get(name, name)


def parse_sidecar(raw: dict[str, Any], where: str = "nla_meta.yaml") -> Sidecar:
    """Normalise a raw sidecar dict (v1 or v2; release or training names)."""
    if not isinstance(raw, dict):
        raise ValidationProblem(where, "<file>", type(raw).__name__, "a YAML mapping", "re-export the sidecar")
    kind = raw.get("kind", "nla_model")
    if kind != "nla_model":
        raise ValidationProblem(
            where, "kind", kind, "nla_model", "point at a model checkpoint dir, not a dataset sidecar"
        )
    role_raw = raw.get("role")
    role = ROLE_ALIASES.get(str(role_raw).lower()) if role_raw is not None else None
    if role is None:
        raise ValidationProblem(where, "role", role_raw, "one of av, actor, ar, critic", "set role in the sidecar")
    d_model = raw.get("d_model")
    if d_model is None:
        d_model = (raw.get("extraction") or {}).get("d_model")
    if d_model is None:
        raise ValidationProblem(where, "d_model", None, "an int at top level", "add d_model: <hidden_size>")
    d_model = _int(d_model, where, "d_model", 1, "set d_model to the model's hidden_size, e.g. d_model: 3584")
    for block in ("extraction", "tokens", "prompt_templates"):
        if raw.get(block) is not None and not isinstance(raw.get(block), dict):
            raise ValidationProblem(where, block, repr(raw[block]), "a mapping", f"write {block}: as a YAML mapping")
    ext = dict(raw.get("extraction") or {})
    for key in ("injection_scale", "mse_scale"):
        if key in ext:
            try:
                ext[key] = _resolve_scale(ext[key], d_model)
            except (ValueError, TypeError):
                raise ValidationProblem(
                    where, f"extraction.{key}", ext[key], "a number, 'sqrt_d_model', 'raw' or null",
                    "fix the value in the sidecar",
                ) from None
    templates = raw.get("prompt_templates") or {}
    av_t = templates.get("av", templates.get("actor"))
    ar_t = templates.get("ar", templates.get("critic"))
    # The layer block is `critic:` in code; docs/inference.md once showed it as `ar:`. Accept both.
    critic = raw.get("critic") if isinstance(raw.get("critic"), dict) else raw.get("ar")
    critic = critic if isinstance(critic, dict) else {}
    layer = raw.get("extraction_layer_index")
    if layer is None and isinstance(critic, dict):
        # v2: critic.extraction_layer_index; v1: critic.num_hidden_layers (which meant K).
        layer = critic.get("extraction_layer_index", critic.get("num_hidden_layers"))
    known = {
        "kind", "schema_version", "role", "stage", "base_checkpoint", "d_model", "extraction", "tokens",
        "prompt_templates", "critic", "extraction_layer_index", "trained_on", "parent_checkpoints",
        "created_at", "created_by",
    }
    extra = {k: v for k, v in raw.items() if k not in known and k != "ar"}
    if layer is not None:
        layer = _int(layer, where, "extraction_layer_index", 0, "set the layer K the pair was trained at")
    schema = _int(raw.get("schema_version", 2), where, "schema_version", 1, "set schema_version: 2")
    try:
        return _build(kind, schema, role, raw, d_model, ext, av_t, ar_t, layer, extra)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        raise ValidationProblem(where, _field_of(tuple(err["loc"])), repr(err.get("input")),
                                err["msg"].lower().removeprefix("input should be "), "fix this field in the sidecar") from None


def _build(kind, schema, role, raw, d_model, ext, av_t, ar_t, layer, extra) -> Sidecar:
    return Sidecar(
        kind=kind,
        schema_version=schema,
        role=role,
        stage=raw.get("stage"),
        base_checkpoint=raw.get("base_checkpoint"),
        d_model=d_model,
        extraction=ext,  # dicts, so that a type error names extraction.<field> / tokens.<field>
        tokens=raw.get("tokens") or {},
        av_template=av_t,
        ar_template=ar_t,
        layer=layer,
        trained_on=raw.get("trained_on"),
        parent_checkpoints=raw.get("parent_checkpoints"),
        created_at=str(raw["created_at"]) if raw.get("created_at") is not None else None,
        created_by=raw.get("created_by"),
        **extra,
    )


def read_sidecar(model_dir: str | Path) -> Sidecar:
    path = Path(model_dir) / SIDECAR_NAME
    if not path.is_file():
        raise ValidationProblem(
            str(Path(model_dir)), SIDECAR_NAME, "no such file", "a model sidecar next to config.json",
            "download the full checkpoint (it ships nla_meta.yaml) or write one with nlalab.pairs.sidecar.write_sidecar",
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValidationProblem(str(path), "<yaml>", f"a parse error ({e})", "valid YAML", "fix the file") from None
    sc = parse_sidecar(raw, where=str(path))
    sc.path = str(path)
    return sc


def sidecar_dict(
    *,
    role: str,
    d_model: int,
    layer: int,
    injection_scale: Optional[float],
    mse_scale: Optional[float],
    injection_char: Optional[str],
    injection_token_id: Optional[int],
    left_id: Optional[int],
    right_id: Optional[int],
    critic_suffix_ids: Optional[list[int]] = None,
    base_checkpoint: Optional[str] = None,
    av_template: str = DEFAULT_AV_TEMPLATE,
    ar_template: str = DEFAULT_AR_TEMPLATE,
    stage: str = "rl",
    trained_on: Optional[list[str]] = None,
    created_by: str = "nlalab",
) -> dict[str, Any]:
    """A schema-v2 sidecar in the release layout (role av/ar, templates av/ar)."""
    d: dict[str, Any] = {
        "kind": "nla_model",
        "schema_version": 2,
        "role": role,
        "stage": stage,
        "base_checkpoint": base_checkpoint,
        "d_model": int(d_model),
        "extraction": {"injection_scale": injection_scale, "mse_scale": mse_scale},
        "tokens": {
            "injection_char": injection_char,
            "injection_token_id": injection_token_id,
            "injection_left_neighbor_id": left_id,
            "injection_right_neighbor_id": right_id,
            "critic_suffix_ids": critic_suffix_ids,
        },
        "prompt_templates": {"av": av_template, "ar": ar_template},
        "trained_on": trained_on or [],
        "parent_checkpoints": [base_checkpoint] if base_checkpoint else [],
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "created_by": created_by,
    }
    if role == "ar":
        d["critic"] = {"extraction_layer_index": int(layer)}
    d["extraction_layer_index"] = int(layer)
    return d


def write_sidecar(model_dir: str | Path, data: dict[str, Any]) -> Path:
    path = Path(model_dir) / SIDECAR_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    tmp.replace(path)
    return path


def require(sc: Sidecar, field: str, value: Any, fix: str) -> Any:
    if value is None:
        raise ValidationProblem(sc.path or "nla_meta.yaml", field, None, "a value", fix)
    return value


__all__ = [
    "DEFAULT_AR_TEMPLATE", "DEFAULT_AV_TEMPLATE", "SIDECAR_NAME", "Sidecar", "parse_sidecar", "read_sidecar",
    "sidecar_dict", "write_sidecar", "require", "NLALabError",
]
