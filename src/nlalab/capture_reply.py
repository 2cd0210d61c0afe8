"""Capture at the tokens of a conversation: the chat-templated prompt and the target's own greedy reply.

Used by ``nlalab run --position reply`` (every reply token a unit of the study) and by ``nlalab explain
--conversation`` (every token of a chat explained). Below both the study and explain, so neither imports
the other for it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from nlalab.errors import NLALabError
from nlalab.pairs import arch

ROLE_PROMPT, ROLE_REPLY = "prompt", "reply"


def conversation_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Chat template + generation prompt, tokenized in one step (no double BOS), as the release does."""
    from nlalab.errors import NLALabError

    if getattr(tokenizer, "chat_template", None) is None:
        raise NLALabError("The target's tokenizer has no chat_template. Fix: use the instruct tokenizer.")
    from nlalab.pairs.markers import template_ids

    return template_ids(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))


def greedy_reply(model, tokenizer, ids: list[int], max_new_tokens: int) -> list[int]:
    """The target's own greedy continuation (no cache: short, and identical on every backend), ending with
    its end-of-turn token when it stops within ``max_new_tokens``."""
    from nlalab.pairs.load import av_eos_ids

    eos = set(av_eos_ids(tokenizer, model))
    device = arch.input_device(model)
    seq = list(ids)
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            logits = model(input_ids=torch.tensor([seq], device=device), use_cache=False).logits[0, -1]
            t = int(logits.float().argmax())
            out.append(t)
            seq.append(t)
            if t in eos:
                break
    return out


def block_outputs(model, layer: int, ids: list[int]) -> torch.Tensor:
    """Block-K output at every position of one sequence, fp32 [T, d] on CPU (capture's hook, no padding)."""
    from nlalab.capture import run_to_block

    device = arch.input_device(model)
    x = torch.tensor([ids], device=device)
    h = run_to_block(model, layer, x, torch.ones_like(x))
    return h[0].float().cpu()


def capture_with_reply(model, tokenizer, texts: Sequence[str], layer: int, *, positions: str = "reply",
                       reply_tokens: int = 32, ids: Optional[Sequence[str]] = None, progress: bool = False):
    """``nlalab run --position reply|all`` for chat items: each prompt is chat-templated, the target (a *full*
    model, ``load_target(truncate=False)``) writes its greedy reply of at most ``reply_tokens``, and block-K
    vectors are taken at the reply's tokens (``reply``) or at every token of prompt + reply (``all``).

    Returns ``nlalab.capture.Captured`` whose meta rows carry, beside capture's keys, ``role``
    (prompt/reply) and ``reply_index`` (position within the reply, None in the prompt), so rows are keyed by
    (item_id, token_index). An item whose reply is empty contributes nothing under ``reply``.
    """
    from nlalab.capture import Captured

    if positions not in ("reply", "all"):
        raise NLALabError(f"capture_with_reply: positions must be reply or all, not {positions!r}.")
    if reply_tokens < 1 and positions == "reply":
        raise NLALabError("--position reply needs --reply-tokens >= 1.")
    ids = list(ids) if ids is not None else [str(i) for i in range(len(texts))]
    if len(ids) != len(texts):
        raise NLALabError(f"{len(ids)} ids for {len(texts)} texts.")
    it = range(len(texts))
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"reply + capture L{layer}", unit="item")
    vecs, meta = [], []
    for i in it:
        prompt = conversation_ids(tokenizer, [{"role": "user", "content": texts[i]}])
        reply = greedy_reply(model, tokenizer, prompt, reply_tokens) if reply_tokens > 0 else []
        seq = prompt + reply
        picks = list(range(len(prompt), len(seq))) if positions == "reply" else list(range(len(seq)))
        if not picks:
            continue
        h = block_outputs(model, layer, seq)
        for p in picks:
            vecs.append(h[p])
            meta.append({"item_id": ids[i], "token_index": p, "token_id": seq[p],
                         "token_text": tokenizer.decode([seq[p]]), "norm": float(h[p].norm()), "n_tokens": len(seq),
                         "role": ROLE_PROMPT if p < len(prompt) else ROLE_REPLY,
                         "reply_index": p - len(prompt) if p >= len(prompt) else None})
    if not vecs:
        raise NLALabError("No positions were captured: every reply was empty. Fix: raise --reply-tokens.")
    return Captured(vectors=torch.stack(vecs), meta=meta, layer=layer)
