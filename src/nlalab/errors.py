"""One exception type with a message shaped for humans: what, where, found, expected, fix."""

from __future__ import annotations


class NLALabError(Exception):
    """A user-facing error. The CLI prints ``str(err)`` alone, without a traceback."""


class ValidationProblem(NLALabError):
    """One problem found while checking a pair, formatted as one line."""

    def __init__(self, where: str, field: str, found: object, expected: object, fix: str):
        self.where, self.field, self.found, self.expected, self.fix = where, field, found, expected, fix
        super().__init__(self.line())

    def line(self) -> str:
        return (
            f"{self.where}: {self.field}: found {self.found!s}, expected {self.expected!s}. Fix: {self.fix}"
        )


def check_finite(x, what: str) -> None:
    """Refuse NaN/Inf vectors early: they silently poison every downstream mean."""
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    bad = ~torch.isfinite(t)
    if bad.any():
        rows = bad.reshape(t.shape[0], -1).any(-1).nonzero().flatten().tolist() if t.ndim > 1 else []
        where = f" (rows {rows[:10]}{'...' if len(rows) > 10 else ''})" if rows else ""
        raise NLALabError(
            f"{what} contains NaN or Inf values{where}. Fix: check the source of the vectors; "
            "nlalab never imputes non-finite values."
        )
