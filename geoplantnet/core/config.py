"""The typed run configuration: YAML in ``pipelines/``, overridden by ``--set key=value`` and environment variables.

Precedence, lowest first: defaults here < YAML file < ``GEOPLANTNET__SECTION__KEY`` environment variables <
``--set section.key=value`` command-line overrides. Every run writes the resolved configuration into its outputs' attrs
(:meth:`RunConfig.to_attrs`), so a store says how it was made.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from geoplantnet.core.errors import ConfigError
from geoplantnet.core.grid import Grid, known_crs, projected_epsg

__all__ = ["ConfigError", "CubeConfig", "InputsConfig", "RunConfig", "load_config", "redact"]

ENV_PREFIX = "GEOPLANTNET__"

# Upper bounds of the settings that size work or memory: generous for any real run, but finite, so a typo or a hostile
# value (impact.draws=1000000) is refused at once instead of running until the machine runs out of memory.
MAX_DRAWS = 1000  # Monte-Carlo draws per pixel (impact, indicators, value)
MAX_TILE = 4096  # pixels per tile / chunk side (a float32 tile of 4096 x 4096 is 64 MiB per band)
MAX_EPOCHS = 10_000
MAX_ENSEMBLE = 100  # networks trained and kept per model
MAX_WORKERS = 256  # Dask workers and threads per worker started on one machine
MAX_BATCH_MB = 65_536  # memory of one forward pass (MiB)
# the tuned MaxEnt's grid (geoplantnet.models.maxent_tuning): ENMeval's feature classes, simplest first, x betas
MAXENT_FEATURE_CLASSES = ("L", "LQ", "H", "LQH", "LQHP")
MAXENT_BETAS = (1.0, 2.0, 4.0)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GridConfig(_Section):
    """The region on the EPSG:3035 grid: top-left corner and extent in metres, and the map resolution."""

    left: float = 4_321_000.0
    top: float = 2_981_000.0
    width_m: float = Field(5_000.0, gt=0)
    height_m: float = Field(5_000.0, gt=0)
    resolution: float = Field(50.0, gt=0, description="map resolution (metres)")
    epsg: int = Field(
        3035, description="projected CRS of the grid (EPSG code, metres); 3035 (LAEA Europe) unless data lie elsewhere"
    )

    @field_validator("epsg")
    @classmethod
    def _projected(cls, v: int) -> int:
        return projected_epsg(v)

    @model_validator(mode="after")
    def _aligned(self) -> GridConfig:
        for name in ("left", "top", "width_m", "height_m"):
            value = getattr(self, name)
            if abs(value / 10.0 - round(value / 10.0)) > 1e-9:
                raise ValueError(f"grid.{name}={value} must be a multiple of 10 m (the finest Sentinel-2 pixel)")
        return self

    def grid(self, resolution: float | None = None) -> Grid:
        """The region as a :class:`Grid` at ``resolution`` (default: the map resolution)."""
        res = float(resolution or self.resolution)
        bounds = (self.left, self.top - self.height_m, self.left + self.width_m, self.top)
        return Grid.from_bounds(bounds, res, epsg=self.epsg)


class ChangeEvent(_Section):
    """Land-cover change of the virtual region: ``count`` round patches of radius ``size_m`` that appear in ``year``."""

    year: int = Field(description="calendar year in which the change is first visible (after sim.start's year)")
    kind: Literal["clearing", "built_up", "wetland_restored"]
    count: int = Field(1, ge=0, description="number of patches")
    size_m: float = Field(100.0, gt=0, description="patch radius (metres)")


def _iso_date(text: str) -> None:
    """Refuse a date that is not ISO 8601 (``2024``, ``2024-05``, ``2024-05-01``, or a date and time): checked when the
    configuration is read, so a typo fails before a region is generated or imagery searched."""
    year_month = re.fullmatch(r"(\d{4})(?:-(\d{2}))?", text)
    try:
        if year_month:
            _dt.date(int(year_month[1]), int(year_month[2] or 1), 1)
        else:
            _dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date (e.g. 2024-05-01)") from None


def _date_text(v: Any) -> Any:
    """A date YAML read as a date (``--set sim.start=2024-01-01``) back to its ISO text."""
    return v.isoformat() if isinstance(v, _dt.date) else v


class SimConfig(_Section):
    """The virtual region: seed, time span, numbers of species, habitats and observations.

    ``changes`` are the land-cover changes between the years of a multi-year region; ``None`` (the default) means
    :meth:`change_events`' automatic few patches in every year after the first, none with ``years: 1``.
    """

    seed: int = 42
    s2_resolution: float = Field(10.0, gt=0)
    env_resolution_deg: float = Field(1 / 1200, gt=0, description="environmental layers, lon/lat (WorldClim-like)")
    start: str = "2024-01-01"
    years: int = Field(1, ge=1)
    dates_per_season: int = Field(3, ge=1)
    n_species: int = Field(200, ge=1)
    n_habitats: int = Field(24, ge=2)
    n_plots: int = Field(400, ge=0)
    n_presence_only: int = Field(4000, ge=0)
    value_polygons: int = Field(
        20, ge=1, le=10_000, description="value polygons per class (high / low) at most: the largest areas"
    )
    value_quantile: float = Field(
        0.15, gt=0, lt=0.5, description="value polygons: areas of the top / bottom this share of the value score"
    )
    value_survey_sd: float = Field(
        1.0,
        ge=0,
        description="a simulated condition survey: each value polygon's `condition` is its mean true value score plus "
        "Gaussian noise of this standard deviation (score units)",
    )
    cloud_cover_mean: float = Field(0.25, ge=0, le=1)
    chunk: int = Field(
        1024, ge=64, le=MAX_TILE, description=f"pixels per generation window; bounds memory (at most {MAX_TILE})"
    )
    changes: list[ChangeEvent] | None = Field(None, description="land-cover changes between years; None: automatic")

    # Patches per later year when ``changes`` is None: (kind, count, radius in metres).
    AUTO_CHANGES: ClassVar[tuple[tuple[str, int, float], ...]] = (
        ("clearing", 3, 120.0),
        ("built_up", 2, 90.0),
        ("wetland_restored", 1, 110.0),
    )

    @property
    def first_year(self) -> int:
        """Calendar year of ``start`` (the region's first year; its land cover is the baseline)."""
        return int(self.start[:4])

    @property
    def calendar_years(self) -> list[int]:
        """The region's calendar years, ``first_year`` first."""
        return list(range(self.first_year, self.first_year + self.years))

    def change_events(self) -> list[ChangeEvent]:
        """The change events in effect, sorted by year (stable): ``changes`` or the automatic default."""
        if self.changes is not None:
            return sorted(self.changes, key=lambda e: e.year)
        if self.years == 1:
            return []
        return [
            ChangeEvent(year=year, kind=kind, count=count, size_m=size)  # type: ignore[arg-type]
            for year in self.calendar_years[1:]
            for kind, count, size in self.AUTO_CHANGES
        ]

    @field_validator("start", mode="before")
    @classmethod
    def _start_is_a_date(cls, v: Any) -> Any:
        v = _date_text(v)
        if isinstance(v, str):
            _iso_date(v)
        return v

    @model_validator(mode="after")
    def _changes_within_years(self) -> SimConfig:
        later = self.calendar_years[1:]
        for event in self.changes or []:
            if event.year not in later:
                span = f"{later[0]}..{later[-1]}" if later else "none: sim.years is 1"
                raise ValueError(f"sim.changes: year {event.year} is not a later year of the region ({span})")
        return self

    @model_serializer(mode="wrap")
    def _omit_automatic_changes(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Without explicit changes the dump is what it was before sim.changes existed, so the region's hash, its
        # manifest and every store's config attrs stay the same.
        out = handler(self)
        if self.changes is None:
            out.pop("changes", None)
        return out


class StacConfig(_Section):
    """Where the catalogue lives: a STAC API we start on loopback, or an existing URL."""

    backend: Literal["memory", "pgstac"] = "memory"
    url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    s2_collection: str = "virtual-sentinel-2-l2a"
    env_collection: str = "virtual-environment"
    timeout: float = Field(30.0, gt=0, description="seconds to wait for each STAC API response")
    retries: int = Field(3, ge=0, description="retries (with backoff) of a failed or timed-out STAC API request")


class CubeConfig(_Section):
    """The Sentinel-2 cube: resolution, chunking, bands, masking and compositing."""

    resolution: float = Field(20.0, gt=0)
    chunk: int = Field(512, ge=16, le=MAX_TILE, description=f"cube chunk side in pixels (at most {MAX_TILE})")
    bands: list[str] = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
    datetime: str | None = None
    max_cloud_cover: float = Field(90.0, ge=0, le=100)
    mask_scl: list[int] = [0, 1, 3, 8, 9, 10]
    composite: Literal["QS-DEC", "MS", "YS"] = "QS-DEC"
    indices: list[Literal["ndvi", "ndwi", "ndmi"]] = ["ndvi"]

    @field_validator("bands")
    @classmethod
    def _bands_nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("cube.bands must name at least one band")
        return v

    @field_validator("datetime", mode="before")
    @classmethod
    def _datetime_interval(cls, v: Any) -> Any:
        """A date, or an interval ``start/end`` of dates (``..`` or nothing: open), as a STAC search takes it."""
        v = _date_text(v)
        for part in v.split("/") if isinstance(v, str) else ():
            if part not in ("", ".."):
                _iso_date(part)
        return v


# Kubernetes names (RFC 1123 labels: namespaces, services, config maps, secrets, service accounts): lower-case letters,
# digits and '-', at most 63 characters. The cluster's name is shorter: the operator appends "-scheduler",
# "-default-worker-<uuid>" and the like to it.
_K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A Kubernetes resource quantity ("4", "500m", "16Gi", "1e3"): refused here, not by the API server at apply time.
_QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
# The commands that run as driver Jobs on the cluster (geoplantnet <command>), in the order a first map runs them.
DRIVER_COMMANDS = ("sdm", "map", "habitats", "habitat-map", "indicators", "value", "impact")


def _quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. '4', '500m', '16Gi')")
    return value


def _k8s_name(max_length: int = 63, **kwargs: Any) -> Any:
    return Field(pattern=_K8S_NAME, min_length=1, max_length=max_length, **kwargs)


class Toleration(_Section):
    """A pod toleration of a node taint (e.g. the ``nvidia.com/gpu`` taint of GPU nodes). The taint's key is named
    ``taint`` here: a setting named like a credential (``key``) is redacted wherever the configuration is written."""

    taint: str = Field(..., min_length=1, description="the taint's key (e.g. nvidia.com/gpu)")
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None

    @model_validator(mode="after")
    def _value_with_equal(self) -> Toleration:
        if (self.operator == "Equal") != (self.value is not None):
            raise ValueError("a toleration has a value with operator Equal, and only then")
        return self


class WorkerGroupConfig(_Section):
    """One group of Dask worker pods: how many, the resources each asks for, where they may run."""

    replicas: int = Field(4, ge=0, le=10_000, description="worker pods (at most 10000)")
    cpu: str = Field("4", description="CPU of each worker pod (request = limit)")
    memory: str = Field("16Gi", description="memory of each worker pod (request = limit)")
    tolerations: list[Toleration] = []
    node_selector: dict[str, str] = {}

    _quantities = field_validator("cpu", "memory")(_quantity)


class GpuWorkerGroupConfig(WorkerGroupConfig):
    """The GPU workers (the ``gpu`` overlay): one ``nvidia.com/gpu`` per pod, advertised to Dask as ``GPU=1`` (what
    training and inference tasks ask for), on the GPU image, tolerating GPU nodes' taint."""

    replicas: int = Field(2, ge=0, le=10_000, description="GPU worker pods (at most 10000)")
    cpu: str = "8"
    memory: str = "32Gi"
    tolerations: list[Toleration] = [Toleration(taint="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    node_selector: dict[str, str] = {"nvidia.com/gpu.present": "true"}


class AutoscalerConfig(_Section):
    """The ``DaskAutoscaler`` of the CPU worker group: the scheduler's adaptive target, kept within these bounds."""

    minimum: int = Field(1, ge=0, le=10_000)
    maximum: int = Field(16, ge=1, le=10_000)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalerConfig:
        if self.minimum > self.maximum:
            raise ValueError(f"autoscaler.minimum ({self.minimum}) exceeds autoscaler.maximum ({self.maximum})")
        return self


class VolumeConfig(_Section):
    """An optional shared volume (ReadWriteMany claim) mounted at ``mount_path`` in the workers and drivers, which run
    there (``workingDir``): relative paths of the pipeline (a local ``workdir`` or ``store.root``) are then the same
    files on every pod. Not needed when ``workdir`` and ``store.root`` are object-store URLs (the default deployment:
    the pods share no disk)."""

    claim: str | None = _k8s_name(default=None, description="claim name; None: no shared volume")
    create: bool = Field(True, description="render the PersistentVolumeClaim (False: the claim exists already)")
    size: str = "1Ti"
    storage_class: str | None = Field(None, description="a class that offers ReadWriteMany (NFS, CephFS, EFS, ...)")
    mount_path: str = Field("/data", pattern=r"^/")

    _size = field_validator("size")(_quantity)


class DriverJobsConfig(_Section):
    """The driver Jobs (``geoplantnet <command> --scheduler <the DaskCluster's scheduler>``), one per command, created
    suspended: each is started on purpose (``kubectl patch job ... suspend=false``), in order."""

    commands: list[Literal[DRIVER_COMMANDS]] = Field(
        [c for c in DRIVER_COMMANDS if c != "impact"],
        description="the Jobs rendered (impact too once args.impact names its --scenario)",
    )
    args: dict[Literal[DRIVER_COMMANDS], list[str]] = Field(
        {},
        description="more arguments of a command's Job (impact: --scenario and --footprint, e.g. files of "
        "kubernetes.files under /etc/geoplantnet)",
    )
    cpu: str = "2"
    memory: str = "8Gi"
    backoff_limit: int = Field(
        6,
        ge=0,
        le=100,
        description="retries of a failed driver pod; a retry resumes from the tile markers once the killed pod's "
        "store lease expired (store.lease_ttl_s): pods back off 10 s, 20 s, 40 s, ..., so 4 or more outlast 120 s",
    )
    active_deadline_s: int = Field(2 * 86_400, ge=60, description="a Job running longer is stopped (seconds)")

    _quantities = field_validator("cpu", "memory")(_quantity)

    @model_validator(mode="after")
    def _impact_has_a_scenario(self) -> DriverJobsConfig:
        # the one argument a driver command requires: without it the Job's pod would only print its usage
        if "impact" in self.commands and "--scenario" not in self.args.get("impact", []):
            raise ValueError(
                "the impact Job needs args.impact with --scenario FILE (e.g. a file of cluster.kubernetes.files under "
                "/etc/geoplantnet); or leave impact out of jobs.commands"
            )
        return self


class RefreshCronConfig(_Section):
    """The annual refresh as a ``CronJob``: ``geoplantnet refresh --year last`` (the calendar year before the run's),
    one run at a time, retried within its deadline; a retried run resumes the year."""

    enabled: bool = True
    schedule: str = Field(
        "0 3 1 3 *",
        pattern=r"^\S+ \S+ \S+ \S+ \S+$",
        description="cron schedule in time_zone (default 1 March 03:00: the year's November imagery is processed)",
    )
    time_zone: str = "Etc/UTC"
    store_root: str | None = Field(
        None,
        description="where the series and their run summaries live (an object-store URL, or a path on the shared "
        "volume); None: the pipeline's store.root",
    )
    starting_deadline_s: int = Field(
        86_400, ge=10, description="a run not started this long after its time is skipped (seconds)"
    )
    active_deadline_s: int = Field(7 * 86_400, ge=60, description="a refresh running longer is stopped (seconds)")
    backoff_limit: int = Field(6, ge=0, le=100, description="retries of a failed refresh pod (each resumes the year)")


class KubernetesConfig(_Section):
    """The Kubernetes deployment (``geoplantnet deploy render``) and the dask-kubernetes cluster it describes (made by a
    job itself when ``cluster.kind`` is ``kubernetes``). Credentials never appear here: pods read them from the
    Secrets named in ``env_from`` (``envFrom``)."""

    name: str = _k8s_name(
        40, default="geoplantnet", description="the DaskCluster's name (its Service: <name>-scheduler)"
    )
    namespace: str = _k8s_name(default="geoplantnet")
    service_account: str = _k8s_name(default="geoplantnet")
    image: str = Field("ghcr.io/geoplantnet/geoplantnet:0.1.0", min_length=1, description="the CPU image")
    gpu_image: str = Field("ghcr.io/geoplantnet/geoplantnet-cuda:0.1.0", min_length=1, description="the GPU image")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # not named "secrets": a setting named like a credential is redacted wherever the configuration is written
    env_from: list[Annotated[str, _k8s_name()]] = Field(
        ["geoplantnet-credentials"],
        description="Secrets whose keys become environment variables of the workers and drivers (AWS_ACCESS_KEY_ID, "
        "...): the only way credentials reach a pod",
    )
    config_map: str = _k8s_name(default="geoplantnet-pipeline", description="holds the pipeline YAML")
    config_path: str = Field("/etc/geoplantnet", pattern=r"^/", description="where the config map is mounted")
    files: dict[str, str] = Field(
        {},
        description="more files of the config map: key -> local file read when rendering (a scenario, a footprint)",
    )
    workers: WorkerGroupConfig = WorkerGroupConfig()
    gpu_workers: GpuWorkerGroupConfig = GpuWorkerGroupConfig()
    use_gpu_workers: bool = Field(
        False, description="cluster.kind=kubernetes: the job's own cluster gets the GPU worker group too"
    )
    autoscaler: AutoscalerConfig = AutoscalerConfig()
    scheduler_cpu: str = "1"
    scheduler_memory: str = "4Gi"
    volume: VolumeConfig = VolumeConfig()
    jobs: DriverJobsConfig = DriverJobsConfig()
    refresh: RefreshCronConfig = RefreshCronConfig()

    _quantities = field_validator("scheduler_cpu", "scheduler_memory")(_quantity)

    @field_validator("files")
    @classmethod
    def _file_keys(cls, files: dict[str, str]) -> dict[str, str]:
        for key in files:
            if not re.match(r"^[-._a-zA-Z0-9]+$", key) or key == "pipeline.yaml":
                raise ValueError(
                    f"{key!r} cannot be a config map key (letters, digits, '-', '_', '.'; not pipeline.yaml)"
                )
        return files


class ClusterConfig(_Section):
    """Which Dask cluster runs the job (see :mod:`geoplantnet.runtime.cluster`)."""

    kind: Literal["local", "address", "kubernetes"] = "local"
    address: str | None = None
    n_workers: int = Field(2, ge=1, le=MAX_WORKERS, description=f"local worker processes (at most {MAX_WORKERS})")
    threads_per_worker: int = Field(1, ge=1, le=MAX_WORKERS, description=f"threads per worker (at most {MAX_WORKERS})")
    memory_limit: str = "4GiB"
    dashboard_address: str = "127.0.0.1:0"
    connect_timeout: str = "20s"
    kubernetes: KubernetesConfig = KubernetesConfig()

    @model_validator(mode="after")
    def _address_given(self) -> ClusterConfig:
        if self.kind == "address" and not self.address:
            raise ValueError("cluster.kind=address needs cluster.address (e.g. tcp://127.0.0.1:8786)")
        return self


class StoreConfig(_Section):
    """Where outputs go: a local folder or an fsspec URL (s3://...), with its storage options."""

    root: str = "outputs"
    storage_options: dict[str, Any] = Field(
        {},
        description="fsspec options for object storage (endpoint, region, ...); credentials are better taken from "
        "the environment (AWS_ACCESS_KEY_ID, ...) or fsspec's configuration; they are never written to any output",
    )
    timeout: float = Field(60.0, gt=0, description="seconds to wait for each object-store request")
    retries: int = Field(5, ge=0, description="retries (with backoff) of a failed object-store request")
    lease_ttl_s: float = Field(
        120.0, ge=5, description="a writer's lease on a store expires this long after its last heartbeat"
    )


class ModelConfig(_Section):
    """The multimodal species network's sizes (built from this, never downloaded)."""

    patch_size: int = Field(16, ge=4, description="Sentinel-2 patch side in cube pixels")
    env_patch_size: int = Field(5, ge=1, description="environmental patch side in map pixels")
    width: int = Field(32, ge=4, description="channels of the patch CNN")
    depth: int = Field(3, ge=1)
    patch_pool: Literal["mean", "conv"] = Field(
        "mean", description="how the patch encoder summarises the window after its 3x3 blocks (see SpeciesNet)"
    )
    series_hidden: int = Field(32, ge=4)
    env_hidden: int = Field(32, ge=4)
    fusion_hidden: int = Field(128, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)


class TrainConfig(_Section):
    """Training: optimisation, presence-only handling, device, seeds."""

    epochs: int = Field(40, ge=1, le=MAX_EPOCHS, description=f"at most {MAX_EPOCHS}")
    batch_size: int = Field(128, ge=1, le=65_536, description="samples per optimiser step (at most 65536)")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(6, ge=1, description="early stopping on the spatial validation split")
    monitor: Literal["auto", "loss"] = Field(
        "loss",
        description="what early stopping watches on the validation split: auto = the macro AUC of its surveys, or "
        "without surveys the AUC of each species' records against the other species' record sites (target group, "
        "records of 2 species or more), else the loss; loss = always the loss",
    )
    seed: int = 0
    # The ranking recipe (benchmarks/nceas_ablation.py, benchmarks/virtual_species.py; chosen on training folds by the
    # AUC against the target group) is DeepMaxent on the record sites: the pipelines of presence-only data write it
    # out (pipelines/nceas-*.yaml, bradypus.yaml). It is not the code default: DeepMaxent's outputs are relative
    # intensities (a constant per species is free), and on the virtual region, whose maps feed expected richness and
    # impact, it lost the sign of the footprint's richness change (tests/test_impact.py); the full weighted loss keeps
    # probabilities that sum to a richness.
    po_loss: Literal["full_weighted", "assume_negative", "deepmaxent"] = "full_weighted"
    # Loss weights (geoplantnet.models.losses): Zbinden et al. 2024 "full weighted" loss, lambda2 = 0.5 their best.
    po_lambda1: float = Field(1.0, gt=0, description="multiplier on presence weights n / n_s (full_weighted)")
    po_lambda2: float = Field(0.5, ge=0, le=1, description="share of background vs other-species pseudo-absences")
    an_negative_weight: float = Field(0.05, ge=0, description="assume_negative: weight of other species at a record")
    po_sites: Literal["records", "records_and_background"] = Field(
        "records_and_background",
        description="presence-only rows the deep model learns from: the record sites only (target-group: DeepMaxent "
        "normalises over the sites someone recorded at, which carry the observer bias; Ryckewaert et al. 2024) or the "
        "records and the background points (kept with records of one species: the records alone hold no contrast); "
        "MaxEnt and the forest always take the background",
    )
    background: Literal["target_group", "uniform"] = "target_group"
    n_background: int = Field(
        2000, ge=0, description="background points, all drawn on cells where every predictor has data"
    )
    nearest_valid_cells: int = Field(
        1,
        ge=0,
        description="a record (pa/po, never background) whose cell has no predictor data after the warp "
        "(a coastal cell partly sea) moves to the nearest valid cell within this many cells, and so does a point of "
        "`predict`; 0 disables",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = True
    scaling: Literal["standard", "robust"] = Field(
        "standard", description="input normalisation: mean/std, or median/IQR (robust to outliers and skew)"
    )
    ensemble: int = Field(
        5,
        ge=1,
        le=MAX_ENSEMBLE,
        description="networks trained with seeds seed..seed+n-1, each stopping early on other blocks, and averaged "
        f"(the recipe's 5 won on NCEAS and on rasters, benchmarks/nceas_ablation.py; at most {MAX_ENSEMBLE})",
    )


class ValidationConfig(_Section):
    """Spatial block cross-validation and metrics."""

    block_size_m: float | None = Field(None, gt=0, description="None: from the residual/predictor autocorrelation")
    folds: int = Field(5, ge=2)
    top_k: int = Field(10, ge=1)
    threshold: float = Field(0.5, gt=0, lt=1)
    seed: int = 0
    models: list[Literal["cnn", "maxent", "maxent_tuned", "random_forest"]] = Field(
        ["cnn", "maxent", "maxent_tuned", "random_forest"],
        description="models fitted and scored side by side on the same folds; maxent_tuned: MaxEnt with feature "
        "classes x beta chosen per species on spatial blocks of the training rows (geoplantnet.models.maxent_tuning)",
    )
    maxent_features: list[str] = Field(
        list(MAXENT_FEATURE_CLASSES),
        min_length=1,
        description="feature classes maxent_tuned tries, simplest first (ties go to the earliest): ENMeval's letters "
        "L linear, Q quadratic, H hinge, P product, T threshold",
    )
    maxent_betas: list[float] = Field(
        list(MAXENT_BETAS), min_length=1, description="regularisation (beta) multipliers maxent_tuned tries"
    )

    @field_validator("maxent_features")
    @classmethod
    def _feature_classes(cls, value: list[str]) -> list[str]:
        bad = [v for v in value if not re.fullmatch(r"[LQHPT]+", v)]
        if bad:
            raise ValueError(f"feature classes {bad}: use the letters L, Q, H, P, T (e.g. LQH)")
        return value

    @field_validator("maxent_betas")
    @classmethod
    def _betas(cls, value: list[float]) -> list[float]:
        if any(not b > 0 for b in value):
            raise ValueError("beta multipliers must be > 0")
        return value

    calibration: Literal["platt", "isotonic", "none"] = Field(
        "platt",
        description="per-species calibration of the final models, fitted on the out-of-fold predictions at "
        "presence-absence samples (platt: logistic on the logit; isotonic: monotone steps; none: off); presence-only "
        "data are never calibrated (relative suitability)",
    )


class MapConfig(_Section):
    """Map production: a trained species model over the whole grid, tile by tile (:mod:`geoplantnet.jobs.mapping`)."""

    model: str | None = Field(None, description="trained model file (path or URL); None trains one on the region")
    tile: int = Field(
        128,
        ge=8,
        le=MAX_TILE,
        description=f"tile side in map pixels; also the Zarr chunk/shard side (at most {MAX_TILE})",
    )
    species_chunk: int = Field(16, ge=1, description="species per Zarr chunk (inside one shard per tile)")
    batch_mb: int = Field(
        512,
        ge=16,
        le=MAX_BATCH_MB,
        description=f"GPU: activation memory per forward pass (row strips of a tile; MiB, at most {MAX_BATCH_MB})",
    )
    cpu_batch_mb: int = Field(
        64,
        ge=4,
        le=MAX_BATCH_MB,
        description="CPU: activations per forward pass (MiB); strips that stay in cache ran ~1.7x faster than a "
        f"whole 256-pixel tile (benchmarks/bench_map.py); at most {MAX_BATCH_MB}",
    )
    max_in_flight: int | None = Field(None, ge=1, description="tiles submitted at once; None: 2 per worker thread")
    retries: int = Field(2, ge=0, description="retries of a failed tile task (a dead worker is retried anyway)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = True


class InputsConfig(_Section):
    """What a run reads: a user's observations and predictor rasters, and/or Sentinel-2 from ``stac.url``.

    Nothing set (no observations, no rasters, ``sentinel2`` false) means the virtual region (the demo and the tests).
    The ``sdm``, ``map`` and ``predict`` commands' flags (``--observations``, ``--rasters``, ...) override these.
    """

    observations: str | None = Field(None, description="CSV or GeoParquet of records (needed to train)")
    x: str = Field("lon", description="x/longitude column of a CSV (observations, and predict's points)")
    y: str = Field("lat", description="y/latitude column of a CSV")
    crs: str = Field("EPSG:4326", description="CRS of the CSV coordinates")

    @field_validator("crs")
    @classmethod
    def _known_crs(cls, v: str) -> str:
        return known_crs(v)

    species: str = Field("species", description="species column")
    presence: str | None = Field(None, description="presence/absence column (1/0); None: presence-only")
    survey: str | None = Field(None, description="survey/plot id column: rows sharing it form one survey")
    rasters: list[str] = Field([], description="predictor GeoTIFFs (local paths, any CRS; one layer per band)")
    categorical: list[str] = Field([], description="layers holding class codes (file stems or band descriptions)")
    sentinel2: bool = Field(False, description="Sentinel-2 composites from stac.url (stac.s2_collection, cube.*)")

    @property
    def virtual(self) -> bool:
        """True when nothing is configured: the virtual region provides the inputs."""
        return self.observations is None and not self.rasters and not self.sentinel2


class TableConfig(_Section):
    """Species records with their predictor values already extracted (``geoplantnet sdm-table``): presence-only records,
    background sites and, optionally, independent presence-absence sites; CSV (optionally gzipped) or Parquet."""

    presence: str | None = Field(None, description="presence-only records: one row per record, predictor columns")
    background: str | None = Field(None, description="background sites: predictor columns (species column ignored)")
    test: str | None = Field(
        None,
        description="independent presence-absence sites: wide (one 1/0 column per species, empty = not "
        "surveyed) or long (site, species, presence columns)",
    )
    test_env: str | None = Field(
        None, description="predictors of the test sites when `test` lacks them (joined on the site column)"
    )
    site: str = Field("siteid", description="site id column (records at one site are merged into one sample)")
    species: str = Field("species", description="species column")
    group: str | None = Field(None, description="biological group column: test sites of a group score its species")
    presence_column: str = Field("presence", description="1/0 column of a long test table")
    x: str = "x"
    y: str = "y"
    crs: str = Field("EPSG:4326", description="CRS of x/y; geographic coordinates are projected for spatial blocks")

    @field_validator("crs")
    @classmethod
    def _known_crs(cls, v: str) -> str:
        return known_crs(v)

    predictors: list[str] | None = Field(
        None,
        description="predictor columns; None: the numeric columns the tables share, minus ids, coordinates and "
        "columns constant in a table (such as an occurrence flag)",
    )
    categorical: list[str] = Field([], description="predictor columns holding class codes (one-hot encoded)")
    share: Literal["region", "group", "species"] = Field(
        "region", description="one deep model for all species, one per group, or one per species"
    )
    cross_validate: bool = Field(
        False, description="with a test table, also cross-validate on spatial blocks of the training data"
    )


class PlotModelConfig(_Section):
    """Pl@ntBERT's sizes: a small BERT over species tokens (built from this, never downloaded)."""

    hidden: int = Field(128, ge=8, description="hidden size (a multiple of heads)")
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    intermediate: int = Field(256, ge=8, description="feed-forward size")
    max_species: int = Field(64, ge=2, description="species per plot sentence (most abundant first; the rest cut)")
    dropout: float = Field(0.1, ge=0, lt=1)


class PlotTrainConfig(_Section):
    """Fill-mask pre-training and habitat fine-tuning of Pl@ntBERT."""

    pretrain_epochs: int = Field(
        60,
        ge=0,
        le=MAX_EPOCHS,
        description=f"fill-mask epochs; 0 = no pre-training (the ablation); at most {MAX_EPOCHS}",
    )
    continue_epochs: int = Field(
        10,
        ge=0,
        le=MAX_EPOCHS,
        description="where the corpus holds lists of no labelled plot (habitats.unlabelled), the fill-mask model is "
        "pre-trained on them once (pretrain_epochs) and each fold continues on its corpus (with its training plots) "
        f"for this many epochs; at most {MAX_EPOCHS}",
    )
    continue_lr: float = Field(
        5e-4, gt=0, description="learning rate of the continued pre-training (chosen on a fold's validation plots)"
    )
    finetune_epochs: int = Field(40, ge=1, le=MAX_EPOCHS, description=f"at most {MAX_EPOCHS}")
    batch_size: int = Field(64, ge=1, le=4096, description="plots per optimiser step (at most 4096)")
    pretrain_lr: float = Field(2e-3, gt=0)
    finetune_lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    mask_prob: float = Field(0.15, gt=0, lt=1, description="share of a plot's species masked (80/10/10)")
    patience: int = Field(8, ge=1, description="early stopping on a spatial validation split of the training folds")
    shuffle_species: bool = Field(
        False,
        description="species lists carry no cover order (e.g. GLC24 ids): shuffle each plot's species in every "
        "batch, so the model reads a set, not an arbitrary order",
    )
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = True


class HabitatStackConfig(_Section):
    """The stacked habitat classifier (``habitats.models: stack``): members, their grids, how the choice is made.

    Every choice is made on the inner spatial validation plots of the training plots: each logistic member's ``C``
    and the members' weights (simplex grid) by log-loss, then the decoding (EUNIS-parent weights, logit adjustment
    ``tau``) by top-1 + macro-F1; the members are then refitted on training + validation plots."""

    members: list[Literal["logistic", "logistic_tfidf", "knn_jaccard", "knn_cosine"]] = [
        "logistic",
        "logistic_tfidf",
        "knn_jaccard",
        "knn_cosine",
    ]
    logistic_c: list[float] = Field([1.0, 3.0, 10.0, 30.0], min_length=1, description="C grid, binary bag")
    tfidf_c: list[float] = Field([10.0, 30.0, 100.0, 300.0], min_length=1, description="C grid, tf-idf bag")
    knn: int = Field(10, ge=1, description="neighbours of the k-nearest-plots members")
    weight_step: float = Field(0.1, gt=0, le=1, description="grid step of the members' weights (sum 1)")
    parent_weights: list[float] = Field(
        [0.0, 0.5, 1.0], min_length=1, description="grid: weight of log p(L2, L1 parent)"
    )
    tau: list[float] = Field([0.0, 0.25, 0.5], min_length=1, description="grid: logit adjustment -tau log prior")


class HabitatsConfig(_Section):
    """Vegetation plots -> EUNIS habitats (``geoplantnet habitats``): the plot table, models, folds, peers.

    A plot table is either one row per plot with a species-list column (species in cover order, ``separator``
    between them) or one row per plot x species with a ``cover`` column (species ordered by summed cover).
    """

    plots: str | None = Field(None, description="CSV or Parquet of plots (None: the virtual region's plots)")
    unlabelled: list[str] = Field([], description="more plot tables (same columns) for fill-mask pre-training only")
    plot: str = Field("plot", description="plot id column")
    species: str = Field("species", description="species column: a list (wide) or one species per row (long)")
    cover: str | None = Field(None, description="cover column of a long table; None: species lists in cover order")
    separator: str | None = Field(
        None, description="between species in a list; None: ';' or ',' if present, else whitespace"
    )
    habitat: str = Field("habitat", description="habitat code column (EUNIS); empty = unlabelled")
    x: str = Field("lon", description="x/longitude column")
    y: str = Field("lat", description="y/latitude column")
    level: int = Field(3, ge=1, le=4, description="EUNIS level the classifier predicts (codes are cut to it)")
    names: str | None = Field(
        None,
        description="CSV of habitat codes and names (the first column holds codes, the first column with "
        "'name' in its header the names), e.g. the EUNIS 2021 list: saved with the classifier, written to habitat.zarr",
    )
    block_size: float = Field(1.0, gt=0, description="spatial fold blocks, in units of x/y (1 degree for lon/lat)")
    folds: int = Field(5, ge=2)
    seed: int = 0
    min_plots: int = Field(2, ge=1, description="classes with fewer training plots are kept out of the classes")
    # plantbert_scratch (no pre-training) is the measured ablation (README): selectable, not run by default
    models: list[Literal["plantbert", "plantbert_scratch", "logistic", "random_forest", "knn_jaccard", "stack"]] = [
        "plantbert",
        "logistic",
        "random_forest",
        "knn_jaccard",
        "stack",
    ]
    knn: int = Field(10, ge=1, description="neighbours of the Jaccard k-nearest-plots peer")
    classifier: Literal["stack", "plantbert"] = Field(
        "stack",
        description="the model trained on every labelled plot and saved as model/ (fill-mask/ too if "
        "plantbert is in habitats.models)",
    )
    stack: HabitatStackConfig = HabitatStackConfig()
    model: PlotModelConfig = PlotModelConfig()
    train: PlotTrainConfig = PlotTrainConfig()
    map_species: int | None = Field(
        None,
        ge=1,
        description="habitat map: a pixel's sentence is its top-K species by probability; None: the "
        "species above their saved thresholds (capped at model.max_species)",
    )
    map_model: Literal["folder", "auto", "assemblage", "predictors", "joint"] = Field(
        "folder",
        description="habitat-map: 'folder' maps the classifier folder (--model); otherwise habitat-map trains the "
        "map's own forest at the labelled plots on the species model's cross-fitted predicted assemblages "
        "('assemblage'), the point predictors ('predictors', the direct forest) or both ('joint'); 'auto': the best "
        "of the three on the spatial folds. Saved in <store.root>/habitats/map-model",
    )
    top_k: int = Field(
        10, ge=1, description="classes kept per pixel in habitat.zarr's top_k (and top_k_probability: conformal sets)"
    )
    # the saved classifier's conformal sets, and ``habitats classify`` (a saved classifier applied to a plot table)
    conformal_level: float = Field(
        0.9, gt=0, lt=1, description="coverage of the conformal habitat sets calibrated with the saved classifier"
    )
    classify_top_k: int = Field(3, ge=1, description="habitats classify: habitat codes per plot (--top-k)")
    classify_missing: int = Field(
        5, ge=0, description="habitats classify: the fill-mask model's most likely missing species per plot (--missing)"
    )
    # EUNIS-ESy, the expert-system peer (docs/esy.md): no training, scored on the same test plots as the models
    esy: str | None = Field(
        None,
        description="EUNIS-ESy definition file (e.g. EUNIS-ESy-2021-06-01.txt): the expert system is one more row of "
        "the report (plot tables with species names and a cover column only); None: no ESy row",
    )
    esy_header: dict[str, str] = Field(
        {}, description="ESy header field -> plot-table column (DEG_LON, DEG_LAT, Altitude, Ecoreg, Country, ...)"
    )
    esy_constants: dict[str, str | float] = Field(
        {}, description="ESy header field -> one value for every plot (e.g. Country: Germany, Ecoreg: 686)"
    )
    esy_synonyms: dict[str, str] = Field(
        {}, description="data taxon name -> the name ESy knows, applied before ESy's own species aggregation"
    )


class IndicatorsConfig(_Section):
    """Biodiversity indicators (``geoplantnet indicators``): status tables, calibration plots, uncertainty settings.

    Unset tables on the virtual region are the region's own (``tables/species_status.csv``, ``habitat_status.csv``)."""

    status: str | None = Field(
        None,
        description="species status table (CSV/Parquet: a species id or name column; invasive, iucn, "
        "threatened, protected columns)",
    )
    invasive_list: str | None = Field(
        None,
        description="the EU list of invasive alien species of Union concern (GBIF-matched CSV): names on it "
        "count as invasive, in addition to the status table",
    )
    protected_list: str | None = Field(
        None, description="the Habitats Directive Art. 17 checklist (GBIF-matched CSV): names on it count as protected"
    )
    habitat_red_list: str | None = Field(
        None,
        description="European Red List of habitats crosswalk to EUNIS 2021 (folder or CSV), or a CSV of habitat "
        "code and Red List category",
    )
    plots: str | None = Field(
        None,
        description="presence-absence survey plots (same columns as habitats.*) held out from training, to "
        "calibrate and test the intervals; None on the virtual region: independent surveys drawn for the purpose",
    )
    n_surveys: int = Field(300, ge=0, description="virtual region: independent surveys drawn for calibration")
    recalibrate: Literal["auto", "always", "never"] = Field(
        "auto",
        description="fit per-species Platt maps on half the surveys (spatial folds) before the indicators "
        "when the species map is not calibrated (auto), always, or never; the other half calibrates the intervals",
    )
    level: float = Field(0.9, gt=0, lt=1, description="nominal coverage of every interval and habitat set")
    draws: int = Field(
        32,
        ge=2,
        le=MAX_DRAWS,
        description=f"Monte-Carlo assemblages per pixel (Shannon, ecosystem health; at most {MAX_DRAWS})",
    )
    folds: int = Field(5, ge=2, description="spatial folds of the calibration plots for the coverage estimate")
    block_size: float = Field(1000.0, gt=0, description="metres: side of the spatial blocks of those folds")
    typical_species: int = Field(10, ge=1, description="typical species per habitat (highest phi fidelity)")
    min_phi: float = Field(0.2, ge=0, lt=1, description="least phi fidelity of a typical species")
    seed: int = 0


class RefreshConfig(_Section):
    """The annual monitoring refresh (``geoplantnet refresh --year YYYY``): every store under ``store.root`` gets the
    year along its ``year`` axis, and ``changes.zarr`` the change since the previous mapped year."""

    habitat_model: str | None = Field(
        None, description="habitat classifier folder (default <store.root>/habitats/model; none there: no habitat maps)"
    )
    change_z: float | None = Field(
        None,
        gt=0,
        description="a change is reported where |difference - shift| > change_z x the pixel's noise; None: the bound "
        "of false_alarm_rate",
    )
    false_alarm_rate: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="chance that noise alone flags any pixel of the map (Bonferroni over pixels and the indicators "
        "of change_indicators, under each pixel's normal noise)",
    )
    change_indicators: list[str] = Field(
        ["richness_expected"],
        min_length=1,
        description="what decides `changed`: indicators of changes.zarr and/or habitat_transition",
    )
    noise_pixels: int = Field(1_000_000, ge=1000, description="pixels sampled to estimate each difference's noise")


class ValueConfig(_Section):
    """The biodiversity-value model (``geoplantnet value``): a small U-Net learns high / low value from labelled
    polygons and maps ``biodiversity_value`` in [0, 1] at ``resolution``; a random forest on the same pixels is its
    peer on spatial folds of whole polygons. With ``score_column`` both learn the polygons' numeric condition score
    instead, and ``biodiversity_value`` is that score rescaled linearly (the store's attrs hold the rescaling)."""

    polygons: str | None = Field(
        None, description="GeoParquet / GeoJSON / GeoPackage of labelled polygons (any CRS); None: the virtual region's"
    )
    label_column: str = Field("value", description="column holding each polygon's label")
    high: str = Field("high", description="label of high-value polygons")
    low: str = Field("low", description="label of low-value polygons")
    score_column: str | None = Field(
        None,
        description="column of a numeric condition score per polygon (e.g. a field survey's): the models learn it "
        "(a regression; the map is linear in its units, never saturating) rather than the probability of high; "
        "None: the probability of high",
    )
    resolution: float = Field(10.0, gt=0, description="metres; divides the map resolution (the 50 m aggregate)")
    tile: int = Field(
        320,
        ge=16,
        le=MAX_TILE,
        description=f"pixels per tile and Zarr chunk side at the value resolution (at most {MAX_TILE})",
    )
    base_channels: int = Field(16, ge=2, description="U-Net channels at full resolution (doubled per level)")
    depth: int = Field(2, ge=1, le=5, description="U-Net down-sampling levels")
    dropout: float = Field(0.2, ge=0, lt=1, description="Dropout2d rate (also the MC-dropout draws' rate)")
    epochs: int = Field(
        40,
        ge=1,
        le=MAX_EPOCHS,
        description=f"passes; each draws one training crop per training polygon (at most {MAX_EPOCHS})",
    )
    patience: int | None = Field(
        None,
        ge=1,
        description="early stopping: hold out a spatial fifth of each model's training polygons and stop after this "
        "many epochs without a better loss on them; None: every epoch on every training polygon",
    )
    batch: int = Field(16, ge=1, le=1024, description="crops per optimiser step (at most 1024)")
    crop: int = Field(
        64, ge=8, le=2048, description="training crop side in pixels (a multiple of 2**depth; at most 2048)"
    )
    lr: float = Field(2e-3, gt=0)
    folds: int = Field(5, ge=2, description="spatial folds of whole polygons")
    block_size_m: float = Field(1000.0, gt=0, description="metres: polygons are grouped into blocks by centroid")
    pixels_per_polygon: int = Field(
        200, ge=1, description="labelled pixels sampled per polygon for the forest and for both models' test scores"
    )
    forest_trees: int = Field(300, ge=1, le=10_000, description="trees of the random-forest peer (at most 10000)")
    model: Literal["unet", "forest", "blend"] = Field(
        "unet",
        description="the shipped model that maps value.zarr: the U-Net, the class-balanced forest, or their blend "
        "(the U-Net's weight chosen from blend_weights on the inner validation split of the training polygons, "
        "never a test fold; scored on the folds as its own row)",
    )
    blend_weights: tuple[float, ...] = Field(
        (0.0, 0.25, 0.5, 0.75, 1.0),
        min_length=1,
        description="the U-Net's weights a blend chooses from (the forest's is 1 - w; 0 and 1: one model alone)",
    )
    draws: int = Field(
        16, ge=0, le=MAX_DRAWS, description=f"MC-dropout draws for the map's uncertainty (0: none; at most {MAX_DRAWS})"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _aligned(self) -> ValueConfig:
        step = 2**self.depth
        # the U-Net pools by 2 ``depth`` times: tiles and crops on multiples of 2**depth keep the pooling grid the
        # same in every tile, so tiles predict what one pass over the whole grid would (no seams)
        for name in ("tile", "crop"):
            if getattr(self, name) % step:
                raise ValueError(f"value.{name}={getattr(self, name)} must be a multiple of 2**depth = {step}")
        if self.high == self.low:
            raise ValueError(f"value.high and value.low are both {self.high!r}")
        if any(not 0 <= w <= 1 for w in self.blend_weights):
            raise ValueError(f"value.blend_weights={list(self.blend_weights)} must lie in [0, 1]")
        return self


class ImpactConfig(_Section):
    """In-silico impact assessment and offset ranking (``geoplantnet impact`` / ``offsets``): the scenario is a file
    of its own (:class:`geoplantnet.products.scenarios.Scenario`); these are the run's settings."""

    draws: int = Field(
        8,
        ge=0,
        le=MAX_DRAWS,
        description=f"Monte-Carlo dropout draws of the change (0: point values only; at most {MAX_DRAWS})",
    )
    seed: int = Field(0, ge=0, description="seed of the first draw (draw k uses seed + k, before and after alike)")
    min_class_surveys: int = Field(
        10,
        ge=2,
        description="fewest held-out surveys in a land-cover class to measure the models' error there; a scenario "
        "class with fewer is an extrapolation: flagged, uncorrected, its interval widened to any class's error",
    )
    value_model: str | None = Field(
        None, description="value model file (default <store.root>/value/model.pt when it exists; none: no value)"
    )
    offset_ratio: float = Field(
        1.0, gt=0, description="no net loss: an offset's value gain must reach ratio x the impact's value loss"
    )
    confidence: float = Field(
        0.9, gt=0.5, lt=1, description="probability of the gain covering the loss needed to say 'compensates'"
    )
    offset_currency: Literal["value", "species"] = Field(
        "species",
        description="what offsets gain and impacts lose: 'species' (expected species x ha, threatened ones weighted) "
        "or 'value' (the value map's value-ha)",
    )
    threatened_weight: float = Field(
        4.0,
        ge=0,
        description="species currency: a threatened species counts w times (richness + w x threatened)",
    )


class RunConfig(_Section):
    """Everything one run needs; nothing else reads settings."""

    name: str = "default"
    workdir: str = "work"
    grid: GridConfig = GridConfig()
    sim: SimConfig = SimConfig()
    stac: StacConfig = StacConfig()
    cube: CubeConfig = CubeConfig()
    cluster: ClusterConfig = ClusterConfig()
    store: StoreConfig = StoreConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    validation: ValidationConfig = ValidationConfig()
    map: MapConfig = MapConfig()
    inputs: InputsConfig = InputsConfig()
    table: TableConfig = TableConfig()
    habitats: HabitatsConfig = HabitatsConfig()
    indicators: IndicatorsConfig = IndicatorsConfig()
    refresh: RefreshConfig = RefreshConfig()
    value: ValueConfig = ValueConfig()
    impact: ImpactConfig = ImpactConfig()

    def to_attrs(self) -> dict[str, str]:
        """The resolved configuration, credentials redacted (:func:`redact`), as a JSON string attribute."""
        return {"geoplantnet_config": json.dumps(redact(self.model_dump(mode="json")), sort_keys=True)}

    def to_yaml(self) -> str:
        """The resolved configuration as YAML, credentials redacted."""
        return yaml.safe_dump(redact(self.model_dump(mode="json")), sort_keys=False)


REDACTED = "<redacted>"
# Setting names that hold credentials wherever they appear (storage options, client kwargs, headers, ...).
_SECRET_NAME = re.compile(r"secret|passw|token|key|credential|auth|signature|session|cookie|private", re.IGNORECASE)
# Storage options that are not credentials and say where the data went; every other storage option is redacted.
_PUBLIC_STORAGE_OPTIONS = frozenset(
    {
        "endpoint_url",
        "region_name",
        "anon",
        "use_ssl",
        "requester_pays",
        "client_kwargs",
        "config_kwargs",
        "profile",
        "default_block_size",
        "default_fill_cache",
        "version_aware",
        "cache_regions",
        "connect_timeout",
        "read_timeout",
        "retries",
        "max_attempts",
        "mode",
    }
)


def _redact_url(text: str) -> str:
    """A URL without userinfo (``user:pass@``) and with the values of credential-like query parameters redacted."""
    if "://" not in text:
        return text
    parts = urlsplit(text)
    netloc = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
    query = "&".join(
        f"{k}={REDACTED}" if _SECRET_NAME.search(k) else (f"{k}={v}" if v or "=" in pair else k)
        for pair in parts.query.split("&")
        if pair
        for k, _, v in [pair.partition("=")]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """A sentence (a log line, a note) with every URL in it stripped of credentials (:func:`redact`)."""
    return " ".join(_redact_url(word) for word in text.split(" "))


def redact(value: Any, *, _key: str = "", _storage: bool = False) -> Any:
    """``value`` (a configuration tree) with credentials replaced by ``<redacted>``: every storage option except
    a few public ones (endpoint, region), any setting whose name looks like a credential, URL userinfo and signed
    query parameters. What is persisted or printed always goes through this."""
    if isinstance(value, Mapping):
        return {k: redact(v, _key=str(k), _storage=_storage or str(k) == "storage_options") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, _key=_key, _storage=_storage) for v in value]
    if (
        _key
        and _key != "storage_options"
        and (_SECRET_NAME.search(_key) or (_storage and _key not in _PUBLIC_STORAGE_OPTIONS))
    ):
        return REDACTED if value not in (None, "") else value
    return _redact_url(value) if isinstance(value, str) else value


def _set_path(tree: dict[str, Any], dotted: str, value: Any, source: str, sources: dict[str, str]) -> None:
    keys = [k for k in dotted.split(".") if k]
    if not keys:
        raise ConfigError(f"{source}: empty setting name")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value
    sources[".".join(keys)] = source


def _parse_value(key: str, raw: str, source: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a YAML timestamp that is no date (2024-13-01)
        # the value is not echoed: it may be a credential
        raise ConfigError(f"{source}: the value of {key} is not valid YAML ({exc.__class__.__name__})") from None


def _settings_of(loc: Sequence[str]) -> list[str]:
    """The setting names of the section at ``loc`` (the run's sections at the top), for close matches."""
    model: Any = RunConfig
    for key in loc:
        field = getattr(model, "model_fields", {}).get(key)
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def _problem(err: Any, loc: list[str]) -> str:
    """pydantic's message made plain: an unknown name says so (with close matches), no "Value error," prefix."""
    if err["type"] == "extra_forbidden":
        known = _settings_of(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=3)
        prefix = ".".join(loc[:-1])
        hint = f"; did you mean {' or '.join(f'{prefix}.{c}' if prefix else c for c in close)}?" if close else ""
        if prefix:
            return f"no such setting in {prefix}{hint}"
        return f"no such section or setting{hint} (the top level has {', '.join(known)})"
    return str(err["msg"]).removeprefix("Value error, ")


def _one_line(exc: ValidationError, sources: Mapping[str, str], where: str) -> str:
    """Each problem with the source that set it (``--set``, an environment variable, or the file)."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        dotted = ".".join(loc) or "(root)"
        # the longest prefix set by an override (a section given whole by --set, or the setting itself), else an
        # override of a setting inside it (--set unknown.key=1 makes the unknown section "unknown")
        source = next(
            (sources[".".join(loc[:n])] for n in range(len(loc), 0, -1) if ".".join(loc[:n]) in sources),
            next((s for key, s in sources.items() if dotted != "(root)" and key.startswith(f"{dotted}.")), where),
        )
        parts.append(f"{source}: {dotted}: {_problem(err, loc)}")
    return "; ".join(parts)


def _read_tree(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """A YAML file's settings; ``extends: other.yaml`` (relative to the file) reads that one first and deep-merges
    this one over it, so a pipeline states only what differs from its base."""
    where = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read ({exc.strerror})") from None
    try:
        loaded = yaml.safe_load(text)
    except ValueError as exc:  # a YAML timestamp that is no date (2024-13-01)
        raise ConfigError(f"{where}: malformed YAML: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise ConfigError(f"{where}:{line}: malformed YAML: {problem}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{where}: top level must be a mapping of sections, got {type(loaded).__name__}")
    base = loaded.pop("extends", None)
    if base is None:
        return loaded
    parent = (path.parent / str(base)).resolve()
    if parent in seen or parent == path.resolve():
        raise ConfigError(f"{where}: extends {base} makes a cycle")
    return _merge(_read_tree(parent, (*seen, path.resolve())), loaded)


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged into a copy of ``base`` (mappings merge, anything else replaces)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> RunConfig:
    """Read a YAML run configuration, apply environment and ``key=value`` overrides, and validate it."""
    tree: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        tree = _read_tree(Path(path), ())
    sources: dict[str, str] = {}
    env = os.environ if environ is None else environ
    for name, raw in sorted(env.items()):
        if name.startswith(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            source = f"environment variable {name}"
            _set_path(tree, dotted, _parse_value(dotted, raw, source), source, sources)
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"--set {text.split(':')[0][:60]!r}: not key=value (e.g. cube.resolution=20)")
        key, raw = (part.strip() for part in text.split("=", 1))
        source = f"--set {key}"
        _set_path(tree, key, _parse_value(key, raw, source), source, sources)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, sources, where)) from None
