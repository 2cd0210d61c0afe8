"""Settings shared by several commands, declared once: the sampling settings and the capture position.

Why one place: the sampling defaults used to be written out in the CLI, ``RunConfig``, the generation
backends and GRPO, and drifted; the position setting was renamed and retyped on its way to capture.
Every consumer now reads the defaults and the ranges below, so a bad value (``temperature=-1``,
``top_p=2``, ``max_new_tokens=0``, ``position=first``) is refused before any model loads.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from nlalab.errors import UsageError

# ------------------------------------------------------------------------------------------ messages
# Shared by every settings model (RunConfig, SamplingSettings): a pydantic error becomes one line that
# names the setting, what was found, what is allowed, and the flag that fixes it.

# Fields whose flag is not `--` + the name with dashes.
FLAG_OF = {"positions": "--position"}


def flag_of(name: str) -> str:
    return FLAG_OF.get(name, "--" + name.replace("_", "-"))


def nearest(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest valid spelling, or nothing."""
    m = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {m[0]!r}?)" if m else ""


def _num(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def field_range(name: str, fields: dict) -> str:
    """The declared range of a numeric setting, e.g. ``0 < top_p <= 1``; empty when it has none."""
    info = fields.get(name)
    lo = hi = ""
    for m in getattr(info, "metadata", []) if info is not None else []:
        if getattr(m, "ge", None) is not None:
            lo = f"{_num(m.ge)} <= "
        if getattr(m, "gt", None) is not None:
            lo = f"{_num(m.gt)} < "
        if getattr(m, "le", None) is not None:
            hi = f" <= {_num(m.le)}"
        if getattr(m, "lt", None) is not None:
            hi = f" < {_num(m.lt)}"
    if not (lo or hi):
        return ""
    if lo and not hi:  # `k >= 1` reads better than `1 <= k`
        op = "> " if lo.endswith("< ") else ">= "
        return f"{name} {op}{lo.split(' ')[0]}"
    return f"{lo}{name}{hi}"


_KIND = {"int": "a whole number", "float": "a number", "bool": "true or false", "string": "a text",
         "list": "a list", "finite": "a finite number"}


def problem_line(err: dict, fields: dict) -> str:
    """One pydantic error as one line: the setting, what was found, what is allowed, the flag."""
    loc = err.get("loc") or ("<config>",)
    name = str(loc[0])
    flag = flag_of(name)
    found = err.get("input")
    t = err["type"]
    if t == "extra_forbidden":
        return (f"unknown setting {name!r}{nearest(name, fields)}. Fix: remove it or use one of the settings "
                f"listed by `nlalab run --help`.")
    if t == "missing":
        return f"setting {name!r} is required. Fix: pass {flag}."
    if t == "value_error":
        # our own validators already say what is allowed: keep their sentence, drop pydantic's prefix
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        return f"{flag}: {msg}. Fix: pass a valid {flag}."
    rng = field_range(name, fields)
    if t in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"{flag}: found {found!r}, allowed {rng}. Fix: pass {flag} within that range."
    if t == "literal_error":
        allowed = (err.get("ctx") or {}).get("expected", "")
        return f"{flag}: found {found!r}, allowed {allowed}. Fix: pass {flag} with one of these."
    if t == "string_too_short":
        return f"{flag}: found an empty value. Fix: pass {flag} with a value."
    kind = next((v for k, v in _KIND.items() if t.startswith(k)), "a valid value")
    extra = f" ({rng})" if rng else ""
    return f"{flag}: found {found!r}, expected {kind}{extra}. Fix: pass {flag} with {kind}."


def settings_error_line(e: ValidationError, fields: dict) -> str:
    """A pydantic ValidationError as one line per problem (joined by '; ')."""
    return "; ".join(problem_line(err, fields) for err in e.errors(include_url=False))


# ------------------------------------------------------------------------------------------ sampling

DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
DEFAULT_GREEDY = False
DEFAULT_MAX_NEW_TOKENS = 200  # the seed protocol
DEFAULT_SEED = 42

# The ranges, as reusable field types: temperature < 0 would sample the least likely tokens (logits / -1),
# top_p outside (0, 1] keeps no token or means nothing, max_new_tokens 0 writes empty explanations.
Temperature = Annotated[float, Field(ge=0, allow_inf_nan=False,
                                     description="Sampling temperature (>= 0; 0 means greedy).")]
TopP = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False, description="Nucleus mass (0 < top_p <= 1).")]
MaxNewTokens = Annotated[int, Field(ge=1, description="Longest explanation in tokens (>= 1).")]
Seed = Annotated[int, Field(ge=0, description="Base seed of every noise stream (>= 0).")]


class SamplingSettings(BaseModel):
    """How the AV samples: the one declaration of these defaults and ranges."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: Temperature = DEFAULT_TEMPERATURE
    top_p: TopP = DEFAULT_TOP_P
    greedy: bool = DEFAULT_GREEDY
    max_new_tokens: MaxNewTokens = DEFAULT_MAX_NEW_TOKENS
    seed: Seed = DEFAULT_SEED

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise UsageError(settings_error_line(e, type(self).model_fields)) from None

    @property
    def is_greedy(self) -> bool:
        """Both engines treat temperature 0 as greedy decoding."""
        return self.greedy or self.temperature == 0


SAMPLING_FIELDS = tuple(SamplingSettings.model_fields)

# ------------------------------------------------------------------------------------------ position

PositionKind = Literal["last", "index", "all", "random", "reply"]
# Named positions. Only `last` and an index give one vector per item, which the study needs; the others
# are parsed here so that capture, training data and later commands share one spelling.
NAMED_POSITIONS = ("last", "all", "random", "reply")
_INT = re.compile(r"^[+-]?\d+$")


class PositionError(UsageError, ValueError):
    """A position that does not parse: a usage error (exit 2, one line), and a ValueError so that pydantic
    reports it as a field error."""


@dataclass(frozen=True)
class Position:
    """A capture position: ``last``, a token index of the chat-templated prompt (negative counts from the
    end), or one of ``all``, ``random``, ``reply``."""

    kind: PositionKind
    index: Optional[int] = None

    @classmethod
    def parse(cls, value: Union[str, int, "Position"]) -> "Position":
        if isinstance(value, Position):
            return value
        if isinstance(value, bool):  # bool is an int subclass; `position: true` is a mistake
            raise PositionError(f"{value!r} is not a position")
        if isinstance(value, int):
            return cls("index", value)
        if isinstance(value, str):
            v = value.strip().lower()
            if v in NAMED_POSITIONS:
                return cls(v)  # type: ignore[arg-type]
            if _INT.match(v):
                return cls("index", int(v))
        raise PositionError(f"{value!r} is not a position")

    def __str__(self) -> str:
        return str(self.index) if self.kind == "index" else self.kind

    def capture_arg(self):
        """The ``positions`` argument of :func:`nlalab.capture.capture`."""
        if self.kind == "index":
            return [self.index]
        if self.kind == "reply":
            raise PositionError("position 'reply' is captured from the target's own reply "
                                "(nlalab.explain.capture_with_reply), not by capture()")
        return self.kind

    @property
    def one_per_item(self) -> bool:
        return self.kind in ("last", "index")


POSITION_HELP = ("last, a token index of the chat-templated prompt (negative counts from the end), all (every "
                 "prompt token), random (random raw-text positions) or reply (the tokens of the target's own greedy "
                 "reply, --reply-tokens)")


def _position_text(value: object) -> str:
    """Canonical text of a capture position of the study: one vector per item (last, an index) or one per
    (item, token) (all, random, reply: each becomes a unit of the study, keyed item@token_index)."""
    try:
        p = Position.parse(value)  # type: ignore[arg-type]
    except PositionError:
        raise PositionError(f"{value!r} is not a position; use {POSITION_HELP}") from None
    return str(p)


# A config field: stored as canonical text ("last", "-3") so saved configs stay plain JSON and
# `Position.parse(cfg.positions)` recovers the typed value.
StudyPosition = Annotated[str, BeforeValidator(_position_text)]

__all__ = [
    "flag_of", "nearest", "settings_error_line", "DEFAULT_GREEDY", "DEFAULT_MAX_NEW_TOKENS", "DEFAULT_SEED", "DEFAULT_TEMPERATURE", "DEFAULT_TOP_P",
    "MaxNewTokens", "NAMED_POSITIONS", "Position", "PositionError", "SAMPLING_FIELDS", "SamplingSettings", "Seed",
    "StudyPosition", "Temperature", "TopP",
]
