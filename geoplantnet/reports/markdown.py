"""Markdown for people: numbers shown the same way in every report, and the one table writer."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

MISSING = "–"  # what a report shows where there is no number (None, NaN, inf)


def fmt(value: Any, digits: int = 2) -> str:
    """``value`` for a table: floats with ``digits`` decimals, a dash for a missing or non-finite number, anything
    else as ``str``."""
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else MISSING
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, digits: int | None = None) -> list[str]:
    """A Markdown table's lines: ``header``, then one line per row (cells through :func:`fmt` with ``digits`` when
    given, else ``str``); an empty cell is written ``| |``."""
    show = (lambda v: fmt(v, digits)) if digits is not None else str

    def line(cells: Iterable[str]) -> str:
        return "|" + "".join(f" {c} |" if c else " |" for c in cells)

    return [line(header), "|" + "---|" * len(header), *(line(show(v) for v in row) for row in rows)]


def frame_table(frame: pd.DataFrame, *, index: str | None = None, digits: int | None = None) -> list[str]:
    """:func:`table` of a data frame; with ``index`` its index is the first column, under that name."""
    header = ([index] if index is not None else []) + [str(c) for c in frame.columns]
    rows = (([idx] if index is not None else []) + list(row) for idx, row in frame.iterrows())
    return table(header, rows, digits=digits)


def document(*blocks: Sequence[str] | str) -> str:
    """Join blocks (a line or a list of lines) with blank lines between them; ends with a newline."""
    lines: list[str] = []
    for block in blocks:
        if lines:
            lines.append("")
        lines.extend([block] if isinstance(block, str) else block)
    return "\n".join(lines) + "\n"
