"""Progress of a long command, readable both live and in a log file.

On a terminal (stderr is a TTY) each counted stage draws a tqdm bar. Anywhere else (``nohup``, CI, a
pipe into ``tee``) a bar would be one line rewritten thousands of times, so the reporter writes plain
lines instead: one when a stage starts, one every ``interval`` seconds while it is counted (count,
percent, elapsed, ETA), and one when it ends (its elapsed time). ``quiet`` silences everything.

The pipeline drives it through four calls: :meth:`Progress.stage`, :meth:`Progress.advance`,
:meth:`Progress.note` and :meth:`Progress.done`; :meth:`Progress.on_stage` adapts the name-only
``run_study(on_stage=...)`` hook.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO


def fmt_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: short enough for a log line, exact to the second under an hour."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def eta_seconds(count: int, total: Optional[int], elapsed: float) -> Optional[float]:
    """Remaining time at the mean rate so far; None while nothing is counted or the total is unknown."""
    if total is None or count <= 0 or elapsed <= 0:
        return None
    return elapsed / count * max(0, total - count)


class Progress:
    """Per-stage progress lines (log) or bars (terminal). See the module docstring."""

    def __init__(self, stream: Optional[TextIO] = None, *, quiet: bool = False, tty: Optional[bool] = None,
                 prefix: str = "[nlalab]", interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.tty = bool(tty if tty is not None else getattr(self.stream, "isatty", lambda: False)())
        self.prefix = prefix
        self.interval = interval
        self.clock = clock
        self.t_start = clock()
        self.name: Optional[str] = None
        self.total: Optional[int] = None
        self.count = 0
        self.t_stage = self.t_start
        self.t_line = self.t_start
        self.timings: dict[str, float] = {}
        self._bar = None

    # ---- output ------------------------------------------------------------------------------
    def _write(self, text: str) -> None:
        if self.quiet:
            return
        line = f"{self.prefix} {text}" if self.prefix else text
        if self._bar is not None:
            self._bar.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def _status(self) -> str:
        elapsed = self.clock() - self.t_stage
        if self.total:
            pct = 100.0 * self.count / self.total
            head = f"{self.name}: {self.count}/{self.total} ({pct:.0f}%)"
        else:
            head = f"{self.name}: {self.count} done"
        eta = eta_seconds(self.count, self.total, elapsed)
        tail = f", ETA {fmt_duration(eta)}" if eta is not None else ""
        return f"{head}, elapsed {fmt_duration(elapsed)}{tail}"

    # ---- the interface -----------------------------------------------------------------------
    def stage(self, name: str, total: Optional[int] = None) -> None:
        """Close the running stage (its elapsed time is printed) and start ``name``; ``total`` enables ETA."""
        self._close_stage()
        now = self.clock()
        self.name, self.total, self.count = name, (int(total) if total is not None else None), 0
        self.t_stage = self.t_line = now
        size = f" ({self.total} to do)" if self.total is not None else ""
        self._write(f"{name}: started{size} at {fmt_duration(now - self.t_start)} into the run")
        if self.tty and not self.quiet and self.total is not None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=name, file=self.stream, leave=False, dynamic_ncols=True)

    def advance(self, n: int = 1) -> None:
        """``n`` more units of the running stage are done."""
        if self.name is None:
            return
        self.count += int(n)
        if self._bar is not None:
            self._bar.update(int(n))
            return
        now = self.clock()
        finished = self.total is not None and self.count >= self.total
        if finished or now - self.t_line >= self.interval:
            self.t_line = now
            self._write(self._status())

    def note(self, text: str) -> None:
        """A free line (settings, which controls run, a warning) that does not end the stage."""
        self._write(text)

    def done(self, text: Optional[str] = None) -> None:
        """End the running stage and print the whole command's elapsed time."""
        self._close_stage()
        total = self.clock() - self.t_start
        self._write(f"{text + ' ' if text else ''}finished in {fmt_duration(total)}")

    def on_stage(self, name: str, total: Optional[int] = None) -> None:
        """The ``run_study(on_stage=...)`` hook: a stage name starts that stage (``total``, when the caller
        knows it, enables counts and ETA through :meth:`advance`); ``"done"`` ends the last stage."""
        if name == "done":
            self._close_stage()
        else:
            self.stage(name, total)

    # ---- internals ---------------------------------------------------------------------------
    def _close_stage(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.name is None:
            return
        elapsed = self.clock() - self.t_stage
        self.timings[self.name] = self.timings.get(self.name, 0.0) + elapsed
        counted = (f" ({self.count}/{self.total})" if self.total is not None
                   else f" ({self.count})" if self.count else "")
        self._write(f"{self.name}: done{counted} in {fmt_duration(elapsed)}")
        self.name = None


__all__ = ["Progress", "eta_seconds", "fmt_duration"]
