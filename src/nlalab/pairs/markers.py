"""The injection marker: choosing one, and locating it in the canonical AV prompt.

kitft picks the first codepoint in U+3200-U+33FF that is one token. Tokenizers without such a
codepoint (SmolLM2) get a rare single token that round-trips through decode, so the same
neighbour check applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from nlalab.errors import NLALabError
from nlalab.pairs.sidecar import DEFAULT_AV_TEMPLATE

CJK_RANGE = range(0x3200, 0x3400)
# Fallbacks tried in order when no CJK-compat codepoint is a single token.
FALLBACK_MARKERS = ["§", "¶", "¤", "¦", "©", "®", "µ", "¬", "þ", "ð"]


def encode_plain(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def is_single_token(tokenizer, char: str) -> Optional[int]:
    """The id if ``char`` encodes to exactly one non-UNK id that decodes back to ``char``."""
    ids = encode_plain(tokenizer, char)
    if len(ids) != 1:
        return None
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and ids[0] == unk:
        return None
    if tokenizer.decode(ids).strip() != char:
        return None
    return ids[0]


def choose_marker(tokenizer) -> tuple[str, int]:
    for cp in CJK_RANGE:
        ch = chr(cp)
        tid = is_single_token(tokenizer, ch)
        if tid is not None:
            return ch, tid
    for ch in FALLBACK_MARKERS:
        tid = is_single_token(tokenizer, ch)
        if tid is not None:
            return ch, tid
    raise NLALabError(
        "No marker candidate encodes to a single token with this tokenizer (tried U+3200-U+33FF and "
        f"{FALLBACK_MARKERS}). Fix: pass marker=<a rare character that is one token> explicitly."
    )


def chat_ids(tokenizer, content: str) -> list[int]:
    """One user turn + generation prompt, templated and tokenized in one step (so no double BOS).

    transformers 5 returns a BatchEncoding here, earlier versions a list; both are accepted.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise NLALabError(
            f"Tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat_template. Fix: use the instruct "
            "tokenizer, or set tokenizer.chat_template (nlalab ships Gemma-3 and Llama-3 templates)."
        )
    return template_ids(tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=True,
                                                      add_generation_prompt=True))


def template_ids(out) -> list[int]:
    """Token ids of what ``apply_chat_template(..., tokenize=True)`` returned (a list, a nested list or an
    encoding, depending on the transformers version)."""
    if hasattr(out, "keys"):
        out = out["input_ids"]
    ids = list(out)
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def av_prompt_ids(tokenizer, injection_char: str, template: str = DEFAULT_AV_TEMPLATE) -> list[int]:
    """The canonical AV prompt: the template with the marker as one user message (no system message)."""
    return chat_ids(tokenizer, template.format(injection_char=injection_char))


@dataclass(frozen=True)
class MarkerSite:
    position: int
    left_id: int
    right_id: int


def locate_marker(ids: Sequence[int], marker_id: int) -> MarkerSite:
    """The single marker position, not at either edge, with its neighbour ids."""
    pos = [i for i, t in enumerate(ids) if t == marker_id]
    if len(pos) != 1:
        raise NLALabError(
            f"The AV prompt contains the marker id {marker_id} {len(pos)} times (expected exactly once). "
            "Fix: check injection_token_id in the AV sidecar against this tokenizer."
        )
    p = pos[0]
    if p == 0 or p == len(ids) - 1:
        raise NLALabError(f"The marker sits at the edge of the AV prompt (position {p}); the template is wrong.")
    return MarkerSite(p, int(ids[p - 1]), int(ids[p + 1]))


def find_injection_rows(ids_row: Sequence[int], marker_id: int, left_id: int, right_id: int) -> list[int]:
    """kitft's scan: positions p with ids[p]==marker and the pinned neighbours, never at the edges."""
    n = len(ids_row)
    return [
        p
        for p in range(1, n - 1)
        if ids_row[p] == marker_id and ids_row[p - 1] == left_id and ids_row[p + 1] == right_id
    ]
