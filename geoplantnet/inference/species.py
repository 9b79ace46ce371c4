"""The species model on the worker side: a model file read and pinned by its sha256, kept once per worker process,
and :class:`SpeciesPredictor`, the one way a tile's species codes are predicted (the species map's tiles and the
fused indicators' tiles share it, so both give the same codes for the same tile).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np

from geoplantnet.core.config import MapConfig
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.inference.dense import TileGeometry, default_budget, predict_tile, tile_geometry
from geoplantnet.inference.points import predict_tile_points
from geoplantnet.inference.reader import MapSources
from geoplantnet.models.peers import PeerSpec, is_peer_file, load_peer
from geoplantnet.runtime.cluster import require_resources, task_resources

# torch and distributed are imported where a model is read or run or a cluster used: a command refuses bad input
# without them (tests/test_refusal_times.py)
if TYPE_CHECKING:
    import torch
    from distributed import Client

    from geoplantnet.models.species_net import ModelSpec, SpeciesNet


def cached_model(
    ref: ModelRef, device: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[Any, ModelSpec | PeerSpec, int]:
    """The model and spec of ``ref`` on ``device`` kept by this worker process (loaded on first use, with
    ``storage_options`` for a URL), and how many loads the process has done. Pinned by the sha256 the driver
    fingerprinted, so a model file replaced during a run is refused rather than mixed into a map."""
    from geoplantnet.runtime.devices import resolve_device
    from geoplantnet.runtime.worker_cache import pinned

    dev = resolve_device(device)

    def load() -> tuple[tuple[Any, ModelSpec | PeerSpec], str]:
        model, spec, raw = read_model(ref.url, dev, storage_options)
        return (model, spec), hashlib.sha256(raw).hexdigest()

    (model, spec), loads = pinned("species-model", ref.url, ref.sha256, str(dev), load, "model file")
    return model, spec, loads


def read_model(
    url: str, device: str | torch.device = "cpu", storage_options: Mapping[str, Any] | None = None
) -> tuple[SpeciesNet | Any, ModelSpec | PeerSpec, bytes]:
    """Load a model file from a path or any fsspec URL (``s3://...``, opened with ``storage_options``: the store's
    endpoint and timeouts): the species network (``.pt``) or a point-value peer fitted by ``sdm`` (``.peer``:
    MaxEnt, random forest; told apart by content, not name); also its bytes."""
    from geoplantnet.models.species_files import ModelFileError, load_model

    try:
        with fsspec.open(url, "rb", **dict(storage_options or {})) as f:
            raw = f.read()
    except FileNotFoundError:
        raise ModelFileError(f"{url}: no such model file") from None
    except IsADirectoryError:
        raise ModelFileError(f"{url}: a folder, not a model file") from None
    if is_peer_file(raw):
        peer, peer_spec = load_peer(io.BytesIO(raw), name=url)
        return peer, peer_spec, raw
    model, spec = load_model(io.BytesIO(raw), device, name=url)
    return model, spec, raw


@dataclass(frozen=True)
class ModelFile:
    """A species model file read and checked on the driver: its spec and the sha256 of its bytes. Read before a
    job's inputs are made or a cluster starts, so a missing or corrupt model fails first."""

    url: str
    spec: ModelSpec | PeerSpec
    sha256: str
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the storage options of a URL (no repr)

    @classmethod
    def read(cls, url: str, storage_options: Mapping[str, Any] | None = None) -> ModelFile:
        """Read ``url`` (:func:`read_model`; one-line :class:`ModelFileError` when it cannot be used)."""
        _, spec, raw = read_model(url, storage_options=storage_options)
        return cls(url, spec, hashlib.sha256(raw).hexdigest(), dict(storage_options or {}))

    @classmethod
    def of(cls, model: str | ModelFile, storage_options: Mapping[str, Any] | None = None) -> ModelFile:
        """``model`` itself, or the file at that URL read (with ``storage_options``)."""
        return model if isinstance(model, ModelFile) else cls.read(model, storage_options)


@dataclass(frozen=True)
class ModelRef:
    """A model file and the sha256 the driver read from it."""

    url: str
    sha256: str


@dataclass(frozen=True)
class TileCompute:
    """How a tile is predicted: device, precision and the memory of one forward pass."""

    device: str
    mixed_precision: bool
    batch_mb: int  # GPU
    cpu_batch_mb: int

    @classmethod
    def of(cls, settings: MapConfig) -> TileCompute:
        return cls(settings.device, settings.mixed_precision, settings.batch_mb, settings.cpu_batch_mb)


@dataclass(frozen=True)
class TileInputs:
    """A tile's raw input windows as :meth:`SpeciesPredictor.read` gives them."""

    geom: TileGeometry
    patch: np.ndarray | None
    env: np.ndarray | None
    read_s: float
    model_loads: int
    budget_bytes: int  # the strip budget of every pass over them (a GPU's free memory is read once)


@dataclass(frozen=True)
class SpeciesPredictor:
    """How a tile's species codes are predicted: the model, the inputs, the grids and the compute settings. What
    :func:`geoplantnet.products.species_map.map_tile` and a fused indicator tile share, so both give the same
    codes for the same tile."""

    model: ModelRef
    sources: MapSources
    map_grid: Grid
    cube_grid: Grid | None
    compute: TileCompute
    point_model: bool = False  # a MaxEnt / forest peer: CPU only, never waits for a GPU worker
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # the model file's (a URL's; no repr)

    def predict(self, tile: Tile) -> tuple[np.ndarray, dict[str, Any]]:
        """The uint8 codes (species, y, x) of ``tile`` (read its input windows, run the model) and the timings
        (``read_s``, ``model_s``), device, process and model loads (runs on a worker)."""
        return self.forward(self.read(tile))

    def read(self, tile: Tile) -> TileInputs:
        """The raw input windows of ``tile`` (read once; :meth:`forward` may run on them several times)."""
        t0 = time.perf_counter()
        model, spec, loads = cached_model(self.model, self.compute.device, self.options)
        geom = tile_geometry(spec, tile, self.map_grid, self.cube_grid)
        patch, env = self.sources.read(spec, geom, self.map_grid, self.cube_grid)
        budget = 0
        if not isinstance(spec, PeerSpec):  # fixed per tile: every pass over these inputs uses the same strips
            budget = default_budget(next(model.parameters()).device, self.compute.batch_mb, self.compute.cpu_batch_mb)
        return TileInputs(geom, patch, env, round(time.perf_counter() - t0, 3), loads, budget)

    def forward(
        self, inputs: TileInputs, *, dropout_seed: int | None = None, member: int | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The model on a tile's inputs: uint8 codes (species, y, x) and timings. ``dropout_seed``: one Monte-Carlo
        dropout draw (:func:`geoplantnet.models.mc_dropout.mc_dropout`) instead of the map's values; ``member``: of
        an ensemble file, that member network alone (:func:`~geoplantnet.models.species_net.member_of`)."""
        from geoplantnet.models.mc_dropout import exclusive, mc_dropout
        from geoplantnet.models.species_net import member_of

        t1 = time.perf_counter()
        model, spec, _ = cached_model(self.model, self.compute.device, self.options)
        geom, patch, env = inputs.geom, inputs.patch, inputs.env
        if isinstance(spec, PeerSpec):  # MaxEnt / forest: per-pixel feature rows, as at the training points (CPU)
            device = "cpu"
            codes = predict_tile_points(model, spec, geom, patch, env)
        else:
            device = next(model.parameters()).device
            model = member_of(model, member) if member is not None else model
            # the model is shared by the worker's threads: a pass never runs inside another thread's draw
            draw = exclusive() if dropout_seed is None else mc_dropout(model, dropout_seed)
            with draw:
                codes = predict_tile(
                    model,
                    spec,
                    geom,
                    patch,
                    env,
                    budget_bytes=inputs.budget_bytes,
                    mixed_precision=self.compute.mixed_precision,
                )
        t2 = time.perf_counter()
        info = {"read_s": inputs.read_s, "model_s": round(t2 - t1, 3), "device": str(device), "pid": os.getpid()}
        return codes, {**info, "model_loads": inputs.model_loads}

    def resources(self, client: Client) -> dict[str, float] | None:
        """The resources a tile task of this predictor asks for (checked to exist), with the per-worker model cache
        registered: a GPU when the cluster has them, nothing for a point-value peer."""
        from geoplantnet.runtime.worker_cache import WorkerCachePlugin

        resources = None if self.point_model else task_resources(client)
        if resources:
            require_resources(client, resources)
        client.register_plugin(WorkerCachePlugin())
        return resources


NO_COVERAGE = -1  # clear_seasons of a pixel without imagery read (no Sentinel-2 input, or off the imagery)


def clear_seasons(inputs: TileInputs) -> np.ndarray | None:
    """Which composite seasons the model saw clear at each map pixel of a tile: an int16 (y, x) bitmask, bit ``s``
    set where season ``s`` of the Sentinel-2 window is finite in every band at the cube pixel holding the map
    pixel's centre (what the model reads there); None for a model without Sentinel-2 inputs. A refresh compares
    years through it: two years that saw different seasons differ by their clouds as well as by the landscape."""
    geom, patch = inputs.geom, inputs.patch
    if patch is None or geom.cube_window is None:
        return None
    if patch.shape[0] > 15:
        raise ValueError(f"{patch.shape[0]} composite periods do not fit the int16 season bitmask (at most 15)")
    r0, _, c0, _ = geom.cube_window
    centre = patch[:, :, geom.centre_rows - r0][:, :, :, geom.centre_cols - c0]  # (season, band, y, x)
    clear = np.isfinite(centre).all(axis=1)
    bits = (clear * (1 << np.arange(clear.shape[0], dtype=np.int64))[:, None, None]).sum(axis=0)
    return bits.astype(np.int16)
