"""Settings shared by several commands, declared once: the sampling settings and the capture position.

Why one place: the sampling defaults used to be written out in the CLI, ``RunConfig``, the generation
backends and GRPO, and drifted; the position setting was renamed and retyped on its way to capture.
Every consumer now reads the defaults and the ranges below, so a bad value (``temperature=-1``,
``top_p=2``, ``max_new_tokens=0``, ``position=first``) is refused before any model loads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

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


class PositionError(ValueError):
    """A position that does not parse; a ValueError so that pydantic reports it as a field error."""


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
            raise PositionError("position 'reply' is reserved and not captured yet")
        return self.kind

    @property
    def one_per_item(self) -> bool:
        return self.kind in ("last", "index")


POSITION_HELP = "last, or a token index of the chat-templated prompt (negative counts from the end)"


def _position_text(value: object) -> str:
    """Canonical text of a position that gives one vector per item (what `nlalab run` can study)."""
    try:
        p = Position.parse(value)  # type: ignore[arg-type]
    except PositionError:
        raise PositionError(f"{value!r} is not a position; use {POSITION_HELP}") from None
    if not p.one_per_item:
        raise PositionError(f"position {str(p)!r} gives no single vector per item; the study needs "
                            f"{POSITION_HELP}")
    return str(p)


# A config field: stored as canonical text ("last", "-3") so saved configs stay plain JSON and
# `Position.parse(cfg.positions)` recovers the typed value.
StudyPosition = Annotated[str, BeforeValidator(_position_text)]

__all__ = [
    "DEFAULT_GREEDY", "DEFAULT_MAX_NEW_TOKENS", "DEFAULT_SEED", "DEFAULT_TEMPERATURE", "DEFAULT_TOP_P",
    "MaxNewTokens", "NAMED_POSITIONS", "Position", "PositionError", "SAMPLING_FIELDS", "SamplingSettings", "Seed",
    "StudyPosition", "Temperature", "TopP",
]
