"""A run's ``summary.json``: strict JSON (no ``NaN``), written the same way by every command that leaves one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf (Python or NumPy) replaced by None, so it can be written as strict JSON (no ``NaN``)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_summary(path: str | Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Write :func:`json_safe` of ``summary`` to ``path`` (indented) and return it."""
    out = json_safe(summary)
    Path(path).write_text(json.dumps(out, indent=2, allow_nan=False))
    return out
