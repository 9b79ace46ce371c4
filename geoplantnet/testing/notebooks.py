"""The project's notebooks (``notebooks/*.ipynb``) executed headless as a reader runs them: one kernel each, started
with the store root in ``GEOPLANTNET_ROOT``, any cell error raised."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# Jupyter's own backend, which draws with Agg (no display) and puts the figures in the outputs: a backend set for the
# test run (MPLBACKEND=Agg) would leave the notebooks without figures
INLINE = "module://matplotlib_inline.backend_inline"


def notebooks() -> list[Path]:
    """The committed notebooks, by name."""
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def declared_products(path: Path) -> list[str]:
    """The products a notebook says it shows (its metadata ``geoplantnet.products``)."""
    import nbformat

    return list(nbformat.read(path, as_version=4).metadata.get("geoplantnet", {}).get("products", []))


def execute(path: Path, env: Mapping[str, str], cwd: Path, *, timeout: int = 300) -> Any:
    """``path`` run top to bottom in a fresh ``python3`` kernel whose environment is this process's plus ``env``
    (the kernel inherits it: the worktree's package on ``PYTHONPATH`` included), in ``cwd``, with Jupyter's inline
    matplotlib backend (headless); returns the executed notebook (``CellExecutionError`` on a cell error)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    saved = {k: os.environ.get(k) for k in (*env, "MPLBACKEND")}
    os.environ.update({**env, "MPLBACKEND": INLINE})
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def text_outputs(nb: Any) -> str:
    """Everything the notebook's code cells printed or displayed as text."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            parts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return "".join(parts)
