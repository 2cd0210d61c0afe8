"""Check a pair without loading weights: sidecars, tokenizers, configs and value-head header.

Each failed check is one line naming the file, the field, what was found, what was expected and
how to fix it. Every check runs even after a failure, so one call lists everything wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from nlalab.errors import FileFault, NLALabError, ValidationProblem
from nlalab.pairs import arch
from nlalab.pairs.load import ar_layer, check_value_head, check_av_prompt, check_weight_files, load_tokenizer
from nlalab.pairs.sidecar import DEFAULT_AR_TEMPLATE, SIDECAR_NAME, Sidecar, read_sidecar


@dataclass
class ValidationReport:
    passed: list[str] = field(default_factory=list)
    problems: list[ValidationProblem | FileFault] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def run(self, name: str, fn: Callable[[], object]):
        try:
            out = fn()
        except (ValidationProblem, FileFault) as p:
            self.problems.append(p)
            return None
        except NLALabError as e:
            self.problems.append(ValidationProblem(name, "check", str(e), "no error", "see the message"))
            return None
        self.passed.append(name)
        return out

    def lines(self) -> list[str]:
        return [f"ok    {p}" for p in self.passed] + [f"FAIL  {p.line()}" for p in self.problems]


def _config(path: Path):
    from transformers import AutoConfig

    if not (path / "config.json").is_file():
        raise ValidationProblem(str(path), "config.json", "no such file", "a transformers config",
                                "point at a checkpoint directory")
    return AutoConfig.from_pretrained(path)


def _weights(path: Path) -> None:
    """Every safetensors file whole (header read and size compared; no weights loaded)."""
    if not check_weight_files(path):
        raise ValidationProblem(str(path), "*.safetensors", "no weight files", "the checkpoint's weights",
                                "download the complete checkpoint")


def _check_d_model(sc: Sidecar, config, where: str) -> None:
    d = arch.d_model_of(config)
    if sc.d_model != d:
        raise ValidationProblem(where, "d_model", sc.d_model, f"{d} (hidden_size in config.json)",
                                "the sidecar belongs to another model; re-download the checkpoint")


def _check_scale(sc: Sidecar, key: str, where: str) -> None:
    v = getattr(sc.extraction, key)
    if v is None or not math.isfinite(v) or v <= 0:
        raise ValidationProblem(where, f"extraction.{key}", v, "a positive number",
                                f"set extraction.{key} in the sidecar" + (
                                    " (sqrt(d_model) in the release)" if key == "mse_scale" else ""))


def _check_ar_suffix(sc: Sidecar, path: Path, where: str) -> None:
    pinned = sc.tokens.critic_suffix_ids
    if not pinned:
        return
    tok = load_tokenizer(path, padding_side="right")
    tmpl = sc.ar_template or DEFAULT_AR_TEMPLATE
    ids = tok(tmpl.format(explanation="The text is a short factual question."), add_special_tokens=True)["input_ids"]
    if list(ids[-len(pinned):]) != list(pinned):
        raise ValidationProblem(where, "tokens.critic_suffix_ids", list(ids[-len(pinned):]), list(pinned),
                                "the AR tokenizer or template differs from the one the AR was trained with")


def validate_pair(av: Path, ar: Path, target: Optional[Path] = None, layer: Optional[int] = None) -> ValidationReport:
    rep = ValidationReport()
    av, ar = Path(av), Path(ar)
    av_where, ar_where = str(av / SIDECAR_NAME), str(ar / SIDECAR_NAME)

    av_sc = rep.run("AV sidecar parses", lambda: read_sidecar(av))
    ar_sc = rep.run("AR sidecar parses", lambda: read_sidecar(ar))
    av_cfg = rep.run("AV config.json", lambda: _config(av))
    ar_cfg = rep.run("AR config.json", lambda: _config(ar))
    rep.run("AV weight files whole", lambda: _weights(av))
    rep.run("AR weight files whole", lambda: _weights(ar))

    if av_sc is not None:
        def role_av():
            if av_sc.role != "av":
                raise ValidationProblem(av_where, "role", av_sc.role, "av (or actor)", "swap --av and --ar?")
        rep.run("AV role", role_av)
        rep.run("AV injection_scale", lambda: _check_scale(av_sc, "injection_scale", av_where))
        if av_cfg is not None:
            rep.run("AV d_model matches config", lambda: _check_d_model(av_sc, av_cfg, av_where))
        rep.run("AV marker and canonical prompt", lambda: check_av_prompt(load_tokenizer(av), av_sc, av_where))
    if ar_sc is not None:
        def role_ar():
            if ar_sc.role != "ar":
                raise ValidationProblem(ar_where, "role", ar_sc.role, "ar (or critic)", "swap --av and --ar?")
        rep.run("AR role", role_ar)
        rep.run("AR mse_scale", lambda: _check_scale(ar_sc, "mse_scale", ar_where))
        if ar_cfg is not None:
            rep.run("AR d_model matches config", lambda: _check_d_model(ar_sc, ar_cfg, ar_where))
            want = layer if layer is not None else (av_sc.layer if av_sc is not None else None)
            rep.run("AR has K+1 blocks", lambda: ar_layer(ar_sc, ar_cfg, ar_where, want))
            rep.run("AR value head", lambda: check_value_head(ar, arch.d_model_of(ar_cfg)))
        rep.run("AR prompt suffix ids", lambda: _check_ar_suffix(ar_sc, ar, ar_where))
    if av_sc is not None and ar_sc is not None:
        def same_d():
            if av_sc.d_model != ar_sc.d_model:
                raise ValidationProblem(ar_where, "d_model", ar_sc.d_model, f"{av_sc.d_model} (the AV's)",
                                        "AV and AR come from different pairs")
        rep.run("AV and AR d_model agree", same_d)
        def same_layer():
            la, lr = av_sc.layer, ar_sc.layer
            if la is not None and lr is not None and la != lr:
                raise ValidationProblem(av_where, "extraction_layer_index", la, f"{lr} (the AR's)",
                                        "AV and AR come from different pairs")
        rep.run("AV and AR layer agree", same_layer)
    if target is not None:
        t_cfg = rep.run("target config.json", lambda: _config(Path(target)))
        rep.run("target weight files whole", lambda: _weights(Path(target)))
        if t_cfg is not None and (av_sc or ar_sc) is not None:
            sc = av_sc or ar_sc
            rep.run("target d_model matches pair", lambda: _check_d_model(sc, t_cfg, str(Path(target) / "config.json")))
            k = layer if layer is not None else (ar_sc.layer if ar_sc is not None else None)
            def layer_in_range():
                n = arch.n_layers_of(t_cfg)
                if k is not None and not 0 <= k < n:
                    raise ValidationProblem(str(Path(target) / "config.json"), "num_hidden_layers", n,
                                            f"> {k} (the pair's layer)", "use the pair's own target model")
            rep.run("target has block K", layer_in_range)
    return rep
