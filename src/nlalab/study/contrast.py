"""Contrast directions: axes beyond the AV's training mix (emotional valence, factuality, ...).

The seed's direction-injection categories line up with what the AV was trained to describe; it asks
whether orthogonal axes verbalize too. A contrast file names pairs of prompt sets (positive vs
negative valence, true vs false statements) written as twins that differ only along the axis. The
direction of a contrast is the difference of the two sets' mean raw activations, and it gets the
same controls as category directions (``nlalab.study.directions``), in the same dict shape:

- ``{plus}_minus_{minus}`` (kind ``self``, category ``plus``): ``mean(plus) - mean(minus)``;
- ``NEG_{plus}_minus_{minus}`` (kind ``neg``, category ``plus``): its negation;
- with two or more contrasts, cross-axis directions between the first two axes' ``plus`` sets:
  ``{a}_minus_{b}`` (kind ``cross``, category ``a``) and ``{b}_minus_{a}`` (kind ``cross``, category ``b``).

A contrast file also carries a keyword lexicon per set (same shape as ``nlalab/data/lexicons``), so
the direction analysis can call a verbalization "positive" or "false". Shipped files:
``valence_v1`` and ``factuality_v1`` (``nlalab/data/directions``), written for this project.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch

from nlalab.errors import UsageError

__all__ = ["Contrast", "ContrastSets", "SHIPPED", "load_contrast_sets", "contrast_directions", "contrast_items",
           "chance_rates"]

SHIPPED = ("valence_v1", "factuality_v1")
KIND = "nlalab_contrast_sets"
MIN_PROMPTS = 2
_SHAPE = ('Fix: write {"kind": "nlalab_contrast_sets", "version": 1, "contrasts": [{"name": ..., "plus": SET, '
          '"minus": SET}], "sets": {SET: [prompt, ...]}, "lexicon": {"categories": {SET: [word, ...]}}}.')


@dataclass(frozen=True)
class Contrast:
    name: str
    plus: str
    minus: str


@dataclass
class ContrastSets:
    """One or more contrast files merged: the sets' prompts, the contrasts, and a lexicon per set."""

    name: str
    sets: dict[str, list[str]]
    contrasts: list[Contrast]
    lexicon: dict[str, list[str]] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        return list(self.sets)


def _read(ref: Union[str, Path]) -> tuple[dict, str]:
    if isinstance(ref, str) and ref in SHIPPED and not Path(ref).exists():
        text = resources.files("nlalab").joinpath("data", "directions", f"{ref}.json").read_text(encoding="utf-8")
        return json.loads(text), f"shipped contrast set {ref!r}"
    p = Path(ref)
    if not p.is_file():
        raise UsageError(f"--directions {ref}: no such file. Fix: check the path, or name a shipped set "
                         f"({', '.join(SHIPPED)}).")
    try:
        return json.loads(p.read_text(encoding="utf-8")), str(p)
    except json.JSONDecodeError as e:
        raise UsageError(f"{p}: not valid JSON (line {e.lineno}: {e.msg}). {_SHAPE}") from None


def _parse(data: object, src: str) -> ContrastSets:
    from nlalab.scorers.keyword import check_lexicon

    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise UsageError(f"{src}: not a contrast-set file (kind must be {KIND!r}). {_SHAPE}")
    sets = data.get("sets")
    if not isinstance(sets, dict) or len(sets) < 2:
        raise UsageError(f"{src}: 'sets' must map at least two set names to prompt lists. {_SHAPE}")
    clean: dict[str, list[str]] = {}
    for name, prompts in sets.items():
        if not isinstance(prompts, list) or not all(isinstance(x, str) and x.strip() for x in prompts):
            raise UsageError(f"{src}: set {name!r} must be a list of non-empty prompt strings. {_SHAPE}")
        if len(prompts) < MIN_PROMPTS:
            raise UsageError(f"{src}: set {name!r} has {len(prompts)} prompt(s); a mean needs at least {MIN_PROMPTS}. "
                             "Fix: add prompts.")
        clean[name] = list(prompts)
    raw_c = data.get("contrasts")
    if not isinstance(raw_c, list) or not raw_c:
        raise UsageError(f"{src}: 'contrasts' must be a non-empty list. {_SHAPE}")
    contrasts = []
    for i, c in enumerate(raw_c):
        if not isinstance(c, dict) or not all(isinstance(c.get(k), str) for k in ("name", "plus", "minus")):
            raise UsageError(f"{src}: contrasts[{i}] needs string fields name, plus and minus. {_SHAPE}")
        for side in ("plus", "minus"):
            if c[side] not in clean:
                raise UsageError(f"{src}: contrast {c['name']!r}: {side} set {c[side]!r} is not in 'sets' "
                                 f"({', '.join(clean)}). Fix: name one of them.")
        if c["plus"] == c["minus"]:
            raise UsageError(f"{src}: contrast {c['name']!r} compares set {c['plus']!r} with itself. Fix: name two sets.")
        contrasts.append(Contrast(c["name"], c["plus"], c["minus"]))
    lexicon: dict[str, list[str]] = {}
    if data.get("lexicon") is not None:
        try:
            lexicon = check_lexicon(data["lexicon"], f"{src} lexicon", False)
        except Exception as e:  # keyword's loader raises NLALabError: a bad input file here is a usage error
            raise UsageError(str(e).splitlines()[0]) from None
        unknown = sorted(set(lexicon) - set(clean))
        if unknown:
            raise UsageError(f"{src}: lexicon categories {unknown} are not sets ({', '.join(clean)}). "
                             "Fix: key the lexicon by set name.")
    return ContrastSets(name=str(data.get("name") or Path(src).stem), sets=clean, contrasts=contrasts,
                        lexicon=lexicon, sources=[src])


def load_contrast_sets(refs: Union[str, Path, Sequence[Union[str, Path]]]) -> ContrastSets:
    """One file or shipped name, or several merged (set and contrast names must not collide)."""
    refs = [refs] if isinstance(refs, (str, Path)) else list(refs)
    if not refs:
        raise UsageError(f"--directions: no contrast file given. Fix: pass a file or one of {', '.join(SHIPPED)}.")
    merged: Optional[ContrastSets] = None
    for ref in refs:
        cs = _parse(*_read(ref))
        if merged is None:
            merged = cs
            continue
        clash = sorted(set(cs.sets) & set(merged.sets))
        if clash:
            raise UsageError(f"{cs.sources[0]}: set names {clash} also appear in {', '.join(merged.sources)}. "
                             "Fix: rename them in one file.")
        cnames = {c.name for c in merged.contrasts}
        dup = sorted(c.name for c in cs.contrasts if c.name in cnames)
        if dup:
            raise UsageError(f"{cs.sources[0]}: contrast names {dup} are used twice. Fix: rename them.")
        merged.sets.update(cs.sets)
        merged.contrasts.extend(cs.contrasts)
        merged.lexicon.update(cs.lexicon)
        merged.sources.extend(cs.sources)
        merged.name = f"{merged.name}+{cs.name}"
    return merged


def contrast_items(cs: ContrastSets) -> list[tuple[str, str, str]]:
    """``(item_id, set_name, prompt)`` for every prompt, ids ``{set}/{i:02d}``, to capture like corpus items."""
    return [(f"{s}/{i:02d}", s, p) for s, prompts in cs.sets.items() for i, p in enumerate(prompts)]


def _mean(acts, name: str) -> torch.Tensor:
    try:
        a = torch.as_tensor(acts)
    except Exception as exc:
        raise ValueError(f"acts_by_set[{name!r}]: cannot convert to a tensor ({exc})") from exc
    if a.ndim != 2 or a.shape[0] < 1:
        raise ValueError(f"acts_by_set[{name!r}]: expected shape [n >= 1, d]; found {tuple(a.shape)}")
    a = a.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"acts_by_set[{name!r}]: contains NaN or Inf values")
    return a.mean(0)


def contrast_directions(acts_by_set: Mapping[str, object],
                        contrasts: Optional[Sequence[Contrast]] = None) -> list[dict]:
    """``{"name", "kind", "category", "vector"}`` dicts (float32 ``[d]``, computed in float64) as in the
    module doc: the ``self`` directions in contrast order, then the ``neg`` ones, then two ``cross`` ones
    when there are at least two contrasts. ``contrasts`` default: consecutive pairs of the sets in order
    (first vs second, third vs fourth, ...)."""
    names = list(acts_by_set)
    if contrasts is None:
        if len(names) < 2 or len(names) % 2:
            raise ValueError(f"acts_by_set: {len(names)} sets cannot be paired in order; pass contrasts")
        contrasts = [Contrast(f"{names[i]}_vs_{names[i + 1]}", names[i], names[i + 1]) for i in range(0, len(names), 2)]
    if not contrasts:
        raise ValueError("contrasts: empty; need at least one")
    means = {}
    for c in contrasts:
        for s in (c.plus, c.minus):
            if s not in acts_by_set:
                raise ValueError(f"contrast {c.name!r}: no activations for set {s!r}; have {names}")
            if s not in means:
                means[s] = _mean(acts_by_set[s], s)
    dims = {tuple(m.shape) for m in means.values()}
    if len(dims) != 1:
        raise ValueError(f"acts_by_set: sets have different widths {sorted(dims)}")
    out: list[dict] = []
    for c in contrasts:
        out.append({"name": f"{c.plus}_minus_{c.minus}", "kind": "self", "category": c.plus, "contrast": c.name,
                    "vector": (means[c.plus] - means[c.minus]).to(torch.float32)})
    for c in contrasts:
        out.append({"name": f"NEG_{c.plus}_minus_{c.minus}", "kind": "neg", "category": c.plus, "contrast": c.name,
                    "vector": (-(means[c.plus] - means[c.minus])).to(torch.float32)})
    if len(contrasts) >= 2:
        a, b = contrasts[0].plus, contrasts[1].plus
        if a != b:
            axis = f"{contrasts[0].name}x{contrasts[1].name}"
            out.append({"name": f"{a}_minus_{b}", "kind": "cross", "category": a, "contrast": axis,
                        "vector": (means[a] - means[b]).to(torch.float32)})
            out.append({"name": f"{b}_minus_{a}", "kind": "cross", "category": b, "contrast": axis,
                        "vector": (means[b] - means[a]).to(torch.float32)})
    return out


def chance_rates(n_categories: int) -> dict[str, float]:
    """What a verbalizer that names one lexicon category uniformly at random would score: self and cross
    are correct for 1 of ``n`` categories, neg for ``n - 1`` of them (ties, which score as wrong, ignored)."""
    if n_categories < 2:
        raise ValueError(f"n_categories: need at least 2; found {n_categories}")
    n = float(n_categories)
    return {"self": 1 / n, "cross": 1 / n, "neg": (n - 1) / n}


def capture_contrast_directions(model, tokenizer, layer: int, cs: ContrastSets, *, batch_size: int = 8,
                                progress: bool = False) -> tuple[list[dict], "torch.Tensor", list[dict]]:
    """Capture every set's prompts like corpus items (chat-templated, last token, block K) and build the
    contrast directions. Returns ``(directions, acts [n, d], meta rows with item_id and set)``."""
    from nlalab.capture import capture

    items = contrast_items(cs)
    cap = capture(model, tokenizer, [p for _, _, p in items], layer, ids=[i for i, _, _ in items],
                  batch_size=batch_size, progress=progress)
    sets = [s for _, s, _ in items]
    acts_by_set = {s: cap.vectors[[j for j, x in enumerate(sets) if x == s]] for s in cs.sets}
    meta = [{**m, "set": s} for m, s in zip(cap.meta, sets)]
    return contrast_directions(acts_by_set, cs.contrasts), cap.vectors, meta
