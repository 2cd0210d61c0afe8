"""Number formatting and one table type, shared by the terminal summary, report.md, the HTML report and
compare: every mean is printed the same way everywhere (``mean [lo, hi] n=N``; ``n/a`` where undefined)."""

from __future__ import annotations

import html as _html
from dataclasses import dataclass, field
from typing import Any, Optional

OVERALL = "OVERALL"
NOT_RUN = "not run"


def fmt_num(x: Optional[float], digits: int = 3, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return str(x)
    if xf != xf:  # NaN is never shown as a number
        return "n/a"
    return f"{xf:+.{digits}f}" if signed else f"{xf:.{digits}f}"


def fmt_p(p: Optional[float], n_perm: Optional[int] = None) -> str:
    """A p-value; at the smallest value ``n_perm`` permutations can give, ``≤ 1/(n+1)`` (not an equality)."""
    if p is None:
        return "n/a"
    if n_perm and p <= 1.0 / (int(n_perm) + 1) + 1e-12:
        return f"≤ {1.0 / (int(n_perm) + 1):.2g}"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def p_text(p: Optional[float], n_perm: Optional[int] = None) -> str:
    """``p=0.123``, or ``p ≤ 0.001`` at the smallest value ``n_perm`` permutations can give."""
    t = fmt_p(p, n_perm)
    return f"p {t}" if t.startswith("≤") else f"p={t}"


def fmt_est(e: Optional[dict], digits: int = 3, n: Optional[bool] = True, signed: bool = False,
            n_expected: Optional[int] = None) -> str:
    """``mean [lo, hi] n=N``. ``n=False`` drops the n; ``n_expected`` drops it when equal (an N column says it)."""
    if not e or e.get("mean") is None:
        return "n/a"
    m = fmt_num(e["mean"], digits, signed)
    lo, hi = e.get("lo"), e.get("hi")
    s = m if lo is None or hi is None else f"{m} [{fmt_num(lo, digits, signed)}, {fmt_num(hi, digits, signed)}]"
    if n and e.get("n") is not None and (n_expected is None or int(e["n"]) != int(n_expected)):
        s += f" n={e['n']}"
    if e.get("p") is not None:
        s += f" p={fmt_p(e['p'])}"
    return s


def md_cell(s: Any) -> str:
    """Table-safe Markdown cell text: pipes escaped, newlines flattened."""
    return str(s).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def md_quote(text: Any) -> list[str]:
    lines = str(text if text is not None else "").splitlines() or [""]
    return ["> " + ln if ln else ">" for ln in lines]


@dataclass
class Table:
    """A titled table of strings with notes: one builder, three renderings."""

    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    key: str = ""
    wrap: bool = False  # HTML: let long cells wrap instead of scrolling sideways

    def to_markdown(self, level: int = 3) -> str:
        out = [f"{'#' * level} {self.title}", ""] if self.title else []
        out.append("| " + " | ".join(md_cell(h) for h in self.header) + " |")
        out.append("|" + "|".join("---" for _ in self.header) + "|")
        out += ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in self.rows]
        if self.notes:
            out += [""] + self.notes
        return "\n".join(out) + "\n"

    def to_html(self, level: int = 3) -> str:
        e = _html.escape
        head = "".join(f"<th>{e(str(h))}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in self.rows)
        parts = [f"<h{level}>{e(self.title)}</h{level}>"] if self.title else []
        cls = "t wrap" if self.wrap else "t"
        parts.append(f'<div class="wide"><table class="{cls}" data-table="{e(self.key)}"><thead><tr>{head}</tr>'
                     f"</thead><tbody>{body}</tbody></table></div>")
        parts += [f'<p class="note">{e(n)}</p>' for n in self.notes]
        return "\n".join(parts)

    def to_text(self) -> str:
        cells = [list(map(str, self.header))] + [list(map(str, r)) for r in self.rows]
        widths = [max(len(r[i]) if i < len(r) else 0 for r in cells) for i in range(len(self.header))]

        def line(r):
            return "| " + " | ".join(f"{c:<{w}}" for c, w in zip(r, widths)) + " |"

        out = [self.title] if self.title else []
        out += [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]]
        out += self.notes
        return "\n".join(out) + "\n"
