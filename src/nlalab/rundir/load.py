"""One loader for a run directory: typed config, results, samples, control and scorer rows.

report/, scorers/ and compare read runs only through :func:`load_run`. A run written before
``schema_version`` existed (schema 0: control sections top-level, the keyword permutation under
``permutation``) is migrated in memory by :func:`migrate`; a run written by a newer nlalab is refused,
because its keys may mean something this version does not know.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from pydantic import BaseModel, ValidationError

from nlalab.errors import NLALabError
from nlalab.rundir import io
from nlalab.rundir.layout import RunLayout
from nlalab.rundir.schema import SCHEMA_VERSION, ConfigRecord, Results, SampleRow

__all__ = ["Run", "load_run", "load_runs", "migrate", "item_means", "SCHEMA0_CONTROLS"]

# schema 0 name -> schema 1 controls.<name>
SCHEMA0_CONTROLS = {
    "permutation": "recall_permutation",
    "random_gaussian": "random_gaussian",
    "directions": "directions",
    "recon_permutation": "recon_permutation",
    "baselines": "baselines",
    "blind": "blind",
    "prefix": "prefix",
    "grounding": "grounding",
    "seeds": "seeds",
}


def _version(d: dict, path: Union[str, Path]) -> int:
    v = d.get("schema_version", 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise NLALabError(f"{path}: schema_version is {v!r}, expected a whole number >= 0. Fix: rerun the command "
                          "that wrote it.")
    if v > SCHEMA_VERSION:
        raise NLALabError(f"{path}: written with run-directory schema {v}, this nlalab reads up to "
                          f"{SCHEMA_VERSION}. Fix: upgrade nlalab (pip install -U nlalab).")
    return v


def migrate(results: dict) -> dict:
    """A results.json dict in the current schema (a copy; the argument is left as it is).

    Schema 0 -> 1: the control sections move under ``controls`` (``permutation`` becomes
    ``controls.recall_permutation``; a section already under ``controls`` wins over a top-level one), and
    three sections get the wrapper key schema 1 gives them: ``baselines`` -> ``baselines.rungs`` (scored
    rungs only, as schema 1 writes them: the ``untrained_pair`` note goes), ``grounding`` ->
    ``grounding.deltas``, ``prefix`` -> ``prefix.curve``. Schema 0 kept the blind rung only inside the
    baselines; it becomes ``controls.blind.rung`` too (with ``n``, the rows it is over).
    """
    v = _version(results, "results.json")
    out = copy.deepcopy(results)
    if v == 0:
        controls = dict(out.get("controls") or {})
        for old, new in SCHEMA0_CONTROLS.items():
            if old in out:
                sec = out.pop(old)
                controls.setdefault(new, sec)
        bl = controls.get("baselines")
        if isinstance(bl, dict) and "rungs" not in bl:
            # schema 1 has only scored rungs; schema 0's untrained_pair was a note on how to get one
            controls["baselines"] = {"rungs": {k: v for k, v in bl.items() if isinstance(v, dict) and "fve_nrm" in v}}
        for name, key in (("grounding", "deltas"), ("prefix", "curve")):
            sec = controls.get(name)
            if isinstance(sec, dict) and key not in sec:
                controls[name] = {key: sec}
        blind = ((controls.get("baselines") or {}).get("rungs") or {}).get("blind_explanation")
        if isinstance(blind, dict) and controls.get("blind") is None:
            controls["blind"] = {"n": (blind.get("cos") or {}).get("n"), "rung": copy.deepcopy(blind)}
        out["controls"] = controls
        out["schema_version"] = 1
    return out


def _json(path: Path, fix: str) -> dict:
    d = io.read_json(path, fix=fix)
    if not isinstance(d, dict):
        raise NLALabError(f"{path}: expected a JSON object, found {type(d).__name__}. Fix: {fix}.")
    return d


def _typed(model, data: Any, path: Path, fix: str, line: Optional[int] = None):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        at = f" line {line}" if line is not None else ""
        raise NLALabError(f"{path}{at}: {where}: {err['msg']} (found {err.get('input')!r:.60}). "
                          f"Fix: {fix}.") from None


def _num(v: Any) -> Optional[float]:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass
class Run:
    """One run directory, loaded and typed."""

    dir: Path
    name: str
    config: ConfigRecord
    results: Results
    samples: list[SampleRow]
    scores: dict[str, list[dict]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    _control_cache: dict[str, list[dict]] = field(default_factory=dict, repr=False)
    _vectors: Optional[dict] = field(default=None, repr=False)
    _dicts: dict = field(default_factory=dict, repr=False)  # results/config/samples as plain dicts, made once

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.dir)

    # -- rows -------------------------------------------------------------------------------------

    def control_rows(self, name: str) -> list[dict]:
        """Rows of controls/<name>.jsonl ([] when the control wrote none)."""
        if name not in self._control_cache:
            self._control_cache[name] = io.read_jsonl(self.layout.control_rows(name), missing_ok=True)
        return self._control_cache[name]

    def sample_dicts(self) -> list[dict]:
        """samples.jsonl rows as plain dicts, with exactly the keys the file has (scorer columns included)."""
        if "samples" not in self._dicts:
            self._dicts["samples"] = [s.model_dump(exclude_unset=True) for s in self.samples]
        return self._dicts["samples"]

    def samples_df(self):
        """samples.jsonl as a pandas DataFrame, one row per sample."""
        import pandas as pd

        return pd.DataFrame(self.sample_dicts())

    def vectors(self) -> dict:
        """vectors.safetensors (activations, reconstructions, control vectors); read on first use."""
        if self._vectors is None:
            self._vectors = io.load_tensors(self.layout.vectors,
                                            fix=f"rerun `nlalab run --out {self.dir}` to rewrite it")[0]
        return self._vectors

    @property
    def random_rows(self) -> Optional[list[dict]]:
        """controls/random_gaussian.jsonl rows, None when the control did not run (report/'s old field)."""
        return self.control_rows("random_gaussian") if self.layout.control_rows("random_gaussian").is_file() else None

    @property
    def direction_rows(self) -> Optional[list[dict]]:
        """controls/directions.jsonl rows, None when the control did not run (report/'s old field)."""
        return self.control_rows("directions") if self.layout.control_rows("directions").is_file() else None

    def results_dict(self) -> dict:
        """results.json as a plain dict in the current schema (exactly the migrated file's keys)."""
        if "results" not in self._dicts:
            self._dicts["results"] = self.results.model_dump(mode="json", exclude_unset=True)
        return self._dicts["results"]

    def config_dict(self) -> dict:
        """config.json as a plain dict (exactly the file's keys)."""
        if "config" not in self._dicts:
            self._dicts["config"] = self.config.model_dump(mode="json", exclude_unset=True)
        return self._dicts["config"]

    # -- the report's accessors ---------------------------------------------------------------------

    @property
    def corpus(self) -> dict:
        c = self.config.corpus or (self.results.provenance.corpus if self.results.provenance else None)
        return c.model_dump() if c is not None else {}

    @property
    def corpus_sha256(self) -> Optional[str]:
        return self.corpus.get("sha256")

    @property
    def categories(self) -> list[str]:
        return list(self.results.categories or self.corpus.get("categories") or [])

    @property
    def settings(self) -> dict:
        return self.results.settings.model_dump() if self.results.settings is not None else {}

    @property
    def seed(self) -> Optional[int]:
        return self.config.config.get("seed", self.settings.get("seed"))

    @property
    def pair_label(self) -> str:
        pair = self.config.pair
        if pair is not None and pair.name:
            return str(pair.name)
        av = (pair.av.ref if pair is not None and pair.av is not None else None) or self.config.config.get("av")
        if not av:
            return "?"
        parts = Path(str(av)).parts  # a path: its last two parts name it (".../qwen-nla/av" -> "qwen-nla/av")
        return "/".join(parts[-2:]) if len(parts) > 1 else str(av)

    @property
    def layer(self) -> Any:
        return self.config.pair.layer if self.config.pair is not None else None

    @property
    def position(self) -> Optional[str]:
        cap = self.results.capture
        return cap.positions if cap is not None and cap.positions else self.config.config.get("positions")

    def section(self, name: str) -> Optional[dict]:
        """A control's section of results.json as a plain dict (None when the run skipped it)."""
        sec = self.results.controls.get(name)
        return sec.model_dump(mode="json", exclude_unset=True) if isinstance(sec, BaseModel) else sec

    def score_warnings(self) -> list[str]:
        """Added scorers that no longer match the run: a section computed from another samples.jsonl, or a
        scores file whose section is gone (the run was re-analysed after `nlalab score`)."""
        out = []
        secs = self.results.scorers
        digest = None
        for name, sec in secs.items():
            if sec.samples_sha256 is None:
                continue
            if digest is None:
                digest = io.file_sha256(self.layout.samples)
            if sec.samples_sha256 != digest:
                out.append(f"{self.name}: scorer '{name}' in results.json was computed from another samples.jsonl; "
                           f"re-run `nlalab score {self.dir} --scorer {name}`")
        for name in self.scores:
            if name not in secs:
                out.append(f"{self.name}: scores/{name}.jsonl exists but results.json has no scorers.{name} section "
                           f"(re-analysed since?); re-run `nlalab score {self.dir} --scorer {name}`")
        return out

    def info(self) -> dict:
        cfg = self.config.config
        corpus = self.corpus
        r = self.results
        return {
            "name": self.name,
            "dir": str(self.dir),
            "pair": self.pair_label,
            "layer": self.layer,
            "position": self.position,
            "corpus": corpus.get("ref"),
            "corpus_sha256": corpus.get("sha256"),
            "n_items": r.n_items,
            "n_samples": r.n_samples,
            "k": r.k,
            "seed": self.seed,
            "temperature": cfg.get("temperature"),
            "max_new_tokens": cfg.get("max_new_tokens"),
            "n_perm": self.settings.get("n_perm"),
            "n_boot": self.settings.get("n_boot"),
            "b_rv": r.b_rv,
            "b_rv_source": r.b_rv_source,
            "mse_scale": r.mse_scale,
            "scorers": sorted(r.scorers),
            "warnings": list(r.warnings),
        }


def load_run(path: Union[str, Path], name: Optional[str] = None) -> Run:
    """A finished run directory, typed; schema 0 runs are migrated, newer schemas refused."""
    lay = RunLayout(Path(path))
    d = lay.root
    if not d.is_dir():
        raise NLALabError(f"{d}: not a directory. Fix: pass the --out directory of a finished `nlalab run`.")
    finish = f"complete the run with `nlalab run --out {d}`"
    if not lay.results.is_file():
        raise NLALabError(f"{lay.results}: not found; the run is not finished. Fix: {finish}.")
    if not lay.samples.is_file():
        raise NLALabError(f"{lay.samples}: not found. Fix: {finish}.")
    rewrite = f"rerun `nlalab run --out {d}` (finished stages are reused)"
    raw_cfg = _json(lay.config, rewrite) if lay.config.is_file() else {}
    _version(raw_cfg, lay.config)
    raw_res = _json(lay.results, rewrite)
    version = _version(raw_res, lay.results)
    results = _typed(Results, migrate(raw_res), lay.results, rewrite)
    config = _typed(ConfigRecord, raw_cfg, lay.config, rewrite)
    samples = [_typed(SampleRow, r, lay.samples, rewrite, line=i)
               for i, r in enumerate(io.read_jsonl(lay.samples), start=1)]
    scores = {}
    if lay.scores.is_dir():
        for p in sorted(lay.scores.glob("*.jsonl")):
            scores[p.stem] = io.read_jsonl(p)
    return Run(dir=d, name=name or d.name, config=config, results=results, samples=samples, scores=scores,
               schema_version=version)


def _unique_names(names: list[str]) -> list[str]:
    """Repeated names get '#1', '#2', ... so every run has its own label."""
    out, seen = [], {}
    for n in names:
        if names.count(n) > 1:
            seen[n] = seen.get(n, 0) + 1
            out.append(f"{n}#{seen[n]}")
        else:
            out.append(n)
    return out


def load_runs(paths: Iterable[Union[str, Path]], names: Optional[list[str]] = None) -> list[Run]:
    """Several runs, each named by ``names``, else by its pair name, else by its directory name."""
    dirs = [Path(p) for p in paths]
    if not dirs:
        raise NLALabError("no run directories given. Fix: pass at least one finished `nlalab run` directory.")
    if names is not None and len(names) != len(dirs):
        raise NLALabError(f"got {len(names)} names for {len(dirs)} run directories. Fix: one name per run (or none).")
    runs = [load_run(d) for d in dirs]
    if names is None:
        labels = [str(r.config.pair.name) if (r.config.pair is not None and r.config.pair.name) else r.dir.name
                  for r in runs]
    else:
        labels = [str(n) for n in names]
    for r, n in zip(runs, _unique_names(labels)):
        r.name = n
    return runs


def item_means(rows: Iterable[Any], metric: str) -> dict[str, float]:
    """item_id -> mean of the item's defined (finite) values of ``metric``; items without any are absent.
    Rows may be dicts or :class:`SampleRow`."""
    acc: dict[str, list[float]] = {}
    for r in rows:
        get = r.get if isinstance(r, dict) else (lambda k, _r=r: getattr(_r, k, None))
        v = _num(get(metric))
        if v is not None:
            acc.setdefault(str(get("item_id")), []).append(v)
    return {k: sum(v) / len(v) for k, v in acc.items()}
