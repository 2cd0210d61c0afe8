"""``nlalab sidecar write``: the ``nla_meta.yaml`` of one's own AV/AR, built from flags and the checkpoints.

Pairs trained outside nlalab (the reference training repo's raw output, another trainer) often lack the
release sidecar that every nlalab command reads. Everything in it except the training hyper-parameters
(layer K, injection scale, mse scale) can be derived from the checkpoint itself: ``d_model`` from
``config.json``, the marker and its pinned neighbours from the tokenizer and the canonical AV prompt,
the AR's ``critic_suffix_ids`` from the AR template (kitft's rule, as in
:func:`nlalab.pairs.build.build_untrained_pair`). Each file is read back with
:func:`nlalab.pairs.sidecar.read_sidecar` at once, and with both directories the pair is validated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from nlalab.errors import UsageError
from nlalab.pairs.sidecar import (DEFAULT_AR_TEMPLATE, DEFAULT_AV_TEMPLATE, SIDECAR_NAME, Sidecar, _resolve_scale,
                                  read_sidecar, sidecar_dict, write_sidecar)


@dataclass
class SidecarWriteResult:
    written: list[Path] = field(default_factory=list)
    sidecars: dict[str, Sidecar] = field(default_factory=dict)
    report: Optional[object] = None  # nlalab.pairs.validate.ValidationReport when both AV and AR were given


def _d_model(model_dir: Path) -> int:
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise UsageError(f"{model_dir}: no config.json. Fix: point --av/--ar at a Hugging Face checkpoint directory.")
    cfg = json.loads(cfg_path.read_text())
    text = cfg.get("text_config") or cfg
    if "hidden_size" not in text:
        raise UsageError(f"{cfg_path}: no hidden_size. Fix: point at a decoder checkpoint's directory.")
    return int(text["hidden_size"])


def _scale(value: Union[str, float, None], d_model: int, flag: str) -> Optional[float]:
    try:
        return _resolve_scale(value, d_model)
    except ValueError:
        raise UsageError(f"{flag} {value!r}: expected a number, sqrt_d_model or raw.") from None


def _ids(text: Optional[str], flag: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        return [int(x) for x in str(text).replace(" ", "").split(",") if x]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected a comma list of token ids, e.g. 29,1,2.") from None


def _marker(tokenizer, marker: Optional[str], where: Path) -> tuple[str, int]:
    from nlalab.pairs.markers import choose_marker, is_single_token

    if marker is None:
        return choose_marker(tokenizer)
    mid = is_single_token(tokenizer, marker)
    if mid is None:
        raise UsageError(f"--marker {marker!r} is not one token with the tokenizer of {where}. Fix: omit --marker "
                         "to take kitft's choice, or give the character the AV was trained with.")
    return marker, mid


def write_pair_sidecars(*, av: Optional[Path] = None, ar: Optional[Path] = None, layer: int,
                        injection_scale: Union[str, float, None] = None,
                        mse_scale: Union[str, float, None] = "sqrt_d_model", marker: Optional[str] = None,
                        critic_suffix_ids: Optional[str] = None, base: Optional[str] = None, stage: str = "rl",
                        trained_on: Optional[str] = None, overwrite: bool = False,
                        av_template: str = DEFAULT_AV_TEMPLATE,
                        ar_template: str = DEFAULT_AR_TEMPLATE) -> SidecarWriteResult:
    """Write ``nla_meta.yaml`` into ``av`` and/or ``ar``, read each back, and validate the pair when both are given."""
    from nlalab.pairs.load import load_tokenizer
    from nlalab.pairs.markers import av_prompt_ids, encode_plain, locate_marker

    dirs = {role: Path(d) for role, d in (("av", av), ("ar", ar)) if d is not None}
    if not dirs:
        raise UsageError("Give --av DIR and/or --ar DIR: the checkpoint directories that get an nla_meta.yaml.")
    if isinstance(layer, bool) or int(layer) < 0:
        raise UsageError(f"--layer {layer!r}: expected K >= 0, the block whose output the AR reconstructs.")
    if stage not in ("sl", "rl", "init"):
        raise UsageError(f"--stage {stage!r}: expected sl, rl or init.")
    for role, d in dirs.items():
        if not d.is_dir():
            raise UsageError(f"--{role} {d}: no such directory.")
        if (d / SIDECAR_NAME).exists() and not overwrite:
            raise UsageError(f"{d / SIDECAR_NAME} exists. Fix: pass --overwrite to replace it, or check it with "
                             "`nlalab validate`.")
    d_models = {role: _d_model(d) for role, d in dirs.items()}
    if len(set(d_models.values())) > 1:
        raise UsageError(f"The AV has d_model {d_models['av']} and the AR {d_models['ar']}. Fix: the AV and AR "
                         "must come from the same base model.")
    d_model = next(iter(d_models.values()))
    if "av" in dirs and injection_scale is None:
        raise UsageError("--injection-scale is needed for the AV: the L2 norm vectors were rescaled to in training "
                         "(kitft: about the mean activation norm at layer K; a number or sqrt_d_model).")
    inj = _scale(injection_scale, d_model, "--injection-scale") if "av" in dirs else None
    if "av" in dirs and inj is None:
        raise UsageError("--injection-scale raw: the AV needs a number (the norm vectors are injected at).")
    mse = _scale(mse_scale, d_model, "--mse-scale")
    suffix_ids = _ids(critic_suffix_ids, "--critic-suffix-ids")

    # the marker comes from the AV's tokenizer (the AR shares it); the neighbours need the AV's chat template
    tok_dir = dirs.get("av", dirs.get("ar"))
    tok = load_tokenizer(tok_dir)
    char, char_id = _marker(tok, marker, tok_dir)
    left = right = None
    if getattr(tok, "chat_template", None) is not None:
        site = locate_marker(av_prompt_ids(tok, char, av_template), char_id)
        left, right = site.left_id, site.right_id
    elif "av" in dirs:
        raise UsageError(f"{tok_dir}: the tokenizer has no chat_template, so the AV prompt cannot be built. Fix: "
                         "save the instruct tokenizer (with its chat template) into the AV directory.")
    if "ar" in dirs and suffix_ids is None:
        ar_tok = load_tokenizer(dirs["ar"])
        suffix = ar_template.split("{explanation}", 1)[1]
        # kitft drops the first suffix token: it can BPE-merge with the explanation's last character
        suffix_ids = [int(i) for i in encode_plain(ar_tok, suffix)[1:]]

    res = SidecarWriteResult()
    common = dict(d_model=d_model, layer=int(layer), mse_scale=mse, injection_char=char,
                  injection_token_id=int(char_id), left_id=left, right_id=right, base_checkpoint=base, stage=stage,
                  trained_on=[trained_on] if trained_on else None, av_template=av_template, ar_template=ar_template,
                  created_by="nlalab sidecar write")
    for role, d in dirs.items():
        data = sidecar_dict(role=role, injection_scale=inj if role == "av" else None,
                            critic_suffix_ids=suffix_ids if role == "ar" else None, **common)
        res.written.append(write_sidecar(d, data))
        res.sidecars[role] = read_sidecar(d)  # raises one line if what we wrote does not parse
    if len(dirs) == 2:
        from nlalab.pairs.validate import validate_pair

        res.report = validate_pair(dirs["av"], dirs["ar"], None, int(layer))
    return res


__all__ = ["SidecarWriteResult", "write_pair_sidecars"]
