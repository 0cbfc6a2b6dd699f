"""Progress of a batched run: a bar on a terminal, plain lines in a log (images/s in both).

On a terminal (or in a notebook) :class:`Progress` draws a ``keras.utils.Progbar``, which
redraws its line with ``\\r`` and backspaces. Anywhere else (a file, a pipe, a CI log) it
prints plain lines, as Keras' ``fit(verbose=2)`` does: no ``\\r``, no backspaces, no colour
codes; one line per 10% of a run of known length, or per :data:`INTERVAL` seconds if that
comes first; a run of unknown length (a Dataset) prints a line every :data:`INTERVAL`
seconds and its final line once, at :meth:`Progress.close`::

    10/100 batches (10%) - 640 images - 212.4 images/s - 301 ms/batch - 3 s elapsed - ETA 27 s
    ...
    100/100 batches (100%) - 6400 images - 230.9 images/s - 277 ms/batch - 28 s
    37 batches - 2368 images - 230.1 images/s - 278 ms/batch - 10 s elapsed   (unknown length)
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import IO

#: Seconds between two plain lines when no 10% step was reached in between.
INTERVAL = 10.0


def is_interactive(stream: IO) -> bool:
    """Whether ``stream`` redraws lines: a terminal, or a notebook's output."""
    if "ipykernel" in sys.modules:
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


class Progress:
    """Progress over steps (batches) of ``rows`` inputs each, with the throughput.

    Parameters
    ----------
    verbose : "auto", 0 or 1
        ``1`` always shows it, ``0`` never, ``"auto"`` when the run has more than one step
        (known at the start for arrays; a Dataset's progress appears with its second step).
    total : int or None
        Steps in the run, ``None`` when unknown (a Dataset).
    unit : str, default "batch"
        What a step is, as printed (``"batch"``, ``"shard"``, ``"method"``).
    stream : file-like or None
        Where to write; ``None``: ``sys.stdout`` (where Keras writes its bar).
    clock : callable, default time.perf_counter
        Seconds, for the rate and the line interval (tests pass a fake clock).

    Past the first step, which pays for tracing, the throughput counts from its end.
    """

    def __init__(self, verbose, total: int | None, unit: str = "batch", *,
                 stream: IO | None = None, clock: Callable[[], float] = time.perf_counter):
        self.total = total
        self.unit = unit
        self.stream = sys.stdout if stream is None else stream
        self.clock = clock
        # "auto" with a Dataset: the first step may be the whole run, shown only once the
        # second step arrives
        self.lazy = verbose == "auto" and total is None
        self.show = verbose == 1 or (verbose == "auto" and (total is None or total > 1))
        self.interactive = self.show and is_interactive(self.stream)
        self.steps = self.rows = self.first_rows = 0
        self.start = self.since = self.last_line = clock()
        self.rate = 0.0
        self.bar = None
        self.closed = False
        self._printed_at = -1  # the step count of the last plain line
        if self.interactive:
            import keras

            self.bar = keras.utils.Progbar(total, unit_name=unit, stateful_metrics=["images/s"])

    def update(self, rows: int) -> None:
        """One more step of ``rows`` real inputs (host integers: no device sync)."""
        self.steps += 1
        self.rows += rows
        if not self.show:
            return
        now = self.clock()
        self.rate = (self.rows - self.first_rows) / max(now - self.since, 1e-9)
        if self.steps == 1:
            self.since, self.first_rows = now, rows
        if self.bar is not None:
            self._update_bar()
        elif not (self.lazy and self.steps == 1) and self._line_due(now):
            self._line(now)

    def close(self) -> None:
        """End the run: a bar of unknown length gets its final line; in a log, the final
        line is printed unless the last update already printed it. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if not self.show or self.steps <= (1 if self.lazy else 0):
            return
        if self.bar is not None:
            if self.bar.target is None:
                self.bar.update(self.steps, [("images/s", self.rate)], finalize=True)
        elif self._printed_at != self.steps:
            self._line(self.clock(), final=True)

    # -- a terminal ---------------------------------------------------------------------
    def _update_bar(self) -> None:
        if self.lazy and self.steps == 1:
            self.bar.verbose = 0  # let the bar time its first step without printing it
            self.bar.update(1)
            self.bar.verbose = 1
            return
        self.bar.update(self.steps, [("images/s", self.rate)])

    # -- a log --------------------------------------------------------------------------
    def _line_due(self, now: float) -> bool:
        if self.total:
            if self.steps >= self.total:
                return True
            tenth = math.floor(10 * self.steps / self.total)
            if tenth > math.floor(10 * max(self._printed_at, 0) / self.total):
                return True
        return now - self.last_line >= INTERVAL

    def _line(self, now: float, final: bool = False) -> None:
        elapsed = now - self.start
        units = f"{self.unit}es" if self.unit.endswith(("s", "sh", "ch", "x")) else f"{self.unit}s"
        if self.total:
            count = f"{self.steps}/{self.total} {units} ({100 * self.steps / self.total:.0f}%)"
        else:
            count = f"{self.steps} {units if self.steps != 1 else self.unit}"
        # per step past the first (which traces), as the rate
        step = ((now - self.since) / (self.steps - 1) if self.steps > 1
                else now - self.start)
        per_step = (f"{1000 * step:.0f} ms/{self.unit}" if step < 1
                    else f"{step:.1f} s/{self.unit}")
        parts = [count, f"{self.rows} images", f"{self.rate:.1f} images/s", per_step]
        finished = final or (self.total is not None and self.steps >= self.total)
        if finished:
            parts.append(_duration(elapsed))
        else:
            parts.append(f"{_duration(elapsed)} elapsed")
            if self.total and self.rate > 0:
                remaining = (self.total - self.steps) * self.rows / self.steps / self.rate
                parts.append(f"ETA {_duration(remaining)}")
        self.stream.write(" - ".join(parts) + "\n")
        self.stream.flush()
        self._printed_at = self.steps
        self.last_line = now
