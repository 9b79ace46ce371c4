"""The run context: what every job starts from, written once (the configuration, its outputs, the cluster, the tile
stream), so that a job is a short driver: context -> product plan -> :mod:`geoplantnet.runs.tiles` -> report.

:class:`RunContext` is the one place below the jobs that reads :class:`~geoplantnet.core.config.RunConfig`; it hands
the layers under it the sections or typed settings they need (:class:`~geoplantnet.runs.tiles.StreamSettings`, the
store's options, the provenance attributes), never the whole configuration.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoplantnet.core.config import RunConfig
from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.core.hashing import fingerprint
from geoplantnet.products.base import Made, Product
from geoplantnet.runs.tiles import StreamSettings, TiledRun, TileOutput, produce_tiles
from geoplantnet.storage.store import is_local, join, preflight, storage_options_for
from geoplantnet.storage.workdir import Workdir

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr
    from distributed import Client

    from geoplantnet.inference.reader import MapSources
    from geoplantnet.inference.species import ModelFile
    from geoplantnet.inference.value import ValueModelFile, ValuePredictor
    from geoplantnet.products.base import TilePlan
    from geoplantnet.runs.inputs import Inputs
    from geoplantnet.training.species import SpeciesTraining


def streaming(cfg: RunConfig) -> StreamSettings:
    """How the run's tiles are streamed (``map.max_in_flight``, ``map.retries``, ``store.lease_ttl_s``)."""
    return StreamSettings(cfg.map.max_in_flight, cfg.map.retries, cfg.store.lease_ttl_s)


@dataclass(frozen=True)
class RunContext:
    """One run of a command: its configuration and how it was asked to run (``progress``, ``overwrite``, the
    ``year`` of a series)."""

    cfg: RunConfig
    progress: bool = True
    overwrite: bool = False
    year: int | None = None

    @property
    def streaming(self) -> StreamSettings:
        """How tiles are streamed (:func:`streaming`)."""
        return streaming(self.cfg)

    @property
    def provenance(self) -> dict[str, Any]:
        """The attributes every store of the run carries: its redacted configuration."""
        return self.cfg.to_attrs()

    def options(self, url: str) -> dict[str, Any]:
        """The fsspec options for ``url`` (those of ``store`` for a URL under object storage)."""
        return storage_options_for(url, self.cfg.store)

    @property
    def workdir(self) -> Workdir:
        """The run's workdir (``workdir``: a local folder, or an object-store URL opened with the store's options)."""
        return Workdir.of(self.cfg.workdir, self.cfg.store)

    def model_file(self, model: str | ModelFile) -> ModelFile:
        """A species model file read and checked (``model`` itself when already read), with the store's options
        when it is an object-store URL (a model cached under an object-store workdir, a user's on S3)."""
        from geoplantnet.inference.species import ModelFile
        from geoplantnet.storage.store import read_options_for

        return model if isinstance(model, ModelFile) else ModelFile.read(model, read_options_for(model, self.cfg.store))

    def url(self, name: str) -> str:
        """``<store.root>/<name>``."""
        return join(self.cfg.store.root, name)

    def output(self, name: str, product: str, out: str | None = None) -> str:
        """The store the run writes (``out``, default ``<store.root>/<name>``), refused before anything is read when
        it is a user's folder, a store being written or another product's (``storage.store.preflight``)."""
        url = out or self.url(name)
        preflight(url, self.options(url), product=product, overwrite=self.overwrite)
        if self.catalogued_name(url) is not None:  # a foreign <root>/stac/ is refused before any work, not after it
            from geoplantnet.storage.catalog import check_catalog

            check_catalog(self.cfg.store.root, self.options(url))
        return url

    def catalogued_name(self, url: str) -> str | None:
        """The name under ``store.root`` of the store at ``url`` (None: written elsewhere, e.g. by ``--out``, and so
        not in the root's catalogue)."""
        root = self.cfg.store.root.rstrip("/")
        if is_local(root) and is_local(url):
            root, url = (
                str(Path(root.removeprefix("file://")).resolve()),
                str(Path(url.removeprefix("file://")).resolve()),
            )
        name = url.rstrip("/").removeprefix(f"{root}/")
        return name if name != url.rstrip("/") and name else None

    @contextlib.contextmanager
    def cataloguing(self, url: str, product: str) -> Iterator[None]:
        """Around the writing of the ``product`` store at ``url`` (the context's year of a series): its item is
        withdrawn from the root's catalogue first when the run may replace it (``--overwrite``: no incomplete store
        or year is ever listed), and published once the block has completed it (``storage.catalog``); a run that
        fails leaves the item of a store (or year) still complete in place. Stores outside ``store.root``: nothing."""
        from geoplantnet.storage.catalog import publish, withdraw

        name = self.catalogued_name(url)
        if name is None:
            yield
            return
        root, options = self.cfg.store.root, self.options(url)
        if self.overwrite:
            withdraw(root, name, options, year=self.year)
        try:
            yield
        except BaseException:
            if self.overwrite:  # refused or failed before replacing anything: the complete store keeps its item
                with contextlib.suppress(Exception):
                    publish(root, name, options, year=self.year, derived_from=required_stores(product))
            raise
        publish(root, name, options, year=self.year, derived_from=required_stores(product))

    def report_folder(self, name: str, kind: str, entries: Sequence[str], out: str | None = None) -> Path:
        """The local folder of a report (``out``, default ``<store.root>/<name>``), checked before any work
        (``storage.outputs.claim_folder``): new or empty, or an earlier report of this ``kind`` (replaced only with
        ``--overwrite``, and only when the new one is written); a user's file or folder is refused, never written
        into. With an object-store ``store.root`` and no ``out``: a folder of this process's scratch, published to
        ``<store.root>/<name>`` when finished (``storage.outputs.claim_published_folder``)."""
        from geoplantnet.storage.outputs import claim_folder, claim_published_folder
        from geoplantnet.storage.store import is_local

        root = self.cfg.store.root
        if out is None and not is_local(root):
            return claim_published_folder(self.published, name, kind, entries, overwrite=self.overwrite)
        folder = Path(out) if out is not None else Path(root) / name
        claim_folder(folder, kind, entries, overwrite=self.overwrite, check_only=True)
        return folder

    @property
    def published(self) -> Workdir:
        """``store.root`` as a folder tree reports are published to (the store's options: endpoint, timeouts)."""
        return Workdir.of(self.cfg.store.root, self.cfg.store)

    def tile_output(self, url: str, parts: Mapping[str, Any]) -> TileOutput:
        """Where the tiles of the run of ``parts`` go (the year's run of a series when the context has a year)."""
        return TileOutput.of(url, parts, self.options(url), year=self.year)

    def inputs(self, *, observations: bool = True) -> Inputs:
        """The run's inputs: what ``cfg.inputs`` names read and checked (observations only when ``observations``),
        then loaded (:func:`geoplantnet.runs.inputs.plan_inputs`)."""
        from geoplantnet.runs.inputs import plan_inputs

        return plan_inputs(self.cfg, observations=observations).load(progress=self.progress)

    def sources(self, inputs: Inputs, seasons: Sequence[np.datetime64] | None = None) -> MapSources:
        """The tile reader of the run's inputs (``cube``, the grid's CRS); ``seasons``: the composite periods when
        given (a refresh's year), else those the imagery spans."""
        from geoplantnet.inference.reader import MapSources

        cube, epsg = self.cfg.cube, self.cfg.grid.epsg
        return MapSources.from_items(cube, epsg, inputs.s2_items, inputs.env_items, seasons, inputs.read_options)

    @property
    def species_training(self) -> SpeciesTraining:
        """What training the species models reads of the configuration."""
        from geoplantnet.training.species import SpeciesTraining

        c, workdir = self.cfg, self.workdir
        stage = None if workdir.local else workdir.child("train")
        return SpeciesTraining(c.name, c.grid, c.cube, c.model, c.train, c.validation, c.to_attrs(), stage)

    def species_training_key(self, inputs: Inputs) -> str:
        """The map model's cache key: the training settings (grid, cube, model, train, validation) and the inputs
        by content (:func:`geoplantnet.runs.inputs.inputs_digest`)."""
        from geoplantnet.runs.inputs import inputs_digest

        parts = {
            k: getattr(self.cfg, k).model_dump(mode="json") for k in ("grid", "cube", "model", "train", "validation")
        }
        return fingerprint(parts, inputs_digest(inputs))

    def species_model(self, client: Client, inputs: Inputs) -> tuple[str, dict[str, Any] | None]:
        """A species model for a map: trained on the region's observations, or reused from an earlier run with the
        same data (by content), model and training settings (``<workdir>/map-models/<key>``, a local folder or an
        object-store URL). Returns its path or URL and, if trained now, how."""
        from geoplantnet.storage.workdir import scratch
        from geoplantnet.validation.species import train_map_model

        work, folder = self.workdir, ("map-models", self.species_training_key(inputs))
        model = (*folder, "model", "map.pt")
        if work.exists(*model):
            return work.url(*model), None
        # trained in a local folder (the workdir's own; this process's scratch under an object-store workdir), the
        # model then published as one file (one PUT: never half a model at its URL)
        result = train_map_model(
            self.species_training, inputs, work.path(*folder) if work.local else scratch(*folder), client
        )
        return work.put(result.model_path, *model), {
            "epochs": result.epochs_run,
            "best_epoch": result.best_epoch,
            "device": result.device,
        }

    @property
    def value_model_url(self) -> str:
        """Where ``geoplantnet value`` saves its final model: ``<store.root>/value/model.pt``."""
        from geoplantnet.products.value import MODEL_FILE

        return self.url(MODEL_FILE)

    def value_predictor(self, model: str | ValueModelFile, sources: MapSources) -> ValuePredictor:
        """Read the value model (unless given read) and check the run's inputs give its features in its order; the
        predictor tile tasks carry, pinned by the file's sha256."""
        from geoplantnet.inference.value import ValueModelFile, plan_predictor
        from geoplantnet.products.value import value_grid

        read = model if isinstance(model, ValueModelFile) else ValueModelFile.read(model, self.cfg.store)
        return plan_predictor(read, sources, value_grid(self.cfg.grid, self.cfg.value), self.cfg.map.device)

    @contextlib.contextmanager
    def client(self) -> Iterator[Client]:
        """The configured cluster (closed after, or stopped at once on Ctrl-C)."""
        from geoplantnet.runtime.cluster import connect

        with connect(self.cfg.cluster) as client:
            yield client

    def produce(
        self,
        client: Client,
        fn: Callable[[Any, Tile], dict[str, Any]],
        job: Any,
        *,
        output: TileOutput,
        grid: Grid,
        tile: int,
        layout: tuple[xr.Dataset, Mapping[str, Mapping[str, Any]]],
        product: str,
        parts: Mapping[str, str],
        attrs: Mapping[str, Any],
        resources: dict[str, float] | None,
        error: type[GeoplantnetError],
    ) -> TiledRun:
        """:func:`~geoplantnet.runs.tiles.produce_tiles` with the run's stream settings, provenance, ``overwrite``,
        progress and year; the store (or year) is then published in the root's catalogue (:meth:`cataloguing`)."""
        with self.cataloguing(output.url, product):
            return produce_tiles(
                client,
                fn,
                job,
                output=output,
                grid=grid,
                tile=tile,
                layout=layout,
                product=product,
                parts=parts,
                settings=self.streaming,
                provenance=self.provenance,
                attrs=attrs,
                overwrite=self.overwrite,
                resources=resources,
                progress=self.progress,
                error=error,
                year=self.year,
            )

    def produce_plan(self, client: Client, plan: TilePlan, product: str) -> TiledRun:
        """:meth:`produce` of a product's plan (``product``: the store's ``geoplantnet_product``)."""
        return self.produce(
            client,
            plan.fn,
            plan.job,
            output=plan.output,
            grid=plan.grid,
            tile=plan.tile,
            layout=plan.layout,
            product=product,
            parts=plan.parts,
            attrs=plan.attrs,
            resources=plan.resources,
            error=plan.error,
        )

    def make(self, client: Client, product: Product) -> Made | None:
        """``product``'s tiled run: its plan (``product.plan(self, client)``) streamed by :meth:`produce`; what it
        made (its entry in a run summary: seconds, tiles computed), or None when the plan has nothing to map."""
        if product.plan is None:
            raise GeoplantnetError(f"product {product.name} has no tile plan: its own command writes it")
        t0 = time.perf_counter()
        plan = product.plan(self, client)
        if plan is None:
            return None
        run = self.produce_plan(client, plan, product.name)
        seconds = round(time.perf_counter() - t0, 1)
        return Made(
            product.name, plan.output.url, plan, run, seconds, {"seconds": seconds, "tiles_computed": len(run.results)}
        )


def required_stores(product: str) -> list[str]:
    """The store names of the products ``product`` is made from (the registry's ``requires``; none when the product
    is not registered, as composites): the items its catalogue item links to as ``derived_from``."""
    from geoplantnet.products.base import UnknownProductError, get

    try:
        required = get(product).requires
    except UnknownProductError:
        return []
    out = []
    for name in required:
        with contextlib.suppress(UnknownProductError):
            out.append(get(name).store)
    return out
