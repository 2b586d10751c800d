"""Markdown tables and number formats shared by the benchmark's reports.

Pure Python on purpose: the child processes of the small-model table import it without JAX.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["markdown", "number", "seconds", "short_seconds", "times"]


def seconds(x: float | None) -> str:
    """Seconds with three significant figures up to 100, then whole seconds; ``—`` for none.

    Examples:
        >>> seconds(0.0123), seconds(4.567), seconds(1234.5), seconds(None)
        ('0.012', '4.57', '1,234', '—')
    """
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 100 else f"{x:,.0f}"


def short_seconds(x: float | None) -> str:
    """Seconds with three significant figures at any scale (for millisecond timings).

    Examples:
        >>> short_seconds(0.000512), short_seconds(0.0123), short_seconds(12.345)
        ('0.000512', '0.0123', '12.3')
    """
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def times(x: float | None) -> str:
    """A ratio such as ``2.58×`` or ``1,509×``; ``—`` for none.

    Examples:
        >>> times(2.581), times(1509.2)
        ('2.58×', '1,509×')
    """
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.2f}×" if x < 10 else f"{x:,.0f}×"


def number(x: float | None, digits: int = 1) -> str:
    """A number with thousands separators and ``digits`` decimals; ``—`` for none."""
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:,.{digits}f}"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with padded columns.

    Examples:
        >>> print(markdown(["a", "bb"], [["1", "2"]]))
        | a | bb |
        |---|----|
        | 1 | 2  |
    """
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    return "\n".join(lines)
