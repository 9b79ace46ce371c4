"""Species records with their predictors already extracted: tables in, the training-set contract out.

Many users arrive with covariates extracted (the NCEAS benchmark, sPlot/EVA extracts, a colleague's MaxEnt inputs):
presence-only records and background sites as rows of predictor values, and optionally independent presence-absence
sites. :func:`read_tables` turns them into

* training samples: one per site (records at the same site, or the same coordinates when there is no site column,
  merged: a site where two species were recorded is one sample with two presences), labels 1 for the site's species
  and -1 (unknown) for the others, plus the background sites (``bg``, all labels -1, as presence-only background);
* test sites (:class:`TestSites`): labels 1/0 per species where surveyed, -1 where the site's group did not survey it;

with one feature matrix layout for both: the continuous predictors, then the categorical ones one-hot encoded with the
levels seen in the training tables (a level seen only at test sites has no column: all zeros). Coordinates are kept for
spatial blocks, in a metric CRS (geographic ones are projected to a Lambert azimuthal equal-area centred on the data).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pyproj import CRS
from pyproj.exceptions import CRSError

from geoplantnet.core.config import TableConfig
from geoplantnet.core.errors import ConfigError, InputError
from geoplantnet.core.grid import to_grid_crs

log = logging.getLogger(__name__)
_ID_LIKE = {"occ", "occurrence", "presence", "pa", "count", "weight", "fold"}


class TableError(InputError):
    """A table that cannot be read or lacks what the configuration names (the message names the file and column)."""


@dataclass
class TableSamples:
    """Training samples from tables: features ``(n, F)`` (NaN = missing), labels ``(n, S)`` int8, source per row."""

    x: np.ndarray
    y: np.ndarray
    features: np.ndarray
    label: np.ndarray
    source: np.ndarray
    species: list[str]
    feature_names: list[str]
    group_of: dict[str, str]  # species -> biological group ("" without a group column)
    crs: str  # CRS of x/y (metric)
    notes: list[str] = field(default_factory=list)

    def write(
        self,
        path: str | Path,
        species: list[str] | None = None,
        attrs: dict[str, str] | None = None,
        shuffle_seed: int | None = None,
    ) -> str:
        """Write the training-set contract (``env_point`` = the features) for ``species`` (default: all): their
        presence-only sites and the background. ``shuffle_seed`` writes the rows in a seeded random order, so that
        batches drawn a few storage chunks at a time mix records and background."""
        from geoplantnet.samples.training_set import write_training_set  # torch: not for reading tables

        cols = [self.species.index(s) for s in species] if species is not None else list(range(len(self.species)))
        names = [self.species[c] for c in cols]
        keep = np.flatnonzero((self.source == "bg") | (self.label[:, cols] == 1).any(axis=1))
        if shuffle_seed is not None:
            keep = np.random.default_rng(shuffle_seed).permutation(keep)
        return write_training_set(
            path,
            x=self.x[keep],
            y=self.y[keep],
            label=self.label[keep][:, cols],
            source=self.source[keep],
            species=names,
            env_point=self.features[keep],
            attrs={**(attrs or {}), "variables": " ".join(self.feature_names), "crs": self.crs},
            chunk_samples=65_536,
        )


@dataclass
class TestSites:
    """Independent presence-absence sites: features ``(m, F)`` as in training; labels ``(m, S)`` 1/0, -1 unsurveyed."""

    x: np.ndarray
    y: np.ndarray
    features: np.ndarray
    label: np.ndarray
    site: np.ndarray
    group: np.ndarray  # per site ("" without a group column)
    notes: list[str] = field(default_factory=list)  # sites and species left out of the scores, and why

    def write(self, path: str | Path, species: list[str], all_species: list[str], feature_names: list[str]) -> str:
        from geoplantnet.samples.training_set import write_training_set  # torch: not for reading tables

        cols = [all_species.index(s) for s in species]
        return write_training_set(
            path,
            x=self.x,
            y=self.y,
            label=self.label[:, cols],
            source=np.full(len(self.x), "pa"),
            species=species,
            env_point=self.features,
            attrs={"variables": " ".join(feature_names)},
            chunk_samples=4096,
        )


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """A CSV (plain or compressed) or Parquet file as a DataFrame; :class:`TableError` naming ``what`` and the file."""
    path = Path(path)
    if not path.exists():
        raise TableError(f"{path}: no such file ({what})")
    try:
        if path.suffix.lower() in (".parquet", ".pq", ".geoparquet"):
            return pd.read_parquet(path)
        return pd.read_csv(path, low_memory=False)
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: cannot read it ({what}; {exc.__class__.__name__}: {exc})") from None


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """``frame`` as CSV or Parquet by ``path``'s extension (.csv, else Parquet), without the index."""
    if Path(path).suffix.lower() == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def _require(frame: pd.DataFrame, columns: list[str | None], where: str) -> None:
    for col in columns:
        if col is not None and col not in frame.columns:
            raise TableError(f"{where}: no column {col!r} (columns: {list(frame.columns)[:30]})")


def _metric_crs(crs: str, lon: np.ndarray, lat: np.ndarray) -> CRS:
    """The table's CRS when projected; a Lambert azimuthal equal-area centred on the points when geographic."""
    try:
        src = CRS.from_user_input(crs)
    except CRSError as exc:
        raise ConfigError(f"table.crs={crs!r} is not a CRS ({exc})") from None
    if src.is_projected:
        return src
    ok = np.isfinite(lon) & np.isfinite(lat)
    lon0, lat0 = float(np.median(lon[ok])), float(np.median(lat[ok]))
    return CRS.from_proj4(f"+proj=laea +lat_0={lat0:.4f} +lon_0={lon0:.4f} +x_0=0 +y_0=0 +datum=WGS84 +units=m")


def choose_predictors(
    cfg: TableConfig, presence: pd.DataFrame, background: pd.DataFrame
) -> tuple[list[str], list[str]]:
    """The predictor columns (configured, or the numeric columns both tables share minus ids, coordinates, flags and
    columns constant in a table) and a note per column left out and why."""
    reserved = {cfg.site, cfg.species, cfg.group, cfg.x, cfg.y, cfg.presence_column}
    if cfg.predictors is not None:
        for frame, where in ((presence, cfg.presence), (background, cfg.background)):
            _require(frame, list(cfg.predictors), str(where))
        return list(cfg.predictors), []
    left_out = []
    chosen = []
    for col in presence.columns:
        if col in reserved or col not in background.columns:
            continue
        numeric = pd.api.types.is_numeric_dtype(presence[col]) and pd.api.types.is_numeric_dtype(background[col])
        if not numeric and col not in cfg.categorical:
            continue
        if col.lower() in _ID_LIKE:
            left_out.append(f"{col} (an occurrence/id-like column)")
        elif presence[col].nunique(dropna=True) <= 1 or background[col].nunique(dropna=True) <= 1:
            # a column constant within one table but not the other (an occurrence flag) would leak the answer
            left_out.append(f"{col} (constant in a table)")
        else:
            chosen.append(col)
    if not chosen:
        raise TableError(f"{cfg.presence}: no numeric predictor column shared with {cfg.background}")
    return chosen, left_out


class FeatureEncoder:
    """Continuous columns as they are, categorical ones one-hot with the training levels (NaN level -> all zeros)."""

    def __init__(self, frame: pd.DataFrame, predictors: list[str], categorical: list[str]) -> None:
        unknown = [c for c in categorical if c not in predictors]
        if unknown:
            raise ConfigError(f"table.categorical names {unknown}, which are not predictors ({predictors})")
        self.continuous = [c for c in predictors if c not in categorical]
        self.levels = {c: sorted(frame[c].dropna().unique().tolist(), key=str) for c in categorical}
        self.names = self.continuous + [f"{c}={lv}" for c, lvs in self.levels.items() for lv in lvs]

    def __call__(self, frame: pd.DataFrame, where: str) -> np.ndarray:
        """The feature matrix of ``frame``'s rows; an infinite predictor value is refused (no tool can use it, and it
        is no measurement: a division by zero or a no-data code upstream), a missing one is NaN."""
        _require(frame, [*self.continuous, *self.levels], where)
        values = frame[self.continuous].apply(pd.to_numeric, errors="coerce").to_numpy("float64")
        infinite = np.isinf(values).sum(axis=0)
        if infinite.any():
            counts = ", ".join(f"{c}: {n}" for c, n in zip(self.continuous, infinite, strict=True) if n)
            raise TableError(
                f"{where}: {int(np.isinf(values).any(axis=1).sum())} rows with infinite predictor values (columns: "
                f"{counts}); give finite numbers, or leave a value empty where it is missing"
            )
        parts = [values.astype("float32")]
        for c, lvs in self.levels.items():
            values = frame[c].to_numpy()
            parts.append(np.stack([values == lv for lv in lvs], axis=1).astype("float32"))
        return np.concatenate(parts, axis=1)


def _coords(frame: pd.DataFrame, cfg: TableConfig, crs: CRS) -> tuple[np.ndarray, np.ndarray]:
    x = pd.to_numeric(frame[cfg.x], errors="coerce").to_numpy(float)
    y = pd.to_numeric(frame[cfg.y], errors="coerce").to_numpy(float)
    return to_grid_crs(x, y, cfg.crs, epsg=crs)  # type: ignore[arg-type]


def _site_keys(frame: pd.DataFrame, cfg: TableConfig) -> pd.Series:
    if cfg.site in frame.columns:
        return frame[cfg.site].astype(str)
    return frame[cfg.x].astype(str) + "," + frame[cfg.y].astype(str)


def read_tables(cfg: TableConfig) -> tuple[TableSamples, TestSites | None]:
    """Read the configured tables into training samples and (with ``test``) independent test sites."""
    if not cfg.presence or not cfg.background:
        raise ConfigError("sdm-table needs table.presence and table.background (--presence / --background)")
    po = read_table(cfg.presence, "presence-only records")
    bg = read_table(cfg.background, "background")
    _require(po, [cfg.species, cfg.x, cfg.y, cfg.group], cfg.presence)
    _require(bg, [cfg.x, cfg.y], cfg.background)
    predictors, left_out = choose_predictors(cfg, po, bg)
    encode = FeatureEncoder(pd.concat([po[predictors], bg[predictors]]), predictors, list(cfg.categorical))
    lon = pd.to_numeric(pd.concat([po[cfg.x], bg[cfg.x]]), errors="coerce").to_numpy(float)
    lat = pd.to_numeric(pd.concat([po[cfg.y], bg[cfg.y]]), errors="coerce").to_numpy(float)
    crs = _metric_crs(cfg.crs, lon, lat)

    po = po[po[cfg.species].notna()].copy()
    po["_species"] = po[cfg.species].astype(str).str.strip()
    species = sorted(po["_species"].unique())
    if not species:
        raise TableError(f"{cfg.presence}: no record with a species in column {cfg.species!r}")
    group_of = (
        po.groupby("_species")[cfg.group].agg(lambda g: str(g.mode().iloc[0])).to_dict()
        if cfg.group
        else dict.fromkeys(species, "")
    )
    po["_site"] = _site_keys(po, cfg)
    sites = po.drop_duplicates("_site").set_index("_site")
    hits = pd.crosstab(po["_site"], po["_species"]).reindex(index=sites.index, columns=species).fillna(0)
    label_po = np.where(hits.to_numpy() > 0, 1, -1).astype("int8")
    x_po, y_po = _coords(sites, cfg, crs)
    x_bg, y_bg = _coords(bg, cfg, crs)
    samples = TableSamples(
        x=np.concatenate([x_po, x_bg]),
        y=np.concatenate([y_po, y_bg]),
        features=np.concatenate([encode(sites, cfg.presence), encode(bg, cfg.background)]),
        # background sites are pseudo-absences of every species (0), as in the training sets of rasters, so the
        # cross-validation scores records against them; the presence-only losses read the source, not these labels
        label=np.concatenate([label_po, np.zeros((len(bg), len(species)), "int8")]),
        source=np.array(["po"] * len(sites) + ["bg"] * len(bg)),
        species=species,
        feature_names=encode.names,
        group_of=group_of,
        crs=crs.to_wkt(),
        notes=[
            f"{len(po)} presence-only records of {len(species)} species at {len(sites)} sites; {len(bg)} background "
            f"sites; predictors: {', '.join(predictors)}"
            + (f" (categorical, one-hot: {', '.join(cfg.categorical)})" if cfg.categorical else ""),
            *([f"columns not used as predictors: {', '.join(left_out)}"] if left_out else []),
        ],
    )
    bad = ~np.isfinite(samples.x) | ~np.isfinite(samples.y)
    if bad.any():
        raise TableError(f"{cfg.presence} / {cfg.background}: {int(bad.sum())} rows without valid {cfg.x}/{cfg.y}")
    test = _read_test(cfg, encode, species, crs) if cfg.test else None
    return samples, test


def _read_test(cfg: TableConfig, encode: FeatureEncoder, species: list[str], crs: CRS) -> TestSites:
    """Wide (one 1/0 column per training species) or long (site, species, presence) test table, with predictors from
    the table itself or from ``test_env`` joined on the site column."""
    assert cfg.test is not None
    table = read_table(cfg.test, "test")
    if cfg.species in table.columns:  # long: one row per site x species
        _require(table, [cfg.site, cfg.presence_column], cfg.test)
        table = table.assign(_species=table[cfg.species].astype(str).str.strip())
        wide = table.pivot_table(index=cfg.site, columns="_species", values=cfg.presence_column, aggfunc="max")
        first = table.drop_duplicates(cfg.site).set_index(cfg.site)
        table = first.drop(columns=[c for c in (cfg.species, cfg.presence_column, "_species") if c in first])
        table = table.join(wide.reindex(columns=[s for s in species if s in wide.columns])).reset_index()
    _require(table, [cfg.site], cfg.test)
    present = [s for s in species if s in table.columns]
    if not present:
        raise TableError(
            f"{cfg.test}: none of the {len(species)} training species is a column (wide) and there is "
            f"no {cfg.species!r} column (long)"
        )
    if cfg.test_env:
        env = read_table(cfg.test_env, "test-site predictors")
        _require(env, [cfg.site], cfg.test_env)
        drop = [c for c in env.columns if c in table.columns and c != cfg.site]
        table = table.drop(columns=drop).merge(env, on=cfg.site, how="left", validate="one_to_one")
    where = cfg.test_env or cfg.test
    _require(table, [cfg.x, cfg.y], where)
    label = np.full((len(table), len(species)), -1, "int8")
    for k, s in enumerate(species):
        if s in table.columns:
            v = pd.to_numeric(table[s], errors="coerce").to_numpy(float)
            if np.isfinite(v).any() and not np.isin(v[np.isfinite(v)], (0, 1)).all():
                raise TableError(f"{cfg.test}: column {s!r} holds values other than 1/0")
            label[:, k] = np.where(np.isfinite(v), v, -1).astype("int8")
    features = encode(table, where)
    notes = []
    missing = len(species) - len(present)
    if missing:
        notes.append(f"{cfg.test}: {missing} of {len(species)} training species have no test column: not scored")
    # A site with a missing predictor is left out, as MaxEnt skips samples with missing values: the models would
    # score an imputed value (training medians), not the site, and a test must not measure the imputation.
    unknown = np.isnan(features[:, : len(encode.continuous)]).any(axis=1)
    if unknown.all():
        raise TableError(f"{where}: every test site lacks a predictor value ({', '.join(encode.continuous)})")
    if unknown.any():
        gaps = np.isnan(features[:, : len(encode.continuous)]).sum(axis=0)
        empty = [c for c, n in zip(encode.continuous, gaps, strict=True) if n]
        notes.append(
            f"{where}: {int(unknown.sum())} of {len(table)} test sites left out of the scores: missing values of "
            f"{', '.join(empty)}"
        )
        keep = ~unknown
        table, label, features = table[keep].reset_index(drop=True), label[keep], features[keep]
    notes += _unscored(label, species, cfg.test)
    for note in notes:
        log.warning("%s", note)
    x, y = _coords(table, cfg, crs)
    group = table[cfg.group].astype(str).to_numpy() if cfg.group and cfg.group in table else np.full(len(table), "")
    return TestSites(x, y, features, label, table[cfg.site].astype(str).to_numpy(), group, notes)


def _unscored(label: np.ndarray, species: list[str], where: str) -> list[str]:
    """A note on the species that cannot be scored at the test sites (an AUC needs a presence and an absence where
    the species was surveyed); :class:`TableError` when no species can be, before any model is fitted."""
    presences, absences = (label == 1).sum(axis=0), (label == 0).sum(axis=0)
    surveyed = (label >= 0).any(axis=0)
    scorable = (presences > 0) & (absences > 0)
    if not scorable.any():
        raise TableError(
            f"{where}: no species has both a presence (1) and an absence (0) at the test sites "
            f"({int(surveyed.sum())} species surveyed, {int((surveyed & (presences == 0)).sum())} of them never "
            "present): nothing can be scored"
        )
    notes = []
    for what, which in (("no presence", presences == 0), ("no absence", absences == 0)):
        named = [s for s, bad in zip(species, which & surveyed, strict=True) if bad]
        if named:
            shown = ", ".join(named[:8]) + (f" and {len(named) - 8} more" if len(named) > 8 else "")
            notes.append(f"{where}: {len(named)} species with {what} at the test sites not scored: {shown}")
    return notes
