"""PNG figures: one way to make a figure and write it, so every report's figures share size rules, resolution and
the headless backend (a worker or CI has no display)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DPI = 110


@contextlib.contextmanager
def figure(
    path: str | Path,
    nrows: int = 1,
    ncols: int = 1,
    *,
    panel: tuple[float, float] = (4.2, 4.0),
    size: tuple[float, float] | None = None,
    dpi: int = DPI,
    **kwargs: Any,
) -> Iterator[tuple[Any, Any]]:
    """A figure of ``nrows`` x ``ncols`` panels of ``panel`` inches (or of ``size`` inches in all, for figures with
    room for titles and colour bars), written as PNG to ``path`` when the block ends without an error (and closed
    either way). Yields the figure and a 2-D array of axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kwargs.setdefault("layout", "constrained")
    figsize = size or (panel[0] * ncols, panel[1] * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, **kwargs)
    try:
        yield fig, axes
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi, format="png")
    finally:
        plt.close(fig)


def bare(axes: Any) -> None:
    """No ticks on map panels (coordinates are in the store, not the picture)."""
    for ax in getattr(axes, "ravel", lambda: [axes])():
        ax.set_xticks([])
        ax.set_yticks([])
