"""A habitat map scored against a reference raster (the virtual region's ``truth/habitat.zarr``), pixel by pixel.

Both maps as EUNIS codes (``""`` = no data); only pixels with a code in both count. Overall accuracy at the map's
level and with both codes cut to each level above (:func:`geoplantnet.samples.plots.eunis_ancestor`), and a table
per reference class: pixels, pixels predicted as it, producer's accuracy (recall), user's accuracy (precision), F1.
Codes are cut once per distinct code, never per pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from geoplantnet.samples.plots import eunis_ancestor


def class_codes(index: np.ndarray, codes: Sequence[str]) -> np.ndarray:
    """Class indices (any shape; negative = no data) -> their codes as an object array, ``""`` for no data."""
    index = np.asarray(index)
    table = np.asarray([*codes, ""], dtype=object)  # a negative index lands on the trailing ""
    return table[np.where(index >= 0, index, len(codes))]


def cut_codes(codes: np.ndarray, level: int) -> np.ndarray:
    """Codes cut to ``level`` (``""`` stays ``""``)."""
    distinct, inverse = np.unique(np.asarray(codes, dtype=object).astype(str), return_inverse=True)
    cut = np.asarray([eunis_ancestor(c, level) if c else "" for c in distinct], dtype=object)
    return cut[inverse.reshape(np.shape(codes))]


def class_table(predicted: np.ndarray, truth: np.ndarray) -> pd.DataFrame:
    """Per reference class: pixels, predicted pixels, correct, recall, precision, F1 (1-D code arrays)."""
    classes = sorted(set(truth.tolist()) | set(predicted.tolist()))
    t = pd.Series(truth).value_counts()
    p = pd.Series(predicted).value_counts()
    hit = pd.Series(truth[truth == predicted]).value_counts()
    df = pd.DataFrame(
        {"pixels": t.reindex(classes, fill_value=0), "predicted": p.reindex(classes, fill_value=0)}, index=classes
    )
    df["correct"] = hit.reindex(classes, fill_value=0)
    df["recall"] = df["correct"] / df["pixels"].where(df["pixels"] > 0)
    df["precision"] = df["correct"] / df["predicted"].where(df["predicted"] > 0)
    df["f1"] = 2 * df["recall"] * df["precision"] / (df["recall"] + df["precision"])
    df.index.name = "habitat"
    return df


def score_habitat_map(predicted: np.ndarray, truth: np.ndarray, level: int = 3) -> dict[str, Any]:
    """Accuracy of ``predicted`` against ``truth`` (code arrays of one shape, ``""`` = no data) at ``level`` and the
    levels above, and the per-class table at ``level`` (``classes``, a data frame)."""
    predicted = np.asarray(predicted, dtype=object)
    truth = np.asarray(truth, dtype=object)
    if predicted.shape != truth.shape:
        raise ValueError(f"the maps differ in shape: {predicted.shape} vs {truth.shape}")
    both = (predicted != "") & (truth != "")
    p, t = cut_codes(predicted[both], level), cut_codes(truth[both], level)
    out: dict[str, Any] = {
        "pixels": int(both.sum()),
        "no_data_predicted": int(((predicted == "") & (truth != "")).sum()),
    }
    for lvl in range(level, 0, -1):
        pl, tl = (p, t) if lvl == level else (cut_codes(p, lvl), cut_codes(t, lvl))
        out[f"accuracy_level{lvl}"] = float(np.mean(pl == tl)) if len(pl) else float("nan")
    out["classes"] = class_table(p, t)
    return out
