"""Read a finished ``nlalab run`` directory (config.json, results.json, samples.jsonl, controls/*.jsonl, scores/)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from nlalab.errors import NLALabError
from nlalab.rundir.io import read_jsonl

__all__ = ["Run", "load_run", "load_runs", "item_means", "read_jsonl"]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise NLALabError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}). Fix: re-run `nlalab run`.") from None


@dataclass
class Run:
    """One run directory, loaded."""

    dir: Path
    name: str
    config: dict
    results: dict
    samples: list[dict]
    random_rows: Optional[list[dict]] = None
    direction_rows: Optional[list[dict]] = None
    scores: dict[str, list[dict]] = field(default_factory=dict)

    def section(self, name: str) -> Optional[dict]:
        """A control's section of results.json (None when the run skipped it)."""
        return (self.results.get("controls") or {}).get(name)

    def control_rows(self, name: str) -> list[dict]:
        p = self.dir / "controls" / f"{name}.jsonl"
        return read_jsonl(p) if p.is_file() else []

    def sample_dicts(self) -> list[dict]:
        return self.samples

    @property
    def corpus(self) -> dict:
        return dict(self.config.get("corpus") or (self.results.get("provenance") or {}).get("corpus") or {})

    @property
    def corpus_sha256(self) -> Optional[str]:
        return self.corpus.get("sha256")

    @property
    def categories(self) -> list[str]:
        return list(self.results.get("categories") or self.corpus.get("categories") or [])

    @property
    def settings(self) -> dict:
        return dict(self.results.get("settings") or {})

    @property
    def seed(self) -> Optional[int]:
        cfg = self.config.get("config") or {}
        return cfg.get("seed", self.settings.get("seed"))

    @property
    def pair_label(self) -> str:
        pair = self.config.get("pair") or {}
        if pair.get("name"):
            return str(pair["name"])
        av = (pair.get("av") or {}).get("ref") or (self.config.get("config") or {}).get("av")
        if not av:
            return "?"
        parts = Path(str(av)).parts  # a path: its last two parts name it (".../qwen-nla/av" -> "qwen-nla/av")
        return "/".join(parts[-2:]) if len(parts) > 1 else str(av)

    @property
    def layer(self) -> Any:
        return (self.config.get("pair") or {}).get("layer")

    def score_warnings(self) -> list[str]:
        """Added scorers that no longer match the run: a stale results.json section, or a scores file whose
        section is gone (the run was re-analysed after `nlalab score`)."""
        from nlalab.scorers.rescore import scorer_is_stale

        out = []
        secs = self.results.get("scorers") or {}
        for name in secs:
            if scorer_is_stale(self.dir, name):
                out.append(f"{self.name}: scorer '{name}' in results.json was computed from another samples.jsonl; "
                           f"re-run `nlalab score {self.dir} --scorer {name}`")
        for name in self.scores:
            if name not in secs:
                out.append(f"{self.name}: scores/{name}.jsonl exists but results.json has no scorers.{name} section "
                           f"(re-analysed since?); re-run `nlalab score {self.dir} --scorer {name}`")
        return out

    def info(self) -> dict:
        cfg = self.config.get("config") or {}
        corpus = self.corpus
        return {
            "name": self.name,
            "dir": str(self.dir),
            "pair": self.pair_label,
            "layer": self.layer,
            "position": (self.results.get("capture") or {}).get("positions", cfg.get("positions")),
            "corpus": corpus.get("ref"),
            "corpus_sha256": corpus.get("sha256"),
            "n_items": self.results.get("n_items"),
            "n_samples": self.results.get("n_samples"),
            "k": self.results.get("k"),
            "seed": self.seed,
            "temperature": cfg.get("temperature"),
            "max_new_tokens": cfg.get("max_new_tokens"),
            "n_perm": self.settings.get("n_perm"),
            "n_boot": self.settings.get("n_boot"),
            "b_rv": self.results.get("b_rv"),
            "b_rv_source": self.results.get("b_rv_source"),
            "mse_scale": self.results.get("mse_scale"),
            "scorers": sorted((self.results.get("scorers") or {}).keys()),
            "warnings": list(self.results.get("warnings") or []),
        }


def load_run(run_dir: Union[str, Path], name: Optional[str] = None) -> Run:
    d = Path(run_dir)
    if not d.is_dir():
        raise NLALabError(f"{d}: not a directory. Fix: pass the --out directory of a finished `nlalab run`.")
    res = d / "results.json"
    if not res.is_file():
        raise NLALabError(f"{res}: not found; the run is not finished. Fix: complete it with `nlalab run --out {d}`.")
    samples_path = d / "samples.jsonl"
    if not samples_path.is_file():
        raise NLALabError(f"{samples_path}: not found. Fix: complete the run with `nlalab run --out {d}`.")
    config = _read_json(d / "config.json") if (d / "config.json").is_file() else {}
    results = migrate(_read_json(res))
    rg = d / "controls" / "random_gaussian.jsonl"
    dr = d / "controls" / "directions.jsonl"
    scores = {}
    if (d / "scores").is_dir():
        for p in sorted((d / "scores").glob("*.jsonl")):
            scores[p.stem] = read_jsonl(p)
    return Run(dir=d, name=name or d.name, config=config, results=results, samples=read_jsonl(samples_path),
               random_rows=read_jsonl(rg) if rg.is_file() else None,
               direction_rows=read_jsonl(dr) if dr.is_file() else None, scores=scores)


OLD_SECTIONS = {"permutation": "recall_permutation", "random_gaussian": "random_gaussian", "directions": "directions",
                "recon_permutation": "recon_permutation", "baselines": "baselines", "prefix": "prefix",
                "grounding": "grounding", "seeds": "seeds"}


def migrate(results: dict) -> dict:
    """A schema-0 results.json (control sections top-level) in the schema-1 layout, in memory."""
    if results.get("schema_version") or "controls" in results:
        return results
    out = {k: v for k, v in results.items() if k not in OLD_SECTIONS}
    ctl = {new: results.get(old) for old, new in OLD_SECTIONS.items()}
    if ctl.get("baselines"):
        b = {k: v for k, v in ctl["baselines"].items() if isinstance(v, dict) and "fve_nrm" in v}
        ctl["baselines"] = {"rungs": b}
        if "blind_explanation" in b:
            ctl["blind"] = {"rung": b["blind_explanation"]}
    if ctl.get("prefix"):
        ctl["prefix"] = {"curve": ctl["prefix"]}
    if ctl.get("grounding"):
        ctl["grounding"] = {"deltas": ctl["grounding"]}
    out["controls"] = ctl
    out["schema_version"] = 0
    return out


def _unique_names(names: list[str]) -> list[str]:
    out, seen = [], {}
    for n in names:
        if names.count(n) > 1:
            seen[n] = seen.get(n, 0) + 1
            out.append(f"{n}#{seen[n]}")
        else:
            out.append(n)
    return out


def load_runs(run_dirs: Iterable[Union[str, Path]], names: Optional[list[str]] = None) -> list[Run]:
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise NLALabError("no run directories given. Fix: pass at least one finished `nlalab run` directory.")
    if names is not None and len(names) != len(dirs):
        raise NLALabError(f"got {len(names)} names for {len(dirs)} run directories. Fix: one name per run (or none).")
    runs = [load_run(d) for d in dirs]
    if names is None:
        labels = []
        for r in runs:
            pair_name = (r.config.get("pair") or {}).get("name")
            labels.append(str(pair_name) if pair_name else r.dir.name)
    else:
        labels = [str(n) for n in names]
    for r, n in zip(runs, _unique_names(labels)):
        r.name = n
    return runs


def _num(v: Any) -> Optional[float]:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def item_means(rows: list[dict], metric: str) -> dict[str, float]:
    """item_id -> mean of the item's defined values of ``metric`` (items without any are absent)."""
    acc: dict[str, list[float]] = {}
    for r in rows:
        v = _num(r.get(metric))
        if v is not None:
            acc.setdefault(str(r["item_id"]), []).append(v)
    return {k: sum(v) / len(v) for k, v in acc.items()}
