"""A benchmark row and the median-of-repeats timer every benchmark uses."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One figure beside its baseline; ``ratio`` is figure/baseline (higher is better if rates)."""

    group: str
    what: str
    value: float
    unit: str
    baseline_what: str = ""
    baseline_value: float | None = None
    goal: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline_value in (None, 0):
            return None
        return self.value / self.baseline_value


def rate(fn: Callable[[], object], n: int, *, repeats: int = 5) -> float:
    """Median operations per second of calling *fn* *n* times, over *repeats* runs."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append(n / (time.perf_counter() - start))
    return statistics.median(samples)


def seconds(fn: Callable[[], object], *, repeats: int = 5) -> float:
    """Median wall time in seconds of one call of *fn*, over *repeats* runs."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def render(rows: list[Row]) -> str:
    """The table ``make bench`` prints."""
    head = ("group", "measure", "value", "baseline (same run)", "baseline value", "ratio", "goal")

    def fmt(v: float | None, unit: str) -> str:
        if v is None:
            return ""
        return f"{v:,.3g} {unit}" if v < 100 else f"{v:,.0f} {unit}"

    lines = [head]
    lines.extend(
        (
            r.group,
            r.what,
            fmt(r.value, r.unit),
            r.baseline_what,
            fmt(r.baseline_value, r.unit),
            "" if r.ratio is None else f"{r.ratio:.2f}x",
            r.goal,
        )
        for r in rows
    )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for i, line in enumerate(lines):
        out.append(" | ".join(cell.ljust(widths[j]) for j, cell in enumerate(line)).rstrip())
        if i == 0:
            out.append("-+-".join("-" * w for w in widths))
    return "\n".join(out)
