"""The training set on disk (a Zarr group) and the PyTorch Dataset that reads it lazily, batch by batch.

Contract (written by the extraction step or :func:`write_training_set`; everything but labels and coordinates is
optional, since users may bring data without Sentinel-2)::

    patch     (sample, season, band, py, px) float32   Sentinel-2 seasonal composites around the point (NaN = no data)
    series    (sample, season, band)         float32   composite values at the point
    env       (sample, var, ey, ex)          float32   environmental patch around the point (NaN = no data)
    env_point (sample, var)                  float32   environmental values at the point
    label     (sample, species)              int8      1 present, 0 absent, -1 unknown
    source    (sample,)                      str       "pa" survey | "po" presence-only record | "bg" background point
    x, y      (sample,)                      float64   EPSG:3035; coords ``species`` and ``species_name``

Patches are centred so that the point's pixel is at index ``size // 2`` on each axis (for even sizes: one more pixel
before the point than after it); :meth:`geoplantnet.models.species_net.SpeciesNet.dense_forward` relies on it.

Reading: samples are grouped by storage chunk; :class:`ChunkBatchSampler` draws batches from a few chunks at a time
and :class:`TrainingSet` decodes each chunk once into a small cache, so an epoch reads the store about once, whatever
the shuffling. Normalisation statistics come from the training indices only.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
import zarr
from pydantic import BaseModel, ConfigDict

from geoplantnet.samples.kinds import ENV_POINT, SOURCE_CODE, SOURCES, Modality

MODALITY_VARS = {m: str(m) for m in Modality}  # each modality's stored variable
_STATS_MAX_SAMPLES = 20_000  # enough for per-channel means; bounds the statistics pass on huge sets


class TrainingSetError(ValueError):
    """A training set that is missing, malformed, or inconsistent with what is asked of it."""


class NormStats(BaseModel):
    """Per-channel mean and standard deviation of each modality (from the training indices only)."""

    model_config = ConfigDict(frozen=True)

    patch_mean: list[float] | None = None
    patch_std: list[float] | None = None
    series_mean: list[float] | None = None
    series_std: list[float] | None = None
    env_mean: list[float] | None = None
    env_std: list[float] | None = None

    def pair(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        mean, std = getattr(self, f"{name}_mean"), getattr(self, f"{name}_std")
        if mean is None or std is None:
            raise TrainingSetError(f"normalisation statistics have no {name!r} entry")
        return np.asarray(mean, np.float32), np.asarray(std, np.float32)


# -- preparation: normalise, add validity masks, fill NaN with 0 (shared by training and dense inference)


def _normalise(a: np.ndarray, mean: np.ndarray, std: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * a.ndim
    shape[axis] = -1
    return (a.astype(np.float32) - mean.reshape(shape)) / std.reshape(shape)


def prepare_patch(a: np.ndarray, stats: NormStats, mask: bool = True) -> np.ndarray:
    """``(..., season, band, y, x)`` -> ``(..., season*band [+ season], y, x)``: normalised, NaN -> 0, masks last."""
    mean, std = stats.pair(Modality.PATCH)
    z = _normalise(a, mean, std, axis=-3)
    lead, (t, c, h, w) = z.shape[:-4], z.shape[-4:]
    parts = [np.nan_to_num(z, nan=0.0).reshape(*lead, t * c, h, w)]
    if mask:
        parts.append(np.isfinite(z).all(axis=-3).astype(np.float32))
    return np.concatenate(parts, axis=-3)


def prepare_series(a: np.ndarray, stats: NormStats, mask: bool = True) -> np.ndarray:
    """``(..., season, band)`` -> ``(..., band [+ 1], season)`` (channels first, for a 1-D conv over seasons)."""
    mean, std = stats.pair(Modality.SERIES)
    z = _normalise(a, mean, std, axis=-1)
    parts = [np.swapaxes(np.nan_to_num(z, nan=0.0), -1, -2)]
    if mask:
        parts.append(np.isfinite(z).all(axis=-1).astype(np.float32)[..., None, :])
    return np.concatenate(parts, axis=-2)


def prepare_env(a: np.ndarray, stats: NormStats, mask: bool = True) -> np.ndarray:
    """``(..., var, y, x)`` -> ``(..., var [+ 1], y, x)``; a point ``(..., var)`` is treated as a 1x1 patch."""
    mean, std = stats.pair(Modality.ENV)
    z = _normalise(a, mean, std, axis=-3)
    parts = [np.nan_to_num(z, nan=0.0)]
    if mask:
        parts.append(np.isfinite(z).all(axis=-3, keepdims=True).astype(np.float32))
    return np.concatenate(parts, axis=-3)


# -- writing


def _check_len(name: str, arr: np.ndarray | None, n: int, ndim: int) -> None:
    if arr is None:
        return
    if arr.ndim != ndim or arr.shape[0] != n:
        raise TrainingSetError(
            f"write_training_set: {name} has shape {arr.shape}, expected {ndim} dims with {n} samples"
        )


def write_training_set(
    path: str | os.PathLike[str],
    *,
    x: np.ndarray,
    y: np.ndarray,
    label: np.ndarray,
    source: Sequence[str] | np.ndarray,
    species: Sequence[Any] | np.ndarray,
    species_name: Sequence[str] | None = None,
    patch: np.ndarray | None = None,
    series: np.ndarray | None = None,
    env: np.ndarray | None = None,
    env_point: np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
    chunk_samples: int = 256,
) -> str:
    """Write the training-set contract (see module docstring) to a Zarr group at ``path``; returns the path."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = x.shape[0]
    label = np.asarray(label)
    source = np.asarray(source, dtype=str)
    species = np.asarray(species)
    if species.dtype.kind == "U":  # variable-length strings: fixed-width unicode has no stable Zarr v3 spec
        species = species.astype(object)
    arrays = {
        Modality.PATCH: (patch, 5),
        Modality.SERIES: (series, 3),
        Modality.ENV: (env, 4),
        ENV_POINT: (env_point, 2),
    }
    for name, (arr, ndim) in {**arrays, "y": (y, 1), "label": (label, 2), "source": (source, 1)}.items():
        _check_len(name, None if arr is None else np.asarray(arr), n, ndim)
    if label.shape[1] != species.shape[0]:
        raise TrainingSetError(
            f"write_training_set: label has {label.shape[1]} species columns, species has {len(species)}"
        )
    if not np.isin(label, (-1, 0, 1)).all():
        raise TrainingSetError("write_training_set: label values must be -1 (unknown), 0 (absent) or 1 (present)")
    bad = sorted(set(source.tolist()) - set(SOURCES))
    if bad:
        raise TrainingSetError(f"write_training_set: unknown source values {bad}; expected one of {SOURCES}")
    dims = {
        Modality.PATCH: ("sample", "season", "band", "py", "px"),
        Modality.SERIES: ("sample", "season", "band"),
        Modality.ENV: ("sample", "var", "ey", "ex"),
        ENV_POINT: ("sample", "var"),
    }
    data_vars: dict[str, Any] = {
        "label": (("sample", "species"), label.astype(np.int8)),
        "source": (("sample",), source.astype(object)),  # variable-length strings
    }
    for name, (arr, _) in arrays.items():
        if arr is not None:
            data_vars[str(name)] = (dims[name], np.asarray(arr, np.float32))
    coords: dict[str, Any] = {"x": (("sample",), x), "y": (("sample",), y), "species": species}
    if species_name is not None:
        coords["species_name"] = (("species",), np.asarray(species_name, dtype=str).astype(object))
    ds = xr.Dataset(data_vars, coords=coords, attrs=dict(attrs or {}))
    chunk = max(1, min(int(chunk_samples), n))
    compressor = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
    encoding = {name: {"chunks": (chunk, *ds[name].shape[1:]), "compressors": [compressor]} for name in ds.data_vars}
    ds.to_zarr(os.fspath(path), mode="w", encoding=encoding, consolidated=True, zarr_format=3)
    return os.fspath(path)


# -- reading


def open_training_set(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open the store lazily (no pixel read) and check the contract's required variables."""
    try:
        # Same as xr.open_zarr, but chunks=None + cache=False: lazily indexed backend arrays that read only the Zarr
        # chunks a batch touches, with no Dask graph per batch (nor a nested Dask scheduler inside the training task)
        # and no whole-variable memory cache.
        ds = xr.open_dataset(os.fspath(path), engine="zarr", chunks=None, cache=False)
    except (FileNotFoundError, OSError, KeyError, ValueError) as exc:
        raise TrainingSetError(f"{path}: cannot open training set ({exc.__class__.__name__}: {exc})") from None
    missing = [name for name in ("label", "source") if name not in ds]
    if missing:
        raise TrainingSetError(f"{path}: training set lacks required variable(s) {missing}")
    return ds


def _chunk_size(ds: xr.Dataset) -> int:
    enc = ds["label"].encoding
    chunks = enc.get("chunks") or enc.get("preferred_chunks", {}).get("sample")
    if isinstance(chunks, tuple | list):
        return int(chunks[0])
    return int(chunks) if chunks else int(ds.sizes["sample"])


def _indices(idx: Sequence[int] | np.ndarray | None, n: int, path: Any) -> np.ndarray:
    out = np.arange(n) if idx is None else np.asarray(idx, dtype=np.int64).reshape(-1)
    if out.size and (out.min() < 0 or out.max() >= n):
        raise TrainingSetError(f"{path}: indices out of range [0, {n}) (min {out.min()}, max {out.max()})")
    return out


def compute_stats(ds: xr.Dataset, idx: np.ndarray, seed: int = 0, scaling: str = "standard") -> NormStats:
    """Per-channel centre and scale on ``idx`` (a random subset of at most 20,000), streamed chunk by chunk.

    ``scaling="standard"``: nanmean / nanstd. ``"robust"``: nanmedian / (IQR / 1.349), the IQR scaled so that it
    equals the standard deviation on Gaussian data; skewed predictors (rainfall, ruggedness, distances) and outliers
    then neither squash the bulk of the values nor dominate the first layer. Robust statistics need the values of a
    channel at once: at most 20,000 samples x the channel's pixels per sample.
    """
    if scaling not in ("standard", "robust"):
        raise TrainingSetError(f"scaling must be 'standard' or 'robust', got {scaling!r}")
    rng = np.random.default_rng(seed)
    use = np.sort(rng.choice(idx, _STATS_MAX_SAMPLES, replace=False) if idx.size > _STATS_MAX_SAMPLES else idx)
    chunk = _chunk_size(ds)
    axes = {Modality.PATCH: 2, Modality.SERIES: 2, Modality.ENV: 1}  # channel axis in the stored layout
    source_var = {**MODALITY_VARS, Modality.ENV: Modality.ENV if Modality.ENV in ds else ENV_POINT}
    out: dict[str, list[float]] = {}
    for name, var in source_var.items():
        if var not in ds:
            continue
        axis = axes[name]
        n_ch = ds[var].shape[axis]
        blocks = (
            np.moveaxis(
                np.asarray(ds[var].isel(sample=use[start : start + chunk]).values, np.float64), axis, 0
            ).reshape(n_ch, -1)
            for start in range(0, use.size, chunk)
        )
        mean, std = _robust(blocks, n_ch) if scaling == "robust" else _moments(blocks, n_ch)
        out[f"{name}_mean"] = mean.tolist()
        # constant or empty channels: divide by 1 rather than by 0
        out[f"{name}_std"] = np.where(std > 1e-6, std, 1.0).tolist()
    return NormStats(**out)


def _moments(blocks: Iterator[np.ndarray], n_ch: int) -> tuple[np.ndarray, np.ndarray]:
    total, total_sq, count = np.zeros(n_ch), np.zeros(n_ch), np.zeros(n_ch)
    for a in blocks:
        finite = np.isfinite(a)
        total += np.where(finite, a, 0).sum(1)
        total_sq += np.where(finite, a * a, 0).sum(1)
        count += finite.sum(1)
    mean = np.divide(total, count, out=np.zeros(n_ch), where=count > 0)
    var_ = np.divide(total_sq, count, out=np.ones(n_ch), where=count > 0) - mean**2
    return mean, np.sqrt(np.clip(var_, 0, None))


def _robust(blocks: Iterator[np.ndarray], n_ch: int) -> tuple[np.ndarray, np.ndarray]:
    values = np.concatenate(list(blocks), axis=1) if n_ch else np.zeros((0, 0))
    centre, scale = np.zeros(n_ch), np.ones(n_ch)
    for c in range(n_ch):
        v = values[c][np.isfinite(values[c])]
        if v.size:
            q25, centre[c], q75 = np.percentile(v, [25, 50, 75])
            scale[c] = (q75 - q25) / 1.349
            if scale[c] <= 1e-6:  # mostly one value (a dummy, a zero-inflated layer): fall back to the spread
                scale[c] = v.std()
    return centre, scale


class TrainingSet(torch.utils.data.Dataset):
    """Batches of prepared tensors from the Zarr training set, restricted to ``indices``.

    ``ds[i]`` gives one sample, ``ds[[i, j, ...]]`` a whole batch (in the order given), read with one decode per storage
    chunk (kept in a small LRU cache). Use it with ``DataLoader(ds, sampler=ChunkBatchSampler(...), batch_size=None)``
    or :meth:`batches`. ``stats=None`` computes normalisation statistics on ``indices`` (the training indices); pass the
    training set's statistics for validation or prediction.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        stats: NormStats | None = None,
        mask_channels: bool = True,
        modalities: Sequence[str] | None = None,
        cache_chunks: int = 8,
        scaling: str = "standard",
    ) -> None:
        self.path = os.fspath(path)
        self.ds = open_training_set(path)
        self.n_total = int(self.ds.sizes["sample"])
        self.indices = _indices(indices, self.n_total, path)
        self.chunk_size = _chunk_size(self.ds)
        self.mask_channels = mask_channels
        available = self.available_modalities(self.ds)
        wanted = list(available) if modalities is None else list(modalities)
        missing = [m for m in wanted if m not in available]
        if missing:
            raise TrainingSetError(f"{self.path}: asked for modalities {missing}, store has {sorted(available)}")
        if not wanted:
            raise TrainingSetError(f"{self.path}: no input variable (patch, series, env or env_point) in the store")
        self.modalities = wanted
        self._vars = {m: available[m] for m in wanted}
        self.stats = stats if stats is not None else compute_stats(self.ds, self.indices, scaling=scaling)
        self.species = [str(s) for s in self.ds["species"].values]
        self.species_name = [str(s) for s in self.ds["species_name"].values] if "species_name" in self.ds else None
        self._cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._cache_chunks = max(1, cache_chunks)

    @staticmethod
    def available_modalities(ds: xr.Dataset) -> dict[str, str]:
        """Modality -> store variable; ``env`` falls back to ``env_point`` (a 1x1 patch) when there is no env patch."""
        out = {m: v for m, v in MODALITY_VARS.items() if v in ds}
        if Modality.ENV not in out and ENV_POINT in ds:
            out[Modality.ENV] = ENV_POINT
        return out

    @property
    def env_from_point(self) -> bool:
        return self._vars.get(Modality.ENV) == ENV_POINT

    @property
    def n_species(self) -> int:
        return len(self.species)

    def modality_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of one prepared sample per modality (channels first), as :class:`SpeciesNet` expects them."""
        sample = self._read(self.indices[:1] if len(self) else np.array([0]))
        return {m: tuple(int(d) for d in sample[m].shape[1:]) for m in self.modalities}

    def __len__(self) -> int:
        return int(self.indices.size)

    # reading

    def _chunk(self, c: int) -> dict[str, np.ndarray]:
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        sl = slice(c * self.chunk_size, min((c + 1) * self.chunk_size, self.n_total))
        names = [*self._vars.values(), "label", "source"]
        block = {name: np.asarray(self.ds[name].isel(sample=sl).values) for name in names}
        self._cache[c] = block
        if len(self._cache) > self._cache_chunks:
            self._cache.popitem(last=False)
        return block

    def _read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Raw store values for absolute sample numbers ``rows`` (any order), one decode per chunk touched."""
        chunk_of = rows // self.chunk_size
        out: dict[str, np.ndarray] = {}
        for c in np.unique(chunk_of):
            block = self._chunk(int(c))
            where = np.nonzero(chunk_of == c)[0]
            local = rows[where] - c * self.chunk_size
            for name, arr in block.items():
                if name not in out:
                    out[name] = np.empty((rows.size, *arr.shape[1:]), dtype=arr.dtype)
                out[name][where] = arr[local]
        return self._prepare(out)

    def _prepare(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prep = {Modality.PATCH: prepare_patch, Modality.SERIES: prepare_series, Modality.ENV: prepare_env}
        out: dict[str, np.ndarray] = {}
        for m, var in self._vars.items():
            a = raw[var]
            if var == ENV_POINT:
                a = a[..., None, None]
            out[m] = prep[m](a, self.stats, self.mask_channels)
        out["label"] = raw["label"].astype(np.int8)
        out["source"] = np.array([SOURCE_CODE.get(str(s), -1) for s in raw["source"]], dtype=np.int64)
        return out

    def __getitem__(self, item: int | Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        """One sample (``int``) or a batch (sequence of positions in this subset), as tensors."""
        pos = np.asarray(item, dtype=np.int64)
        rows = self.indices[pos.reshape(-1)]
        batch = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self._read(rows).items()}
        if pos.ndim == 0:
            return {k: v[0] for k, v in batch.items()}
        return batch

    def labels(self) -> np.ndarray:
        """``(n, species)`` int8 labels of this subset (reads only the label variable)."""
        order = np.argsort(self.indices, kind="stable")
        out = np.empty((self.indices.size, self.n_species), dtype=np.int8)
        out[order] = np.asarray(self.ds["label"].isel(sample=self.indices[order]).values)
        return out

    def sources(self) -> np.ndarray:
        """Source codes (0 pa, 1 po, 2 bg) of this subset."""
        src = np.asarray(self.ds["source"].values)[self.indices]
        return np.array([SOURCE_CODE.get(str(s), -1) for s in src], dtype=np.int64)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Iterate over the subset in batches (chunk-local shuffling when ``shuffle``)."""
        for batch in ChunkBatchSampler(self, batch_size, shuffle=shuffle, seed=seed):
            yield self[batch]


class ChunkBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of positions that touch few storage chunks: chunk order shuffled, then samples shuffled within windows
    of ``window`` chunks. Each batch is sorted by storage position (sequential reads). Deterministic per ``seed`` and
    epoch (call :meth:`set_epoch`)."""

    def __init__(
        self, dataset: TrainingSet, batch_size: int, *, shuffle: bool = True, seed: int = 0, window: int = 4
    ) -> None:
        if batch_size < 1:
            raise TrainingSetError(f"batch_size must be >= 1, got {batch_size}")
        self.rows = dataset.indices
        self.chunk_size = dataset.chunk_size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.window = max(1, window)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if not self.shuffle:
            return -(-self.rows.size // self.batch_size)
        return len(self._bounds(self.rows.size))

    def __iter__(self) -> Iterator[list[int]]:
        positions = np.arange(self.rows.size)
        if not self.shuffle:
            for start in range(0, positions.size, self.batch_size):
                yield positions[start : start + self.batch_size].tolist()
            return
        rng = np.random.default_rng([self.seed, self.epoch])
        chunk_of = self.rows // self.chunk_size
        chunks = rng.permutation(np.unique(chunk_of))
        order = (
            np.concatenate(
                [
                    rng.permutation(positions[np.isin(chunk_of, chunks[w : w + self.window])])
                    for w in range(0, chunks.size, self.window)
                ]
            )
            if chunks.size
            else positions
        )
        for start, stop in self._bounds(order.size):
            batch = order[start:stop]
            yield batch[np.argsort(self.rows[batch], kind="stable")].tolist()

    def _bounds(self, n: int) -> list[tuple[int, int]]:
        """(start, stop) of each training batch; a last batch of one sample joins the one before (BatchNorm cannot
        train on a single sample, and which rows are left over changes with the seed and the held-out blocks)."""
        bounds = [(start, min(start + self.batch_size, n)) for start in range(0, n, self.batch_size)]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
            bounds[-2:] = [(bounds[-2][0], n)]
        return bounds
