"""One round trip for a handful of prompts or arbitrary vectors: capture -> verbalize -> reconstruct -> score.

Models are loaded one at a time and released before the next, so a pair as large as one GPU runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from nlalab import metrics
from nlalab.capture import capture
from nlalab.capture_reply import (ROLE_PROMPT, ROLE_REPLY, block_outputs, capture_with_reply,  # noqa: F401
                                  conversation_ids, greedy_reply)
from nlalab.errors import NLALabError
from nlalab.pairs.load import LoadOptions, load_ar, load_av, load_target, release
from nlalab.pairs.resolve import PairDirs
from nlalab.reconstruct import reconstruct
from nlalab.verbalize import GenerationSettings, verbalize

MIN_BRV_SET = 8  # below this, a B_rv from the vectors themselves is too noisy to print


@dataclass
class ExplainResult:
    rows: list[dict]
    vectors: torch.Tensor
    reconstructions: torch.Tensor
    b_rv: Optional[float]
    b_rv_source: str
    brv: Optional[dict] = None  # nlalab.study.brv.BrvChoice.to_dict(): used, own and training B_rv with sources


def explain(
    dirs: PairDirs,
    *,
    prompts: Optional[Sequence[str]] = None,
    vectors: Optional[torch.Tensor] = None,
    labels: Optional[Sequence[str]] = None,
    k: int = 1,
    settings: GenerationSettings = GenerationSettings(),
    opts: LoadOptions = LoadOptions(),
    b_rv=None,
    progress: bool = False,
) -> ExplainResult:
    """``b_rv``: None (the pair's training B_rv if it has one, else these vectors' own if >= 8), or a
    ``--brv`` choice as in ``nlalab.study.brv.resolve_brv`` (number, ``own``, ``registry``, FILE)."""
    if (prompts is None) == (vectors is None):
        raise NLALabError("Give either prompts or vectors to explain.")
    if prompts is not None:
        if not prompts:
            raise NLALabError("No prompts given.")
        if dirs.target is None:
            raise NLALabError("Explaining prompts needs the target model: pass --target (or a registered --pair).")
        target = load_target(dirs.target, dirs.layer, opts)
        cap = capture(target.model, target.tokenizer, list(prompts), dirs.layer, progress=progress)
        release(target)
        vectors = cap.vectors
        labels = list(prompts)
    assert vectors is not None
    labels = list(labels) if labels is not None else [f"vector {i}" for i in range(vectors.shape[0])]
    av = load_av(dirs.av, opts)
    verbs = verbalize(av, vectors, k=k, settings=settings, progress=progress)
    release(av)
    ar = load_ar(dirs.ar, opts, layer=dirs.layer)
    recon = reconstruct(ar, [v.explanation for v in verbs], progress=progress)
    mse_scale = ar.mse_scale
    release(ar)
    gold = vectors[[v.vector_index for v in verbs]]
    from nlalab.study.brv import resolve_brv, training_brv

    train = training_brv(dirs.spec.name) if dirs.spec is not None else None
    choice = None
    if b_rv is not None or train is not None or vectors.shape[0] >= MIN_BRV_SET:
        # a registered pair divides by its training-set B_rv, as the release's figures do
        choice = resolve_brv(b_rv, train, vectors, mse_scale, own_label="these")
        b_rv, source = choice.value, choice.source
    else:
        source = "none (fewer than 8 vectors; pass --brv)"
    scores = metrics.score_pairs(recon, gold, mse_scale, b_rv=b_rv)
    rows = []
    for i, v in enumerate(verbs):
        row = {"label": labels[v.vector_index], **v.to_dict()}
        row.update({key: float(val[i]) for key, val in scores.items()})
        rows.append(row)
    return ExplainResult(rows=rows, vectors=vectors, reconstructions=recon, b_rv=b_rv, b_rv_source=source,
                         brv=choice.to_dict() if choice is not None else None)


# ------------------------------------------------------------------------------------ conversations
#
# The release's worked examples (kitft examples/*.txt) explain every token of one chat: the prompt and
# the target's own greedy reply, one greedy AV decode per token scored by the AR with the *training*
# B_rv, a summary that leaves out the system/scaffold positions (under-sampled in training: min
# position 50), and k temperature-1 decodes at the last non-special position to show the variance.



def load_conversation(path) -> list[dict]:
    """A chat as ``[{"role", "content"}, ...]`` from JSON (a list, or ``{"messages": [...]}``); a non-JSON
    text file is one user message. The chat must not end with an assistant turn: the reply is generated."""
    import json
    from pathlib import Path

    from nlalab.errors import UsageError

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--conversation {p}: no such file. Fix: pass a JSON list of {{role, content}} messages "
                         "or a text file holding one user message.")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        if p.suffix.lower() == ".json":
            raise UsageError(f"--conversation {p}: not valid JSON. Fix: write a list of {{role, content}} messages.") from None
        data = [{"role": "user", "content": text.strip()}]
    return check_conversation(data, str(p))


def check_conversation(data, where: str = "conversation") -> list[dict]:
    from nlalab.errors import UsageError

    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    if isinstance(data, str):
        data = [{"role": "user", "content": data}]
    if not isinstance(data, list) or not data:
        raise UsageError(f"{where}: expected a non-empty list of {{role, content}} messages.")
    out = []
    for i, m in enumerate(data):
        if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) and m["content"].strip()):
            raise UsageError(f"{where}: message {i} needs role system|user|assistant and non-empty string content.")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] == "assistant":
        raise UsageError(f"{where}: the last message is the assistant's; the reply is generated by the target. "
                         "Fix: end with a user message.")
    return out


def content_start(tokenizer, messages: list[dict]) -> int:
    """First position of the first non-system message's own text: what comes before is the template's
    scaffold (default system prompt, date header, role header) that the release's summary leaves out.
    Found as the common prefix with the same chat whose first non-system content is replaced."""
    i = next(j for j, m in enumerate(messages) if m["role"] != "system")
    other = [dict(m) for m in messages]
    other[i]["content"] = "\u2063#" + other[i]["content"][::-1]
    a, b = conversation_ids(tokenizer, messages), conversation_ids(tokenizer, other)
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@dataclass
class ConversationResult:
    header: dict
    tokens: list[dict]
    summary: dict
    variance: Optional[dict]
    warnings: list[str]

    def to_dict(self) -> dict:
        return {"header": self.header, "tokens": self.tokens, "summary": self.summary, "variance": self.variance,
                "warnings": self.warnings}


def _stats(vals: list[float]) -> dict:
    import statistics

    if not vals:
        return {"n": 0}
    return {"n": len(vals), "mean": statistics.fmean(vals), "median": statistics.median(vals),
            "min": min(vals), "max": max(vals)}


def summarize_tokens(rows: list[dict], start: int, score_incomplete: bool = False) -> dict:
    """The release's summary over positions >= ``start`` (scaffold left out), complete decodes only unless
    ``score_incomplete``; per role too. fve_nrm counts: > 0.5, > 0.8, < 0 (worse than predict-the-mean)."""
    from nlalab.study.incomplete import headline_mask

    mask = headline_mask(rows, score_incomplete)
    sel = [r for r, m in zip(rows, mask) if m and r["position"] >= start]

    def block(rs):
        f = [r["fve_nrm"] for r in rs if r.get("fve_nrm") is not None]
        return {"n": len(rs), "mse_nrm": _stats([r["mse_nrm"] for r in rs]), "cos": _stats([r["cos"] for r in rs]),
                "fve_nrm": _stats(f), "fve_gt_0.5": sum(v > 0.5 for v in f), "fve_gt_0.8": sum(v > 0.8 for v in f),
                "fve_lt_0": sum(v < 0 for v in f)}

    return {"from_position": start, "score_incomplete": score_incomplete,
            "excluded_incomplete": sum(1 for r, m in zip(rows, mask) if not m and r["position"] >= start),
            "all": block(sel), "all_rows": block([r for r in rows if r["position"] >= start]), "by_role": {role: block([r for r in sel if r["role"] == role])
                                            for role in (ROLE_PROMPT, ROLE_REPLY)}}


def explain_conversation(
    dirs: PairDirs,
    conversation,
    *,
    reply_tokens: int = 64,
    k: int = 4,
    variance_temperature: float = 1.0,
    settings: GenerationSettings = GenerationSettings(greedy=True),
    opts: LoadOptions = LoadOptions(),
    brv=None,
    score_incomplete: bool = False,
    progress: bool = False,
    models: Optional[dict] = None,
) -> ConversationResult:
    """Every token of a chat, prompt and the target's greedy reply, explained and scored (module notes).

    ``brv``: as ``nlalab.study.brv.resolve_brv`` (None: the pair's training B_rv if registered, else the
    variance of this chat's own vectors). ``models``: already-loaded ``{"target", "av", "ar"}`` (tests);
    otherwise each is loaded in turn and released before the next.
    """
    from dataclasses import replace

    from nlalab.errors import UsageError
    from nlalab.study.brv import resolve_brv

    messages = check_conversation(conversation)
    if reply_tokens < 0 or k < 0:
        raise UsageError(f"--reply-tokens and --k must be >= 0 (got {reply_tokens}, {k}).")
    if dirs.target is None and not (models and "target" in models):
        raise UsageError("Explaining a conversation needs the target model: pass --target (or a registered --pair).")
    models = models or {}
    target = models.get("target") or load_target(dirs.target, dirs.layer, opts, truncate=False)
    tok = target.tokenizer
    prompt_ids = conversation_ids(tok, messages)
    start = content_start(tok, messages)
    reply = greedy_reply(target.model, tok, prompt_ids, reply_tokens) if reply_tokens else []
    ids = prompt_ids + reply
    vectors = block_outputs(target.model, dirs.layer, ids)
    if "target" not in models:
        release(target)
    special = set(int(i) for i in getattr(tok, "all_special_ids", []))
    last_plain = max((i for i, t in enumerate(ids) if t not in special), default=len(ids) - 1)

    av = models.get("av") or load_av(dirs.av, opts)
    greedy = verbalize(av, vectors, k=1, settings=replace(settings, greedy=True), progress=progress)
    samples = []
    if k:
        samp = replace(settings, greedy=False, temperature=variance_temperature)
        samples = verbalize(av, vectors[[last_plain]], k=k, settings=samp, vector_keys=[last_plain])
    injection_scale = av.injection_scale
    if "av" not in models:
        release(av)
    ar = models.get("ar") or load_ar(dirs.ar, opts, layer=dirs.layer)
    texts = [v.explanation for v in greedy] + [v.explanation for v in samples]
    recon = reconstruct(ar, texts, progress=progress)
    mse_scale = ar.mse_scale
    if "ar" not in models:
        release(ar)

    choice = resolve_brv(brv, dirs.spec.name if dirs.spec is not None else None, vectors, mse_scale,
                         own_label="this conversation's")
    gold = torch.cat([vectors, vectors[[last_plain] * len(samples)]]) if samples else vectors
    sc = metrics.score_pairs(recon, gold, mse_scale, b_rv=choice.value)
    rows = []
    for i, v in enumerate(greedy):
        rows.append({
            "position": i, "role": ROLE_PROMPT if i < len(prompt_ids) else ROLE_REPLY, "token_id": ids[i],
            "token": tok.decode([ids[i]]), "scaffold": i < start, "special": ids[i] in special,
            "norm": float(vectors[i].norm()), "explanation": v.explanation,
            "mse_nrm": float(sc["mse_nrm"][i]), "cos": float(sc["cos"][i]), "fve_nrm": float(sc["fve_nrm"][i]),
            "missing_close_tag": v.missing_close_tag, "truncated": v.truncated, "empty": v.empty,
            "cjk_smell": v.cjk_smell,
        })
    variance = None
    if samples:
        n = len(greedy)
        srows = [{"sample": s.sample, "explanation": s.explanation, "mse_nrm": float(sc["mse_nrm"][n + j]),
                  "cos": float(sc["cos"][n + j]), "fve_nrm": float(sc["fve_nrm"][n + j]),
                  "missing_close_tag": s.missing_close_tag, "truncated": s.truncated, "empty": s.empty}
                 for j, s in enumerate(samples)]
        mses = [r["mse_nrm"] for r in srows]
        mean = sum(mses) / len(mses)
        variance = {"position": last_plain, "token": rows[last_plain]["token"], "norm": rows[last_plain]["norm"],
                    "temperature": variance_temperature, "k": k, "greedy": {key: rows[last_plain][key] for key in
                                                                            ("explanation", "mse_nrm", "cos", "fve_nrm")},
                    "samples": srows, "mse_nrm": {**_stats(mses),
                                                  "std": (sum((x - mean) ** 2 for x in mses) / len(mses)) ** 0.5}}
    warnings = []
    if choice.low_variance:
        warnings.append(
            f"LOW-VARIANCE LAYER: B_rv = {choice.value:.4g} ({choice.source}). Activations are concentrated around "
            "their mean, so mse_nrm and cos compress into a narrow range (cos ~ 0.99 for everything); fve_nrm, "
            "the improvement over predict-the-mean, is the informative metric here.")
    header = {
        "pair": dirs.spec.name if dirs.spec is not None else None, "av": str(dirs.av), "ar": str(dirs.ar),
        "target": str(dirs.target) if dirs.target is not None else None, "layer": dirs.layer,
        "d_model": int(vectors.shape[1]), "mse_scale": mse_scale, "injection_scale": injection_scale,
        "b_rv": choice.to_dict(), "messages": messages, "prompt_text": tok.decode(prompt_ids),
        "reply_text": tok.decode(reply), "n_prompt": len(prompt_ids), "n_reply": len(reply),
        "reply_stopped": bool(reply) and reply[-1] in special, "content_start": start,
        "decoding": {"per_token": "greedy", "max_new_tokens": settings.max_new_tokens},
    }
    return ConversationResult(header=header, tokens=rows, summary=summarize_tokens(rows, start, score_incomplete),
                              variance=variance, warnings=warnings)


def _f(x, nd=3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def render_conversation_text(res: ConversationResult) -> str:
    """The release's worked-example layout: header, per-token blocks with the full decode, summary, variance."""
    h, s = res.header, res.summary
    bar = "─" * 80
    b = h["b_rv"]
    own = f"{b['own_value']:.4g} ({b['own_source']})" if b["own_value"] is not None else b["own_source"]
    out = [f"Pair {h['pair'] or '(dirs)'}  layer {h['layer']}  d_model {h['d_model']}  "
           f"mse_scale {h['mse_scale']:.4g}  injection_scale {h['injection_scale']:.4g}",
           f"fve_nrm = 1 - mse_nrm / {b['value']:.4g}   B_rv from {b['source']}",
           f"this conversation's own B_rv: {own}"]
    out += [f"⚠ {w}" for w in res.warnings]
    out += [bar, f"Prompt: {h['n_prompt']} tokens; reply (greedy): {h['n_reply']} tokens"
            f"{'' if h['reply_stopped'] or not h['n_reply'] else ' (cut at --reply-tokens)'}",
            f"  {h['reply_text']!r}", bar]
    for r in res.tokens:
        flag = "" if not (r["missing_close_tag"] or r["truncated"] or r["empty"]) else "  [incomplete: not in summary]"
        out.append(f"[{r['position']:3d}]  {r['role'].upper():6s}  token={r['token']!r}  ||v||={r['norm']:.1f}  "
                   f"mse_nrm={r['mse_nrm']:.3f}  cos={r['cos']:.3f}  fve_nrm={r['fve_nrm']:.3f}{flag}")
        out += ["    " + line for line in (r["explanation"] or "(empty)").splitlines()]
        out.append("")
    a = s["all"]
    out.append(f"─── Summary (positions {s['from_position']}+; earlier ones are template scaffold, under-sampled in "
               f"training; {s['excluded_incomplete']} incomplete decodes left out) ───")
    if a["n"]:
        out += [f"  mse_nrm:  mean={_f(a['mse_nrm']['mean'])}  median={_f(a['mse_nrm']['median'])}  "
                f"min={_f(a['mse_nrm']['min'])}  max={_f(a['mse_nrm']['max'])}",
                f"  cos:      mean={_f(a['cos']['mean'])}",
                f"  fve_nrm:  mean={_f(a['fve_nrm']['mean'])}  median={_f(a['fve_nrm']['median'])}  (B_rv={b['value']:.4g})",
                f"  fve_nrm>0.5: {a['fve_gt_0.5']}/{a['n']}   >0.8: {a['fve_gt_0.8']}/{a['n']}   <0: {a['fve_lt_0']}/{a['n']}"]
        for role, blk in s["by_role"].items():
            if blk["n"]:
                out.append(f"  {role:6s}  n={blk['n']:3d}  fve_nrm mean={_f(blk['fve_nrm']['mean'])}  "
                           f"mse_nrm mean={_f(blk['mse_nrm']['mean'])}")
    else:
        out.append("  no complete decode to summarize")
    ar_ = s["all_rows"]
    if s["excluded_incomplete"] and ar_["n"]:
        out.append(f"  with the incomplete decodes (all {ar_['n']} rows): fve_nrm mean={_f(ar_['fve_nrm']['mean'])}  "
                   f"mse_nrm mean={_f(ar_['mse_nrm']['mean'])}")
    v = res.variance
    if v:
        out += [bar, f"Sampling variance at position {v['position']} (token={v['token']!r}, ||v||={v['norm']:.1f}): "
                     f"{v['k']} x temperature {v['temperature']}", bar,
                f"  greedy: mse_nrm={v['greedy']['mse_nrm']:.3f}  cos={v['greedy']['cos']:.3f}  "
                f"fve_nrm={v['greedy']['fve_nrm']:.3f}"]
        for r in v["samples"]:
            out.append(f"  sample {r['sample']}:")
            out += ["    " + line for line in (r["explanation"] or "(empty)").splitlines()]
            out.append(f"    -> mse_nrm={r['mse_nrm']:.3f}  cos={r['cos']:.3f}  fve_nrm={r['fve_nrm']:.3f}")
        m = v["mse_nrm"]
        out.append(f"  samples mse_nrm: mean={m['mean']:.3f}  std={m['std']:.3f}  min={m['min']:.3f}  max={m['max']:.3f}")
    return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def render_conversation_markdown(res: ConversationResult) -> str:
    h, s, b = res.header, res.summary, res.header["b_rv"]
    out = [f"# NLA per-token explanations: {h['pair'] or 'pair'} layer {h['layer']}", "",
           f"- fve_nrm = 1 − mse_nrm / **{b['value']:.4g}** (B_rv from {b['source']})",
           f"- this conversation's own B_rv: {_f(b['own_value'], 4)} ({b['own_source']})",
           f"- prompt {h['n_prompt']} tokens, greedy reply {h['n_reply']} tokens; summary from position "
           f"{s['from_position']}", ""]
    out += [f"> ⚠ {w}" for w in res.warnings]
    out += ["", "| pos | role | token | ‖v‖ | mse_nrm | cos | fve_nrm | explanation |",
            "|---:|---|---|---:|---:|---:|---:|---|"]
    for r in res.tokens:
        note = " *(incomplete)*" if (r["missing_close_tag"] or r["truncated"] or r["empty"]) else ""
        out.append(f"| {r['position']} | {r['role']} | `{_md_cell(repr(r['token']))}` | {r['norm']:.1f} | "
                   f"{r['mse_nrm']:.3f} | {r['cos']:.3f} | {r['fve_nrm']:.3f} | {_md_cell(r['explanation'])}{note} |")
    out += ["", "## Summary", "", "| positions | n | mean mse_nrm | mean cos | mean fve_nrm | median fve_nrm | fve>0.5 |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, blk in [("complete", s["all"]), *s["by_role"].items(), ("all rows, incomplete too", s["all_rows"])]:
        if blk["n"]:
            out.append(f"| {name} | {blk['n']} | {blk['mse_nrm']['mean']:.3f} | {blk['cos']['mean']:.3f} | "
                       f"{blk['fve_nrm']['mean']:.3f} | {blk['fve_nrm']['median']:.3f} | {blk['fve_gt_0.5']} |")
    v = res.variance
    if v:
        out += ["", f"## Sampling variance (position {v['position']}, token `{_md_cell(repr(v['token']))}`, "
                    f"{v['k']} × T={v['temperature']})", "", "| decode | mse_nrm | cos | fve_nrm | explanation |",
                "|---|---:|---:|---:|---|",
                f"| greedy | {v['greedy']['mse_nrm']:.3f} | {v['greedy']['cos']:.3f} | {v['greedy']['fve_nrm']:.3f} | "
                f"{_md_cell(v['greedy']['explanation'])} |"]
        out += [f"| sample {r['sample']} | {r['mse_nrm']:.3f} | {r['cos']:.3f} | {r['fve_nrm']:.3f} | "
                f"{_md_cell(r['explanation'])} |" for r in v["samples"]]
    return "\n".join(out) + "\n"


def render_conversation_json(res: ConversationResult) -> str:
    import json

    return json.dumps(res.to_dict(), indent=2, ensure_ascii=False) + "\n"
