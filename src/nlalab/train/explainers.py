"""Explanations of training rows, pluggable: ``context``, ``api``, ``local``.

- ``context``: self-supervised, no external model. From the text itself: what the passage is (its
  category and source, and its most frequent content words), the words it ends with, and the words
  that follow. Deterministic.
- ``api``: any OpenAI-compatible ``/chat/completions`` endpoint, prompted with kitft's instruction
  prompt (recipe §4.2, quoted exactly), ``<analysis>`` extraction and kitft's post-processing (list
  prefixes, bold markers and empty lines removed, paragraphs joined with a blank line, fewer than 2
  paragraphs dropped). Stdlib HTTP only; bounded workers, retries and a request budget.
- ``local``: a local instruct model (transformers) answers the same instruction prompt; the reply
  is primed with ``<analysis>\\n`` so small models stay inside the tags.

Every explainer maps :class:`ExplainInput` rows to an explanation string or ``None`` (dropped).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from typing import Any, Optional, Protocol, Sequence

from nlalab.batching import left_padded
from nlalab.errors import NLALabError

# kitft stage-2 instruction prompt (recipe §4.2), quoted exactly as data; {text} is the prefix.
INSTRUCTION_PROMPT = (
    "A language model needs to predict what text comes next after a snippet which will be presented to you "
    "shortly. Identify the 2-3 most important features it would use for this prediction.\n"
    "Focus on what the language model must be \"thinking about\" at the point where the provided text ends. "
    "You should not need to reference the fact that the text is truncated/incomplete/a prefix: the language "
    "model is causal, so only sees the prefix to what it predicts and this is implicit.\n"
    "Order features by what is most important for predicting the next tokens. Each feature should consist of "
    "a concise ~10-20 word description. Feel free to include specific textual examples inline.\n"
    "\n"
    "Feature types to consider (as inspiration, not a rigid checklist):\n"
    "- Syntactic/structural constraints: \"unclosed parenthesis requires matching close\"\n"
    "- Immediate semantic expectations: \"list promised three items but only two given\"\n"
    "- Stylistic/register patterns: \"formal academic tone maintained throughout\"\n"
    "- Narrative/argumentative momentum: \"thesis stated, supporting evidence now expected\"\n"
    "- Domain/genre signals: \"medical case history following SOAP format\"\n"
    "- Repetition/continuation patterns: \"same phrase structure repeating with variations\"\n"
    "\n"
    "The final feature must describe the very end of the presented sequence: its role, what it's part of, "
    "and immediate constraints on what follows.\n"
    "\n"
    "Format \u2014 IMPORTANT: keep to ~80-100 words total and ALWAYS close the tag:\n"
    "<analysis>\n"
    "[first feature \u2014 include specific examples when relevant]\n"
    "[second feature]\n"
    "[final feature: the last token, its role, immediate constraints]\n"
    "</analysis>\n"
    "\n"
    "Text to analyze:\n"
    "\n"
    "<begin_text>{text}<end_text>"
)

ANALYSIS_RE = re.compile(r"<analysis>\s*(.*?)\s*</analysis>", re.DOTALL)
_LIST_PREFIX = re.compile(
    r"^\s*(?:[-*\u2022+\u2013\u2014]\s+|\(?\d+[.)]\s+|\(?[a-zA-Z][.)]\s+|\(?(?:i|ii|iii|iv|v|vi|vii|viii|ix|x)[.)]\s+)",
    re.IGNORECASE,
)


def instruction_prompt(text: str) -> str:
    return INSTRUCTION_PROMPT.replace("{text}", text)


def postprocess(raw: str, min_paragraphs: int = 2) -> Optional[str]:
    """kitft stage-2 post-processing of a reply: None if there is no closed ``<analysis>`` or < 2 lines left."""
    m = ANALYSIS_RE.search(raw or "")
    if not m:
        return None
    lines = []
    for line in m.group(1).splitlines():
        s = _LIST_PREFIX.sub("", line.strip(), count=1).strip()
        s = re.sub(r"\*\*(.+?)\*\*", r"\1", s)
        s = s.rstrip("*_").strip()
        if s:
            lines.append(s)
    if len(lines) < min_paragraphs:
        return None
    return "\n\n".join(lines)


@dataclass
class ExplainInput:
    """What an explainer sees: the document prefix up to and including the token, and what follows."""

    prefix: str
    continuation: str = ""
    category: str = ""
    source: str = ""
    kind: str = "raw"  # raw | chat_last
    topic: str = ""  # the topic a generated prompt was written for (broad corpus), else ""

    @classmethod
    def from_row(cls, row: dict) -> "ExplainInput":
        return cls(prefix=row.get("prefix", ""), continuation=row.get("continuation", ""),
                   category=row.get("category", ""), source=row.get("source", ""), kind=row.get("kind", "raw"),
                   topic=row.get("topic", "") or "")


class Explainer(Protocol):
    name: str

    def explain(self, items: Sequence[ExplainInput]) -> list[Optional[str]]: ...

    def describe(self) -> dict[str, Any]: ...


# ------------------------------------------------------------------------------------------ context

_GENRE = {
    "code": "Python source code{src}: identifiers, indentation and syntax matter more than prose.",
    "docs": "English technical documentation{src}, explaining how a software library behaves.",
    "chat": "A chat conversation between a user and an AI assistant{src}.",
    "agent": "An AI agent's working transcript{src}: a task, tool calls on files, and their outputs.",
    "reasoning": "Step-by-step mathematical reasoning{src}, working from a question towards an answer.",
}
_CHAT_GENRE = {
    "chat": "A user's message to an AI assistant, a question or request{src}.",
    "code": "A user asks an AI assistant for help with code{src}.",
    "agent": "A user gives an AI coding agent a task in a software repository{src}.",
    "reasoning": "A user asks an AI assistant to solve a math or logic problem.",
}
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z0-9_']+")


def _stopwords() -> set[str]:
    try:
        txt = resources.files("nlalab").joinpath("data/stopwords_en.txt").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):  # pragma: no cover
        return set()
    return {w.strip() for w in txt.splitlines() if w.strip() and not w.startswith("#")}


def _clip_words(text: str, n: int, tail: bool) -> str:
    words = text.split()
    part = words[-n:] if tail else words[:n]
    s = " ".join(part)
    return s.replace('"', "'")


_NUM_RE = re.compile(r"\$?\d[\d,.:%]*")
_ENTITY_RE = re.compile(r"(?<![.?!]\s)(?<!^)\b([A-Z][A-Za-z0-9'.-]*(?:\s+[A-Z][A-Za-z0-9'.-]*)*)")


class ContextExplainer:
    """Self-supervised explanations: genre + topic words, the last words, the words that follow.

    ``style="v2"`` (the broad default pair) opens chat prompts with what a reader would name first: the
    subject (the topic a generated prompt was written for), the named entities and numbers of the message,
    and its content words in order, so the AV learns to say *what* a prompt is about and not only its genre.
    ``v1`` is the first shipped pair's text, kept so its recipe still reproduces."""

    name = "context"

    def __init__(self, last_words: int = 8, next_words: int = 8, topic_words: int = 4, style: str = "v1"):
        if style not in ("v1", "v2"):
            raise NLALabError(f"context explainer style {style!r}: use v1 or v2.")
        self.last_words, self.next_words, self.topic_words, self.style = last_words, next_words, topic_words, style
        self._stop = _stopwords() | {"self", "return", "def", "none", "true", "false", "import", "from", "class",
                                     "system", "user", "assistant"}  # chat scaffolding, not topic

    def describe(self) -> dict[str, Any]:
        return {"explainer": "context", "last_words": self.last_words, "next_words": self.next_words,
                "topic_words": self.topic_words, "style": self.style}

    def _topic(self, text: str, window: int = 150) -> list[str]:
        """Most frequent content words of the last ``window`` words (what the passage is about *here*)."""
        words = [w.lower().strip("'_") for w in _WORD_RE.findall(" ".join(text.split()[-window:]))]
        c = Counter(w for w in words if len(w) > 2 and w not in self._stop)
        return [w for w, _ in c.most_common(self.topic_words)]

    def one(self, it: ExplainInput) -> Optional[str]:
        text = it.prefix.strip()
        if not text:
            return None
        src = f" from {it.source}" if it.source and not it.source.startswith("nlalab") else ""
        if it.kind == "chat_last" and self.style == "v2":
            return self._chat_v2(it, text, src)
        if it.kind == "chat_last":
            genre = _CHAT_GENRE.get(it.category, _CHAT_GENRE["chat"]).format(src=src)
            topic = self._topic(text)
            first = genre + (f" It is about {', '.join(topic)}." if topic else "")
            quoted = _clip_words(text, 16, tail=False)
            second = f'The message reads: "{quoted}{" ..." if len(text.split()) > 16 else ""}"'
            third = "The user's turn has just ended; the assistant's reply is about to begin."
            return "\n\n".join((first, second, third))
        genre = _GENRE.get(it.category, "A text passage{src}.").format(src=src)
        topic = self._topic(text)
        first = genre + (f" It is about {', '.join(topic)}." if topic else "")
        second = f'The text ends with "{_clip_words(text, self.last_words, tail=True)}".'
        nxt = _clip_words(it.continuation, self.next_words, tail=False)
        third = f'The next words are "{nxt}".' if nxt else "The passage ends here."
        return "\n\n".join((first, second, third))

    def _content(self, text: str, n: int = 10) -> list[str]:
        """Content words in order of first use (what keyword recall counts: >= 4 letters, no stopwords)."""
        out: list[str] = []
        for w in _WORD_RE.findall(text):
            w = w.lower().strip("'_")
            if len(w) >= 4 and w not in self._stop and w not in out:
                out.append(w)
        return out[:n]

    def _chat_v2(self, it: ExplainInput, text: str, src: str) -> str:
        if it.topic:
            first = f"A user asks an AI assistant about {it.topic}."
        else:
            first = _CHAT_GENRE.get(it.category, _CHAT_GENRE["chat"]).format(src=src)
        ents = []
        for m in _ENTITY_RE.finditer(text):
            e = m.group(1).strip(".'")
            if e and e.lower() not in self._stop and e not in ents and len(e) > 1:
                ents.append(e)
        nums = []
        for m in _NUM_RE.finditer(text):
            v = m.group(0).rstrip(".,:")
            if v and v not in nums:
                nums.append(v)
        if ents:
            first += f" It names {', '.join(ents[:4])}."
        if nums:
            first += f" Numbers: {', '.join(nums[:4])}."
        words = self._content(text)
        if words:
            first += f" Key words: {', '.join(words)}."
        quoted = _clip_words(text, 24, tail=False)
        second = f'The message reads: "{quoted}{" ..." if len(text.split()) > 24 else ""}"'
        third = "The user's turn has just ended; the assistant's reply is about to begin."
        return "\n\n".join((first, second, third))

    def explain(self, items: Sequence[ExplainInput]) -> list[Optional[str]]:
        return [self.one(it) for it in items]


# ---------------------------------------------------------------------------------------------- api


class ApiExplainer:
    """OpenAI-compatible chat endpoint (``{base_url}/chat/completions``) with kitft's prompt.

    ``api_key_env`` names the environment variable holding the key (never stored in configs).
    ``max_requests`` is a hard budget across the explainer's lifetime (retries included).
    """

    name = "api"

    def __init__(self, base_url: str, model: str, *, api_key_env: Optional[str] = "OPENAI_API_KEY",
                 max_tokens: int = 300, temperature: float = 1.0, workers: int = 4, timeout_s: float = 60.0,
                 retries: int = 2, backoff_s: float = 1.0, max_requests: Optional[int] = None):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_tokens, self.temperature = max_tokens, temperature
        self.workers, self.timeout_s, self.retries, self.backoff_s = max(1, workers), timeout_s, retries, backoff_s
        self.max_requests = max_requests
        self.requests_made = 0
        self.failures = 0
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        return {"explainer": "api", "base_url": self.base_url, "model": self.model, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "instruction_prompt": "kitft stage-2 (nla-recipe §4.2)",
                "requests_made": self.requests_made, "failures": self.failures}

    def _take_budget(self) -> None:
        with self._lock:
            if self.max_requests is not None and self.requests_made >= self.max_requests:
                raise NLALabError(f"api explainer: request budget of {self.max_requests} exhausted.")
            self.requests_made += 1

    def _post(self, prompt: str) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": self.max_tokens, "temperature": self.temperature}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            data = json.loads(resp.read().decode("utf-8"))
        return data["choices"][0]["message"]["content"] or ""

    def one(self, it: ExplainInput) -> Optional[str]:
        prompt = instruction_prompt(it.prefix)
        for attempt in range(self.retries + 1):
            self._take_budget()
            try:
                return postprocess(self._post(prompt))
            except (urllib.error.URLError, TimeoutError, ConnectionError, KeyError, IndexError, ValueError,
                    OSError) as e:
                retryable = not (isinstance(e, urllib.error.HTTPError) and 400 <= e.code < 500 and e.code != 429)
                if attempt == self.retries or not retryable:
                    with self._lock:
                        self.failures += 1
                    return None
                time.sleep(self.backoff_s * (2 ** attempt))
        return None  # pragma: no cover

    def explain(self, items: Sequence[ExplainInput]) -> list[Optional[str]]:
        with ThreadPoolExecutor(max_workers=self.workers) as ex:
            return list(ex.map(self.one, items))


# -------------------------------------------------------------------------------------------- local


class LocalExplainer:
    """A local instruct model writes explanations with the same instruction prompt (batched, left padded)."""

    name = "local"

    def __init__(self, model_dir: Optional[str] = None, *, model=None, tokenizer=None, device: str = "auto",
                 max_new_tokens: int = 200, temperature: float = 0.7, batch_size: int = 16, max_prefix_chars: int = 3000,
                 seed: int = 42, strict: bool = False):
        self.model_dir = model_dir
        self._model, self._tok = model, tokenizer
        self.device = device
        self.max_new_tokens, self.temperature, self.batch_size = max_new_tokens, temperature, batch_size
        self.max_prefix_chars, self.seed, self.strict = max_prefix_chars, seed, strict

    def describe(self) -> dict[str, Any]:
        return {"explainer": "local", "model": self.model_dir or getattr(self._model, "name_or_path", "in-memory"),
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "strict": self.strict,
                "instruction_prompt": "kitft stage-2 (nla-recipe §4.2), reply primed with <analysis>"}

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            if not self.model_dir:
                raise NLALabError("local explainer: pass model_dir (a local instruct model folder).")
            dev = "cuda" if self.device == "auto" and torch.cuda.is_available() else (
                "cpu" if self.device == "auto" else self.device)
            dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
            self._model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(dev).eval()
            self._tok = AutoTokenizer.from_pretrained(self.model_dir)
        return self._model, self._tok

    def explain(self, items: Sequence[ExplainInput]) -> list[Optional[str]]:
        import torch

        model, tok = self._load()
        prime = "<analysis>\n"
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = next(model.parameters()).device
        out: list[Optional[str]] = []
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        for i in range(0, len(items), self.batch_size):
            chunk = items[i:i + self.batch_size]
            encs = []
            for it in chunk:
                e = tok.apply_chat_template([{"role": "user", "content": instruction_prompt(it.prefix[-self.max_prefix_chars:])}],
                                            tokenize=True, add_generation_prompt=True)
                e = list(e["input_ids"]) if hasattr(e, "keys") else list(e)
                encs.append(e + list(tok.encode(prime, add_special_tokens=False)))
            ids, mask = left_padded(encs, pad, device)
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            kw: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, pad_token_id=pad)
            if self.temperature > 0:
                kw.update(do_sample=True, temperature=self.temperature, top_p=1.0)
            else:
                kw.update(do_sample=False)
            with torch.inference_mode():
                seq = model.generate(input_ids=ids, attention_mask=mask, **kw)
            for row in seq[:, ids.shape[1]:].tolist():
                reply = prime + tok.decode(row, skip_special_tokens=True)
                if "</analysis>" not in reply and not self.strict:
                    reply = reply.rstrip() + "\n</analysis>"
                out.append(postprocess(reply))
        return out


def make_explainer(kind: str, **kw) -> Explainer:
    if kind == "context":
        return ContextExplainer(**{k: v for k, v in kw.items() if k in ("last_words", "next_words", "topic_words")})
    if kind == "api":
        if not kw.get("base_url") or not kw.get("model"):
            raise NLALabError("api explainer: set explainer_url and explainer_model.")
        return ApiExplainer(**kw)
    if kind == "local":
        return LocalExplainer(**kw)
    raise NLALabError(f"Unknown explainer {kind!r}; use context, api or local.")
