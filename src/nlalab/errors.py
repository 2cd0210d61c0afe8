"""One exception type with a message shaped for humans: what, where, found, expected, fix."""

from __future__ import annotations


# Exit codes of the CLI (documented in docs/errors.md): 0 ok, 1 a check failed (validate, a verdict
# gate), 2 a usage error (a bad flag, setting or input file, found before work starts), 3 a runtime
# error (a file fault, disk full, a lock held, a model that fails to load).
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3


class NLALabError(Exception):
    """A user-facing error. The CLI prints ``str(err)`` alone, without a traceback, and exits with
    ``exit_code`` (runtime error unless a subclass says otherwise)."""

    exit_code = EXIT_RUNTIME


class UsageError(NLALabError):
    """A bad setting or input, found before any model loads: exit 2."""

    exit_code = EXIT_USAGE


class CheckFailed(NLALabError):
    """A check the user asked for did not pass (e.g. ``nlalab validate``): exit 1."""

    exit_code = EXIT_CHECK_FAILED


class _Located:
    """A one-line problem with a place: where, field, what was found, what was expected, the fix."""

    def __init__(self, where: str, field: str, found: object, expected: object, fix: str):
        self.where, self.field, self.found, self.expected, self.fix = where, field, found, expected, fix
        super().__init__(self.line())

    def line(self) -> str:
        return (
            f"{self.where}: {self.field}: found {self.found!s}, expected {self.expected!s}. Fix: {self.fix}"
        )


class ValidationProblem(_Located, UsageError):
    """One problem found while checking a pair, formatted as one line."""


class FileFault(_Located, NLALabError):
    """A file on disk is truncated, corrupt or missing a part (exit 3): re-download or rebuild it.

    Same one-line shape as :class:`ValidationProblem`, so ``nlalab validate`` lists it among the checks."""


def check_finite(x, what: str) -> None:
    """Refuse NaN/Inf vectors early: they silently poison every downstream mean."""
    import torch

    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    bad = ~torch.isfinite(t)
    if bad.any():
        rows = bad.reshape(t.shape[0], -1).any(-1).nonzero().flatten().tolist() if t.ndim > 1 else []
        where = f" (rows {rows[:10]}{'...' if len(rows) > 10 else ''})" if rows else ""
        raise UsageError(
            f"{what} contains NaN or Inf values{where}. Fix: check the source of the vectors; "
            "nlalab never imputes non-finite values."
        )
