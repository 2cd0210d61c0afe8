"""Contrast directions (nlalab; the seed's open question): directions beyond the AV's training mix — the
difference of the mean activations of two prompt sets (e.g. positive vs negative valence, true vs false
statements, ``--directions``) — injected and scored like the category directions, with negations, a
cross-axis pair and the chance rate of each test."""

from __future__ import annotations

from typing import Optional

import torch

from nlalab.format import Table, fmt_num
from nlalab.study.controls.base import GenJob, StudyContext, register
from nlalab.study.controls.directions import Directions

KEY_BASE = 5_000_000


def _sets(ctx: StudyContext):
    from nlalab.study.contrast import load_contrast_sets

    if not ctx.cfg.directions:
        return None
    st = ctx.state.setdefault("contrast_directions", {})
    if "sets" not in st:
        st["sets"] = load_contrast_sets(ctx.cfg.directions)
    return st["sets"]


@register
class ContrastDirections(Directions):
    name = "contrast_directions"
    title = "Contrast directions beyond the training mix (nlalab)"
    help = "directions between two prompt sets (--directions valence_v1,factuality_v1 or FILE), scored by lexicon"
    writes_rows = True
    heatmap = "contrast_heatmap"

    def prompts(self, ctx: StudyContext) -> list[str]:
        cs = _sets(ctx)
        if cs is None:
            return []
        from nlalab.study.contrast import contrast_items

        items = contrast_items(cs)
        ctx.state[self.name]["items"] = items
        return [p for _, _, p in items]

    def generation(self, ctx: StudyContext) -> list[GenJob]:
        cs = _sets(ctx)
        if cs is None or self.name not in ctx.extra_acts:
            return []
        from nlalab.study.contrast import contrast_directions

        acts = ctx.extra_acts[self.name]
        items = ctx.state[self.name]["items"]
        by_set = {s: acts[[i for i, (_, si, _) in enumerate(items) if si == s]] for s in cs.sets}
        dirs = contrast_directions(by_set, cs.contrasts)
        ctx.state[self.name]["directions"] = dirs
        return [GenJob(self.name, torch.stack([d["vector"] for d in dirs]), ctx.seed, KEY_BASE)]

    def analyze(self, ctx: StudyContext) -> Optional[dict]:
        from nlalab.study.analysis import directions_section
        from nlalab.study.contrast import chance_rates

        cs = _sets(ctx)
        rows = self.rows(ctx)
        if cs is None or not rows:
            return None
        sec = directions_section(rows, categories=cs.categories, lexicon=cs.lexicon)
        chance = chance_rates(len(cs.lexicon))
        for key, kind in (("alignment", "self"), ("negation_symmetry", "neg"), ("cross", "cross")):
            if sec.get(key) is not None:
                sec[key].setdefault("chance", chance[kind])
        sec["sets"] = {s: len(p) for s, p in cs.sets.items()}
        sec["contrasts"] = [c.name for c in cs.contrasts]
        sec["sources"] = list(cs.sources)
        return sec

    def tables(self, section: dict, results: dict) -> list[Table]:
        out = super().tables(section, {**results, "categories": list(section.get("lexicon_categories") or [])})
        out.append(Table("Contrast sets", ["set", "prompts"], [[s, str(n)] for s, n in (section.get("sets") or {}).items()],
                         [f"Contrasts: {', '.join(section.get('contrasts') or [])}; from {', '.join(section.get('sources') or [])}."],
                         key="contrast_sets"))
        return out

    def summary(self, section: dict, results: dict) -> list[str]:
        def kn(key):
            b = section.get(key) or {}
            return f"{b.get('text', 'n/a')} (chance {fmt_num(b.get('chance'), 2)})"

        return [f"Contrast directions: alignment {kn('alignment')}, negation {kn('negation_symmetry')}, "
                f"cross {kn('cross')}"]

    def figures(self, section, results, plots_dir, run=None):
        return super().figures(section, {**results, "categories": list(section.get("lexicon_categories") or [])},
                               plots_dir, run)

    def compare_rows(self, runs: list, row) -> list[dict]:
        rows = super().compare_rows(runs, row)
        for r in rows:
            r["key"] = r["key"].replace("directions.", "contrast.")
            r["label"] = r["label"].replace("Direction-injection", "Contrast-direction")
        return rows
