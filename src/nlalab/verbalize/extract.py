"""Pull the explanation out of raw AV output and flag the ways it fails."""

from __future__ import annotations

import re

EXPLANATION_RE = re.compile(r"<explanation>\s*(.*?)\s*</explanation>", re.DOTALL)
_CJK_RE = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\u3200-\u33ff\uff00-\uffef]")


def cjk_fraction(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 0.0
    return sum(1 for c in chars if _CJK_RE.match(c)) / len(chars)


def extract_explanation(raw: str, truncated: bool = False, marker: str | None = None) -> dict:
    """kitft's regex; on a miss, the text after an opening tag (or all of it), flagged.

    ``cjk_smell`` is the injection-failure signal: mostly-CJK output, or the marker itself echoed back.
    """
    m = EXPLANATION_RE.search(raw)
    if m:
        text, missing_close = m.group(1).strip(), False
    else:
        missing_close = True
        i = raw.find("<explanation>")
        text = (raw[i + len("<explanation>"):] if i >= 0 else raw).strip()
    frac = cjk_fraction(text)
    return {
        "explanation": text,
        "missing_close_tag": missing_close,
        "truncated": bool(truncated),
        "empty": len(text) == 0,
        "cjk_smell": frac > 0.2 or (marker is not None and marker in text),
        "cjk_fraction": round(frac, 4),
    }
