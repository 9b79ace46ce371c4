"""Vegetation plots as sentences of species, with their habitat labels and locations.

Pl@ntBERT reads a plot as its species ordered by cover, most abundant first. Plot tables come in two shapes:

* wide: one row per plot, a species-list column (``"Poa pratensis;Festuca rubra"`` or GLC24's space-separated ids),
  already in cover order (or in the order the source gives: GLC24 lists carry no cover);
* long: one row per plot x species (x layer) with a cover column: a species recorded in several layers is merged by
  summed cover, then the plot's species are sorted by cover, descending (ties by name, so the order is stable).
  The covers are kept (:attr:`Plots.covers`, layers combined as overlapping covers) for the EUNIS-ESy expert system,
  with the plot-table columns it reads as header fields (:attr:`Plots.header`, ``habitats.esy_header``).

Habitat codes follow the EUNIS 2021 hierarchy: level 1 is the group letter (``R``) or, for the littoral groups, two
letters (``MA``); each further character is one level (``R1`` -> ``R1A``). A plot labelled with several codes (GLC24
has a few, space-separated) is ambiguous for a single-label classifier: it stays in the corpus for pre-training but
carries no label, and the count is reported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from geoplantnet.core.config import HabitatsConfig
from geoplantnet.core.errors import InputError
from geoplantnet.samples.tables import read_table

log = logging.getLogger(__name__)
_MULTI_CODE = re.compile(r"[\s,;/|]+")
# One habitat code as EUNIS writes them: a letter, then letters, digits or dots (R1A, MA225, E1.2); "!" (a tentative
# assignment in EUNIS-ESy output) is stripped. Anything else in a habitat column is a mistake, not a class.
_CODE = re.compile(r"[A-Za-z][A-Za-z0-9.]{0,15}")
_MISSING = ("nan", "none", "?")


class PlotTableError(InputError):
    """A plot table that cannot be read or lacks a configured column (the message names the file and column)."""


def eunis_level(code: str) -> int:
    """The EUNIS level of a code: ``R`` 1, ``R1`` 2, ``R1A`` 3; the littoral ``MA2`` 2, ``MA211`` 4."""
    code = code.strip()
    return max(len(code) - (1 if code.startswith("M") and len(code) >= 2 else 0), 1) if code else 0


def eunis_ancestor(code: str, level: int) -> str:
    """The code cut to ``level`` (a code at or above that level is returned unchanged)."""
    code = code.strip()
    extra = 1 if code.startswith("M") and len(code) >= 2 else 0
    return code[: level + extra] if eunis_level(code) > level else code


def species_token(name: str) -> str:
    """A species as one token: whitespace becomes ``_`` (``Poa pratensis`` -> ``Poa_pratensis``)."""
    return "_".join(str(name).split())


@dataclass
class Plots:
    """Plots as sentences: species tokens in cover order, the habitat code (``""`` = unlabelled), coordinates."""

    ids: np.ndarray
    sentences: list[list[str]]
    habitat: np.ndarray  # object array of codes, "" where unlabelled or ambiguous
    x: np.ndarray
    y: np.ndarray
    notes: list[str] = field(default_factory=list)
    # cover % of each sentence's species (a long table's layers combined as overlapping covers); None: lists only
    covers: list[np.ndarray] | None = None
    header: pd.DataFrame | None = None  # one row per plot: the columns named by habitats.esy_header

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labelled(self) -> np.ndarray:
        """Boolean mask of plots with one habitat code."""
        return np.asarray([bool(h) for h in self.habitat])

    def subset(self, mask_or_index: np.ndarray) -> Plots:
        """The plots selected by a boolean mask or an index array."""
        idx = np.flatnonzero(mask_or_index) if np.asarray(mask_or_index).dtype == bool else np.asarray(mask_or_index)
        return Plots(
            ids=self.ids[idx],
            sentences=[self.sentences[i] for i in idx],
            habitat=self.habitat[idx],
            x=self.x[idx],
            y=self.y[idx],
            notes=list(self.notes),
            covers=None if self.covers is None else [self.covers[i] for i in idx],
            header=None if self.header is None else self.header.iloc[idx].reset_index(drop=True),
        )

    def at_level(self, level: int) -> np.ndarray:
        """Habitat codes cut to ``level`` (unlabelled stay ``""``)."""
        return np.asarray([eunis_ancestor(h, level) if h else "" for h in self.habitat], dtype=object)

    @classmethod
    def concat(cls, parts: Sequence[Plots]) -> Plots:
        """One corpus from several tables (ids are kept as given; covers and header only where every table has them)."""
        return cls(
            ids=np.concatenate([p.ids for p in parts]),
            sentences=[s for p in parts for s in p.sentences],
            habitat=np.concatenate([p.habitat for p in parts]),
            x=np.concatenate([p.x for p in parts]),
            y=np.concatenate([p.y for p in parts]),
            notes=[n for p in parts for n in p.notes],
            covers=None if any(p.covers is None for p in parts) else [c for p in parts for c in p.covers],  # type: ignore[union-attr]
            header=None
            if any(p.header is None for p in parts)
            else pd.concat([p.header for p in parts], ignore_index=True),
        )


def _need(df: pd.DataFrame, path: str, column: str, setting: str) -> None:
    if column not in df.columns:
        raise PlotTableError(
            f"{path}: no column {column!r} (habitats.{setting}); columns are {', '.join(map(str, df.columns[:12]))}"
        )


def _split(values: pd.Series, separator: str | None) -> list[list[str]]:
    text = values.fillna("").astype(str)
    if separator is None:
        sample = " ".join(text.head(200))
        separator = ";" if ";" in sample else "," if "," in sample else None
    return [[species_token(s) for s in (t.split(separator) if separator else t.split()) if s.strip()] for t in text]


def _dedupe(sentence: list[str]) -> list[str]:
    """First occurrence wins: a species listed twice keeps its higher-cover (earlier) place."""
    return list(dict.fromkeys(sentence))


def _habitat_codes(values: pd.Series) -> tuple[np.ndarray, int]:
    """One code per plot; several codes in one cell -> unlabelled (returned count)."""
    out, ambiguous = [], 0
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append("")
            continue
        codes = [c for c in _MULTI_CODE.split(str(v).strip()) if c and c.lower() not in _MISSING]
        codes = list(dict.fromkeys(c.rstrip("!") for c in codes))
        if len(codes) > 1:
            ambiguous += 1
        out.append(codes[0] if len(codes) == 1 else "")
    return np.asarray(out, dtype=object), ambiguous


def _rows(mask: np.ndarray, values: pd.Series) -> str:
    """The first rows of ``mask`` (data rows counted from 1, the header not counted) with their values."""
    where = np.flatnonzero(mask)
    shown = ", ".join(f"{i + 1} ({str(values.iloc[i])[:20]!r})" for i in where[:5])
    return f"row{'s' if len(where) > 1 else ''} {shown}" + (f" and {len(where) - 5} more" if len(where) > 5 else "")


def _check_rows(df: pd.DataFrame, cfg: HabitatsConfig, path: str, labels: bool) -> None:
    """Refuse a table whose habitat codes do not look like EUNIS codes or whose coordinates are not numbers, naming
    the rows, before anything is trained on it (an empty cell is fine: unlabelled, or a plot without a location)."""
    if labels and cfg.habitat in df.columns:
        text = df[cfg.habitat].astype("string").fillna("").str.strip()
        bad = np.asarray(
            [
                any(not _CODE.fullmatch(c.rstrip("!")) for c in _MULTI_CODE.split(t) if c and c.lower() not in _MISSING)
                for t in text
            ]
        )
        if bad.any():
            raise PlotTableError(
                f"{path}: column {cfg.habitat!r} (habitats.habitat) holds values that are not EUNIS habitat codes "
                f"(letters, digits, dots, e.g. R1A or E1.2) in {_rows(bad, df[cfg.habitat])}"
            )
    for column, setting in ((cfg.x, "x"), (cfg.y, "y")):
        if column not in df.columns:
            continue
        raw = df[column]
        given = raw.notna().to_numpy() & raw.astype("string").str.strip().ne("").fillna(False).to_numpy()
        bad = given & ~np.isfinite(pd.to_numeric(raw, errors="coerce").to_numpy("float64"))
        if bad.any():
            raise PlotTableError(
                f"{path}: column {column!r} (habitats.{setting}) holds values that are not finite numbers in "
                f"{_rows(bad, raw)}; leave a plot's coordinates empty where they are unknown"
            )


def _coordinates(df: pd.DataFrame, cfg: HabitatsConfig) -> tuple[np.ndarray, np.ndarray]:
    if cfg.x in df.columns and cfg.y in df.columns:
        return (
            pd.to_numeric(df[cfg.x], errors="coerce").to_numpy("float64"),
            pd.to_numeric(df[cfg.y], errors="coerce").to_numpy("float64"),
        )
    nan = np.full(len(df), np.nan)
    return nan, nan.copy()


def plots_from_frame(
    df: pd.DataFrame, cfg: HabitatsConfig, path: str = "<table>", labels: bool = True, esy: bool = False
) -> Plots:
    """Plots from a table in memory (wide species lists, or long rows with ``cfg.cover``); ``esy``: keep the columns
    ``habitats.esy_header`` names as :attr:`Plots.header` (refused where one is missing)."""
    _need(df, path, cfg.plot, "plot")
    _need(df, path, cfg.species, "species")
    _check_rows(df, cfg, path, labels)
    esy_header = cfg.esy_header if esy else {}
    for field_name, column in esy_header.items():
        _need(df, path, column, f"esy_header.{field_name}")
    header_columns = list(dict.fromkeys(esy_header.values()))
    notes: list[str] = []
    covers = None
    if cfg.cover is not None:
        _need(df, path, cfg.cover, "cover")
        long = df[[cfg.plot, cfg.species, cfg.cover]].copy()
        long[cfg.cover] = pd.to_numeric(long[cfg.cover], errors="coerce")
        if long[cfg.cover].isna().any():
            raise PlotTableError(f"{path}: column {cfg.cover!r} (habitats.cover) has non-numeric or empty values")
        long = long[long[cfg.cover] > 0]
        long["_token"] = long[cfg.species].map(species_token)
        # ESy's rule for several records of one taxon: independent overlapping covers, 100 (1 - prod(1 - c/100))
        long["_log"] = np.log1p(-np.minimum(long[cfg.cover].to_numpy("float64"), 100.0 - 1e-9) / 100.0)
        merged = long.groupby([cfg.plot, "_token"], sort=False)[[cfg.cover, "_log"]].sum().reset_index()
        merged = merged.sort_values([cfg.plot, cfg.cover, "_token"], ascending=[True, False, True], kind="stable")
        by_plot = merged.groupby(cfg.plot, sort=False)["_token"].apply(list)
        first = df.drop_duplicates(cfg.plot).set_index(cfg.plot)
        first = first.loc[by_plot.index]
        ids = by_plot.index.to_numpy()
        sentences = list(by_plot)
        covers = [-np.expm1(np.asarray(c)) * 100.0 for c in merged.groupby(cfg.plot, sort=False)["_log"].apply(list)]
        merged_rows = len(long) - len(merged)
        if merged_rows:
            notes.append(f"{path}: {merged_rows} rows of species already in their plot (layers) merged by summed cover")
        frame = first.reset_index()
    else:
        frame = df.drop_duplicates(cfg.plot)
        if len(frame) < len(df):
            notes.append(f"{path}: {len(df) - len(frame)} repeated plot rows ignored (first kept)")
        ids = frame[cfg.plot].to_numpy()
        sentences = [_dedupe(s) for s in _split(frame[cfg.species], cfg.separator)]
    if labels and cfg.habitat in frame.columns:
        habitat, ambiguous = _habitat_codes(frame[cfg.habitat])
        if ambiguous:
            notes.append(f"{path}: {ambiguous} plots with several habitat codes kept for pre-training only")
    else:
        habitat = np.full(len(frame), "", dtype=object)
    x, y = _coordinates(frame, cfg)
    empty = np.asarray([len(s) == 0 for s in sentences])
    if empty.any():
        notes.append(f"{path}: {int(empty.sum())} plots without species dropped")
    header = frame[header_columns].reset_index(drop=True) if header_columns else None
    plots = Plots(
        ids=np.asarray(ids), sentences=sentences, habitat=habitat, x=x, y=y, notes=notes, covers=covers, header=header
    )
    return plots.subset(~empty)


def read_plots(path: str | Path, cfg: HabitatsConfig, labels: bool = True, esy: bool = False) -> Plots:
    """Read a plot table (CSV or Parquet); ``labels=False`` ignores any habitat column (a pre-training corpus);
    ``esy``: keep the EUNIS-ESy header columns (:func:`plots_from_frame`)."""
    df = read_table(path, "plot table")
    if df.empty:
        raise PlotTableError(f"{path}: the plot table has no rows")
    return plots_from_frame(df, cfg, str(path), labels=labels, esy=esy)


def read_habitat_names(path: str | Path) -> dict[str, str]:
    """Code -> name from a CSV whose first column holds codes and whose first column named like ``*name*`` the names
    (e.g. the EUNIS 2021 habitat list)."""
    df = read_table(path, "habitat names")
    named = [c for c in df.columns[1:] if "name" in str(c).lower()]
    if df.empty or not named:
        raise PlotTableError(f"{path}: expected a code column then a column with 'name' in its header")
    codes = df.iloc[:, 0].astype(str).str.strip()
    return dict(zip(codes, df[named[0]].fillna("").astype(str), strict=True))


def assemblage_order(
    prob: np.ndarray, thresholds: np.ndarray | None, max_species: int, top_k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted assemblages as sentences, vectorised: ``prob`` (n, S) -> species index (n, L) best first and a mask
    of the kept ones (those at or above their threshold, or the ``top_k`` best; at most ``max_species``)."""
    prob = np.asarray(prob, dtype="float32")
    n, s = prob.shape
    length = min(max_species, s, top_k if top_k is not None else s)
    if length <= 0 or n == 0:
        return np.zeros((n, 0), dtype="int64"), np.zeros((n, 0), dtype=bool)
    if top_k is None:
        if thresholds is None:
            raise PlotTableError("an assemblage needs species thresholds or a top-K (habitats.map_species)")
        # Rank only the species at or above their thresholds: one below it never displaces one above.
        prob = np.where(prob >= np.asarray(thresholds, dtype="float32")[None, :], prob, -np.inf)
    part = np.argpartition(-prob, length - 1, axis=1)[:, :length] if length < s else np.tile(np.arange(s), (n, 1))
    order = np.take_along_axis(part, np.argsort(-np.take_along_axis(prob, part, axis=1), axis=1, kind="stable"), 1)
    return order, np.isfinite(np.take_along_axis(prob, order, axis=1))
