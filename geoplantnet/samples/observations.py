"""Species records: presence-only and presence-absence observations from any file and CRS, onto the grid.

Every loader returns :class:`Observations`: one row per (record, species) with ``survey_id`` (None for presence-only
records), ``species_id``, ``species_name``, ``presence`` (1/0), ``x``/``y`` in the grid CRS, and a report of what was
dropped and why. :func:`build_samples` turns them into model samples (surveys, records, background points).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from geoplantnet.core.errors import InputError
from geoplantnet.core.grid import Grid, to_grid_crs
from geoplantnet.samples.kinds import Source

log = logging.getLogger(__name__)

TRUE = {"1", "1.0", "true", "t", "yes", "y", "present", "presence", "p"}
FALSE = {"0", "0.0", "false", "f", "no", "n", "absent", "absence", "a"}
COLUMNS = ["record_id", "survey_id", "species_id", "species_name", "presence", "x", "y", "date"]


class ObservationsError(InputError):
    """Observations that cannot be read or used (one line naming the file, column or species)."""


@dataclass
class Observations:
    """Standardised records in the grid CRS and the counts of what loading dropped."""

    records: pd.DataFrame
    epsg: int
    report: dict[str, int] = field(default_factory=dict)
    source: str = ""

    def summary(self) -> str:
        r = self.report
        dropped = ", ".join(f"{k.removeprefix('dropped_')} {v}" for k, v in r.items() if k.startswith("dropped_") and v)
        n_surveys = self.records["survey_id"].nunique()
        n_po = int(self.records["survey_id"].isna().sum())
        return (
            f"{r.get('read', len(self.records))} rows read, {len(self.records)} kept ({n_surveys} surveys, "
            f"{n_po} presence-only records, {self.records['species_id'].nunique()} species)"
            + (f"; dropped: {dropped}" if dropped else "")
        )


@dataclass(frozen=True)
class SpeciesVocabulary:
    """Stable species ids (given ids, else names) and names, in a fixed order (the model's output columns)."""

    ids: tuple[str, ...]
    names: tuple[str, ...]

    @classmethod
    def from_observations(cls, obs: Observations) -> SpeciesVocabulary:
        table = obs.records[["species_id", "species_name"]].drop_duplicates("species_id").sort_values("species_id")
        return cls(tuple(table.species_id.astype(str)), tuple(table.species_name.astype(str)))

    def encode(self, species_ids: Any) -> np.ndarray:
        """Column index of each species id; unknown species raise one clear error."""
        index = {s: i for i, s in enumerate(self.ids)}
        values = [str(s) for s in np.atleast_1d(species_ids)]
        unknown = sorted({s for s in values if s not in index})
        if unknown:
            raise ObservationsError(
                f"unknown species: {unknown[0]!r}{f' and {len(unknown) - 1} more' if len(unknown) > 1 else ''} "
                f"(not in the vocabulary of {len(self.ids)} species)"
            )
        return np.array([index[s] for s in values], dtype=np.int64)

    def to_json(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps({"ids": list(self.ids), "names": list(self.names)}, indent=1))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> SpeciesVocabulary:
        d = json.loads(Path(path).read_text())
        return cls(tuple(d["ids"]), tuple(d["names"]))


def _presence(values: pd.Series, where: str) -> pd.Series:
    text = values.astype(str).str.strip().str.lower()
    bad = ~text.isin(TRUE | FALSE)
    if bad.any():
        raise ObservationsError(
            f"{where}: presence values must be 1/0, true/false or present/absent, got {values[bad].iloc[0]!r}"
        )
    return text.isin(TRUE).astype(np.int8)


def _finish(frame: pd.DataFrame, grid: Grid | None, epsg: int, where: str, read: int) -> Observations:
    """Drop bad coordinates, points outside the grid, empty names and duplicates; count each."""
    report = {"read": read}
    finite = np.isfinite(frame["x"].to_numpy(float)) & np.isfinite(frame["y"].to_numpy(float))
    report["dropped_bad_coordinates"] = int((~finite).sum())
    frame = frame[finite]
    named = frame["species_id"].astype(str).str.strip().ne("") & frame["species_id"].notna()
    report["dropped_no_species"] = int((~named).sum())
    frame = frame[named]
    if grid is not None:
        inside = grid.contains(frame["x"].to_numpy(), frame["y"].to_numpy())
        report["dropped_outside_grid"] = int((~inside).sum())
        frame = frame[inside]
    before = len(frame)
    frame = frame.drop_duplicates(subset=["survey_id", "species_id", "presence", "x", "y", "date"])
    report["dropped_duplicates"] = before - len(frame)
    if frame.empty:
        raise ObservationsError(f"{where}: no valid records left ({report})")
    frame = frame.reset_index(drop=True)
    obs = Observations(frame[COLUMNS], epsg, report, where)
    dropped = sum(v for k, v in report.items() if k.startswith("dropped_"))
    # dropped records change what a model learns: say so where the user looks, not only in the report
    (log.warning if dropped else log.info)("%s: %s", where, obs.summary())
    return obs


def load_observations(
    path: str | os.PathLike[str],
    *,
    crs: str | int = "EPSG:4326",
    x: str = "lon",
    y: str = "lat",
    species: str = "species",
    presence: str | None = None,
    survey: str | None = None,
    date: str | None = None,
    grid: Grid | None = None,
) -> Observations:
    """Records from a CSV (coordinates ``x``/``y`` in ``crs``) or a GeoParquet (its geometry, any CRS).

    Rows with a ``survey`` id are presence-absence surveys (complete species lists); the others are presence-only
    records. Without a ``presence`` column every row is a presence.
    """
    path = Path(path)
    where = str(path)
    epsg = grid.epsg if grid is not None else 3035
    try:
        if path.suffix.lower() in (".parquet", ".geoparquet"):
            import geopandas as gpd

            table = gpd.read_parquet(path)
            if table.crs is None:
                raise ObservationsError(f"{where}: GeoParquet without a CRS")
            geom = table.geometry.to_crs(epsg)
            xs, ys = geom.x.to_numpy(), geom.y.to_numpy()
            ok = np.ones(len(table), dtype=bool)
        else:
            table = pd.read_csv(path)
            for col in (x, y):
                if col not in table.columns:
                    raise ObservationsError(f"{where}: no column {col!r} (columns: {list(table.columns)})")
            lon = pd.to_numeric(table[x], errors="coerce").to_numpy(float)
            lat = pd.to_numeric(table[y], errors="coerce").to_numpy(float)
            ok = np.isfinite(lon) & np.isfinite(lat)
            if str(crs).upper() in ("EPSG:4326", "4326", "OGC:CRS84"):
                ok &= (np.abs(lon) <= 180) & (np.abs(lat) <= 90)
            xs, ys = np.full(len(table), np.nan), np.full(len(table), np.nan)
            if ok.any():
                xs[ok], ys[ok] = to_grid_crs(lon[ok], lat[ok], crs, epsg=epsg)
    except pd.errors.EmptyDataError:
        raise ObservationsError(f"{where}: the file is empty (no header, no records)") from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, pa.ArrowException) as exc:
        reason = f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}"
        raise ObservationsError(f"{where}: cannot read ({reason})") from None
    if table.empty:
        raise ObservationsError(f"{where}: no records (a header and no rows)")
    for col in (species, presence, survey, date):
        if col is not None and col not in table.columns:
            raise ObservationsError(f"{where}: no column {col!r} (columns: {list(table.columns)})")
    xs = np.where(ok, xs, np.nan)
    names = table[species].astype("string").str.strip()
    frame = pd.DataFrame(
        {
            "record_id": [f"r{i:07d}" for i in range(len(table))],
            "survey_id": table[survey].astype("string") if survey else pd.Series(pd.NA, index=table.index),
            "species_id": names.fillna(""),
            "species_name": names.fillna(""),
            "presence": _presence(table[presence], where) if presence else np.int8(1),
            "x": xs,
            "y": ys,
            "date": table[date].astype(str) if date else None,
        }
    )
    return _finish(frame, grid, epsg, where, len(table))


def from_virtual_region(manifest: Any) -> Observations:
    """The simulator's plots (complete species lists) and presence-only records."""
    import geopandas as gpd

    plots = gpd.read_parquet(manifest.plots)
    plot_species = pd.read_parquet(manifest.plot_species)
    po = gpd.read_parquet(manifest.presence_only)
    grid = manifest.map_grid
    located = plot_species.merge(
        pd.DataFrame({"plot_id": plots.plot_id, "x": plots.geometry.x, "y": plots.geometry.y, "date": plots.date}),
        on="plot_id",
    )
    pa = pd.DataFrame(
        {
            "record_id": located.plot_id + ":" + located.species_id,
            "survey_id": located.plot_id.astype("string"),
            "species_id": located.species_id,
            "species_name": located.species_name,
            "presence": np.int8(1),
            "x": located.x,
            "y": located.y,
            "date": located.date.astype(str),
        }
    )
    records = pd.DataFrame(
        {
            "record_id": po.record_id,
            "survey_id": pd.Series(pd.NA, index=po.index, dtype="string"),
            "species_id": po.species_id,
            "species_name": po.species_name,
            "presence": np.int8(1),
            "x": po.geometry.x,
            "y": po.geometry.y,
            "date": po.date.astype(str),
        }
    )
    frame = pd.concat([pa, records], ignore_index=True)
    return _finish(frame, grid, grid.epsg, str(manifest.root), len(frame))


@dataclass
class Samples:
    """Model samples: one per survey, presence-only record or background point."""

    x: np.ndarray
    y: np.ndarray
    label: np.ndarray  # int8 (n, species): 1 present, 0 absent, -1 unknown
    source: np.ndarray  # Source values: "pa" | "po" | "bg"
    vocab: SpeciesVocabulary

    def __len__(self) -> int:
        return len(self.x)


# Rounds of candidates a background draw may take before it settles for fewer points than asked: each round that
# is not read from a mask reads the chunks holding its candidates.
BACKGROUND_ROUNDS = 8


class CellValidity(Protocol):
    """Which cells have predictor data (:class:`geoplantnet.samples.valid_cells.ValidCells`)."""

    grid: Grid

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray: ...

    def cells(self) -> np.ndarray | None: ...


def _centres(g: Grid, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.divmod(cells, g.width)
    return g.left + (cols + 0.5) * g.resolution, g.top - (rows + 0.5) * g.resolution


def _uniform_from_mask(
    grid: Grid, n: int, cells: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct cells (centres) of ``grid`` among ``cells`` (every valid one), uniformly: exact, one draw."""
    cx, cy = _centres(grid, cells)
    if len(cx) < n:
        log.warning(
            "background: the study area has only %d cells with predictor data (every variable finite), so %d "
            "background points instead of the %d asked (train.n_background)",
            len(cx),
            len(cx),
            n,
        )
        pick = rng.permutation(len(cx))
    else:
        pick = rng.choice(len(cx), n, replace=False)
    return cx[pick], cy[pick]


def background_points(
    obs: Observations,
    grid: Grid,
    n: int,
    *,
    kind: str = "target_group",
    seed: int = 0,
    jitter_px: float = 2.0,
    valid: CellValidity | None = None,
    rounds: int = BACKGROUND_ROUNDS,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` background locations inside ``grid``, all on cells where ``valid`` says the predictors have data.

    ``target_group``: drawn from the presence-only records' locations (the observers' effort) with a Gaussian jitter
    of ``jitter_px`` pixels, so the background carries the same observer bias as the presences and the bias cancels
    (Phillips et al. 2009, Ecol. Appl. 19:181). ``uniform`` (or no presence-only records): distinct cells (their
    centres), uniform over the grid.

    Candidates are drawn in rounds sized by the share of valid candidates so far, at most ``rounds`` of them; only
    when the valid area cannot supply ``n`` points (fewer valid cells, or none near the records) are fewer returned,
    with a warning. The result depends on the seed and the data only.
    """
    if kind not in ("target_group", "uniform"):
        raise ObservationsError(f"unknown background kind {kind!r} (target_group or uniform)")
    rng = np.random.default_rng(seed)
    po = obs.records[obs.records.survey_id.isna()]
    near_records = kind == "target_group" and len(po) > 0
    cells = valid.cells() if valid is not None else None
    if not near_records and valid is not None and cells is not None and valid.grid == grid:
        return _uniform_from_mask(grid, n, cells, rng)
    n_cells = grid.width * grid.height
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    tried = np.empty(0, dtype=np.int64)  # uniform: cells already drawn, valid or not (distinct cells)
    got = drawn = done = 0
    while got < n and done < rounds and len(tried) < n_cells:
        # the first round assumes half the candidates are usable (as the old 2x over-draw did); later rounds use the
        # share seen so far, floored so a nearly empty valid area cannot ask for unbounded candidates
        rate = max(got / drawn, 0.02) if drawn else 0.5
        m = int(np.ceil((n - got) / rate * 1.25)) + 16
        if near_records:
            pick = rng.integers(0, len(po), m)
            bx = po.x.to_numpy()[pick] + rng.normal(0, jitter_px * grid.resolution, m)
            by = po.y.to_numpy()[pick] + rng.normal(0, jitter_px * grid.resolution, m)
            inside = grid.contains(bx, by)
            bx, by = bx[inside], by[inside]
        else:
            cand = rng.integers(0, n_cells, m)
            _, first = np.unique(cand, return_index=True)
            cand = cand[np.sort(first)]
            cand = cand[~np.isin(cand, tried)]
            tried = np.concatenate([tried, cand])
            bx, by = _centres(grid, cand)
        ok = valid.at(bx, by) if valid is not None else np.ones(len(bx), dtype=bool)
        drawn += m
        done += 1
        bx, by = bx[ok][: n - got], by[ok][: n - got]
        xs.append(bx)
        ys.append(by)
        got += len(bx)
    if got < n:
        why = (
            f"the grid has only {n_cells} cells"
            if len(tried) >= n_cells and valid is None
            else f"after {done} rounds of candidates ({drawn} drawn, {got / max(drawn, 1):.1%} on cells with "
            f"predictor data{', near the records' if near_records else ''})"
        )
        log.warning(
            "background: %d points instead of the %d asked (train.n_background): %s; the valid area (every "
            "predictor finite) cannot supply more",
            got,
            n,
            why,
        )
    if not xs:
        return np.empty(0), np.empty(0)
    return np.concatenate(xs), np.concatenate(ys)


def build_samples(
    obs: Observations,
    vocab: SpeciesVocabulary,
    grid: Grid,
    *,
    n_background: int = 0,
    background: str = "target_group",
    seed: int = 0,
    valid: CellValidity | None = None,
) -> Samples:
    """Surveys -> one sample each (1 listed present, 0 listed absent, 0 for unlisted species: complete lists);
    presence-only records -> one sample each (1 for the species, -1 unknown elsewhere); plus background points (0),
    only on cells where ``valid`` says the predictors have data (:func:`background_points`)."""
    rec = obs.records
    n_species = len(vocab.ids)
    col = vocab.encode(rec.species_id.to_numpy())
    xs, ys, labels, sources = [], [], [], []
    surveyed = rec.survey_id.notna().to_numpy()
    if surveyed.any():
        groups = pd.factorize(rec.survey_id[surveyed])[0]
        n = groups.max() + 1
        lab = np.zeros((n, n_species), dtype=np.int8)
        lab[groups, col[surveyed]] = rec.presence.to_numpy()[surveyed]
        first = pd.Series(np.arange(surveyed.sum())).groupby(groups).first().to_numpy()
        xs.append(rec.x.to_numpy()[surveyed][first])
        ys.append(rec.y.to_numpy()[surveyed][first])
        labels.append(lab)
        sources.append(np.full(n, Source.PA))
    single = ~surveyed
    if single.any():
        lab = np.full((int(single.sum()), n_species), -1, dtype=np.int8)
        lab[np.arange(len(lab)), col[single]] = rec.presence.to_numpy()[single]
        xs.append(rec.x.to_numpy()[single])
        ys.append(rec.y.to_numpy()[single])
        labels.append(lab)
        sources.append(np.full(len(lab), Source.PO))
    if n_background:
        bx, by = background_points(obs, grid, n_background, kind=background, seed=seed, valid=valid)
        xs.append(bx)
        ys.append(by)
        labels.append(np.zeros((len(bx), n_species), dtype=np.int8))
        sources.append(np.full(len(bx), Source.BG))
    return Samples(
        np.concatenate(xs), np.concatenate(ys), np.concatenate(labels), np.concatenate(sources).astype(str), vocab
    )
