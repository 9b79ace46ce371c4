"""Training the species network, locally or as one Dask task (on a GPU worker when the cluster has one).

:func:`train_model` is a plain function of paths and the ``train`` and ``model`` settings, so it runs the same
in-process and on a Dask worker. On a cluster (:func:`train_many_on_cluster`) the worker writes the model file to
``out_dir``, a folder the client and the worker share (a network mount, or the local disk for a ``LocalCluster``),
or, when the workers share no disk with the client, through an object-store ``stage``: the client uploads the
training set, each task fetches it into its process's scratch, trains there and uploads its model folder, which the
client downloads into ``out_dir``. The returned :class:`TrainResult` carries the path, not the weights.

Files in ``out_dir``: ``last.pt`` (every epoch) and ``model.pt`` (the best epoch by macro AUC on the validation
split's surveys, or by validation loss when it has none), both in the :func:`save_model` format
(:mod:`geoplantnet.models.species_files`). Early stopping watches the same score.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from geoplantnet.core.config import ModelConfig, TrainConfig
from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.models.calibration import calibrate
from geoplantnet.models.losses import SpeciesLoss, species_weights
from geoplantnet.models.species_files import (  # noqa: F401 (model files were here: importers keep working)
    FILE_FORMAT,
    ModelFileError,
    load_ensemble,
    load_model,
    save_model,
)
from geoplantnet.models.species_net import ModelSpec, SpeciesNet
from geoplantnet.runtime.cluster import require_resources, task_resources
from geoplantnet.runtime.devices import resolve_device, use_worker_threads
from geoplantnet.samples.kinds import SOURCE_CODE, Modality, Source, target_group_labels
from geoplantnet.samples.training_set import ChunkBatchSampler, NormStats, TrainingSet
from geoplantnet.storage.store import is_local
from geoplantnet.storage.workdir import Workdir, forget_fetched, scratch

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)
_MIN_IMPROVEMENT = 1e-4  # relative, so float noise in a flat validation curve does not count as progress


class TrainError(ValueError):
    """Training was asked something impossible (a bug in the caller: empty or overlapping index sets)."""


@dataclasses.dataclass(frozen=True)
class EpochLog:
    epoch: int
    train_loss: float
    val_loss: float
    val_auc: float | None
    seconds: float
    lr: float


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a training run produced: the best model's path, per-epoch history, device and where it ran."""

    model_path: str
    last_path: str
    best_epoch: int
    monitor: str  # "val_auc" (the validation split's surveys, else its records against the target group) or "val_loss"
    best_score: float
    epochs_run: int
    stopped_early: bool
    device: str
    precision: str
    history: list[EpochLog]
    n_parameters: int
    worker: str | None = None
    resources: dict[str, float] | None = None

    @property
    def epoch_seconds(self) -> list[float]:
        return [e.seconds for e in self.history]


# devices and precision


def _precision(device: torch.device, wanted: bool) -> torch.dtype | None:
    """Autocast dtype: only on CUDA, bf16 where supported, else fp16 (with a GradScaler)."""
    if not wanted or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# evaluation


def _auc(scores: np.ndarray, label: np.ndarray) -> float | None:
    """Macro ROC AUC over species with both known classes (labels -1 ignored); None when no species qualifies."""
    aucs = []
    for s in range(label.shape[1]):
        known = label[:, s] >= 0
        y, p = label[known, s], scores[known, s]
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = np.empty(p.size)
        order = np.argsort(p, kind="mergesort")
        ranks[order] = np.arange(1, p.size + 1)
        # average ranks over ties, so constant predictions give 0.5
        _, inv, counts = np.unique(p, return_inverse=True, return_counts=True)
        ranks = (np.bincount(inv, ranks) / counts)[inv]
        aucs.append((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else None


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {str(k): batch[k] for k in Modality if k in batch}


def _evaluate(
    model: SpeciesNet,
    data: TrainingSet,
    loss_fn: SpeciesLoss,
    batch_size: int,
    device: torch.device,
    amp: Any,
    target_group: bool = False,
) -> tuple[float, float | None]:
    """Validation loss (mean over batches, weighted by rows) and macro AUC on the presence-absence rows; without
    any and with ``target_group``, on the record sites against the target group (None where neither scores)."""
    model.eval()
    total, n = 0.0, 0
    scores, labels, sources = [], [], []
    with torch.no_grad():
        for batch in data.batches(batch_size):
            batch = _to_device(batch, device)
            with amp():
                logits = model(**_inputs(batch))
            total += float(loss_fn(logits.float(), batch["label"], batch["source"])) * len(batch["label"])
            n += len(batch["label"])
            scores.append(torch.sigmoid(logits.float()).cpu().numpy())
            labels.append(batch["label"].cpu().numpy())
            sources.append(batch["source"].cpu().numpy())
    if not n:
        return float("nan"), None
    label, source = np.concatenate(labels), np.concatenate(sources)
    pa, po = source == SOURCE_CODE[Source.PA], source == SOURCE_CODE[Source.PO]
    if pa.any():
        return total / n, _auc(np.concatenate(scores)[pa], label[pa])
    if target_group and po.any():
        return total / n, _auc(np.concatenate(scores)[po], target_group_labels(label[po]))
    return total / n, None


# training


def _improved(score: float, best: float) -> bool:
    """Higher is better; NaN never improves; the first finite score always does."""
    if not np.isfinite(score):
        return False
    return not np.isfinite(best) or score > best + _MIN_IMPROVEMENT * abs(best)


def _check_indices(name: str, idx: Sequence[int] | np.ndarray) -> np.ndarray:
    out = np.asarray(idx, dtype=np.int64).reshape(-1)
    if out.size == 0:
        raise TrainError(f"{name} is empty")
    return out


def train_model(
    training_set_path: str | os.PathLike[str],
    train_idx: Sequence[int] | np.ndarray,
    val_idx: Sequence[int] | np.ndarray,
    tcfg: TrainConfig,
    model_cfg: ModelConfig,
    out_dir: str | os.PathLike[str],
    stats: NormStats | None = None,
) -> TrainResult:
    """Train on ``train_idx``; select, early-stop on ``val_idx`` (the spatial validation split); writes ``out_dir``.

    ``stats``: input normalisation to use (default: computed on ``train_idx``); the members of an ensemble share
    the statistics of all their rows, so that one normalisation serves the whole ensemble.

    Seeds are fixed (``train.seed``); AdamW with a cosine schedule; mixed precision only on CUDA.
    """
    train_idx, val_idx = _check_indices("train_idx", train_idx), _check_indices("val_idx", val_idx)
    if np.intersect1d(train_idx, val_idx).size:
        raise TrainError("train_idx and val_idx overlap; validation must be held out")
    seed_everything(tcfg.seed)
    device = resolve_device(tcfg.device)
    amp_dtype = _precision(device, tcfg.mixed_precision)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def amp() -> contextlib.AbstractContextManager[Any]:
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    train = TrainingSet(training_set_path, train_idx, stats=stats, scaling=tcfg.scaling)
    val = TrainingSet(training_set_path, val_idx, stats=train.stats, modalities=train.modalities)
    spec = ModelSpec(
        model=model_cfg,
        modalities=train.modality_shapes(),
        species=train.species,
        species_name=train.species_name,
        norm=train.stats,
        mask_channels=train.mask_channels,
        env_from_point=train.env_from_point,
        bands=train.ds.attrs["bands"].split() if "bands" in train.ds.attrs else None,
        variables=train.ds.attrs["variables"].split() if "variables" in train.ds.attrs else None,
    )
    model = SpeciesNet.from_spec(spec).to(device)
    labels = train.labels()
    loss_fn = SpeciesLoss(tcfg, species_weights(labels, train.sources())).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=tcfg.epochs)
    sampler = ChunkBatchSampler(train, tcfg.batch_size, shuffle=True, seed=tcfg.seed)
    # without surveys, the records of 2 species or more are scored against each other's sites (train.monitor=auto)
    target_group = tcfg.monitor == "auto" and int((labels == 1).any(axis=0).sum()) >= 2

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    best_path, last_path = out / "model.pt", out / "last.pt"
    history: list[EpochLog] = []
    monitor: str | None = None
    best_score, best_epoch, stale = float("nan"), -1, 0
    for epoch in range(tcfg.epochs):
        start = time.perf_counter()
        model.train()
        sampler.set_epoch(epoch)
        total, n = 0.0, 0
        for rows in sampler:
            batch = _to_device(train[rows], device)
            optimiser.zero_grad(set_to_none=True)
            with amp():
                logits = model(**_inputs(batch))
            loss = loss_fn(logits.float(), batch["label"], batch["source"])
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            total += float(loss.detach()) * len(rows)
            n += len(rows)
        lr = schedule.get_last_lr()[0]
        schedule.step()
        val_loss, val_auc = _evaluate(model, val, loss_fn, tcfg.batch_size, device, amp, target_group)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        history.append(EpochLog(epoch, total / max(n, 1), val_loss, val_auc, seconds, lr))
        log.info(
            "epoch %d train %.4f val %.4f auc %s (%.1f s, %s)",
            epoch,
            total / max(n, 1),
            val_loss,
            val_auc,
            seconds,
            device,
        )
        save_model(last_path, model, spec)
        # AUC on surveys measures what the maps are for; the loss mixes in presence-only terms, so it is the fallback
        monitor = monitor or ("val_auc" if val_auc is not None else "val_loss")
        score = (val_auc if val_auc is not None else float("nan")) if monitor == "val_auc" else -val_loss
        if _improved(score, best_score):
            best_score, best_epoch, stale = score, epoch, 0
            save_model(best_path, model, spec)
        else:
            stale += 1
            if stale >= tcfg.patience:
                break
    if best_epoch < 0:  # validation loss was never finite: keep the last weights rather than nothing
        save_model(best_path, model, spec)
    return TrainResult(
        model_path=str(best_path),
        last_path=str(last_path),
        best_epoch=best_epoch,
        monitor=monitor or "val_loss",
        best_score=best_score if monitor == "val_auc" else -best_score,
        epochs_run=len(history),
        stopped_early=len(history) < tcfg.epochs,
        device=str(device),
        precision=str(amp_dtype).removeprefix("torch.") if amp_dtype else "float32",
        history=history,
        n_parameters=sum(p.numel() for p in model.parameters()),
    )


def predict(
    model: SpeciesNet,
    spec: ModelSpec,
    training_set_path: str | os.PathLike[str],
    idx: Sequence[int] | np.ndarray,
    batch_size: int = 256,
) -> np.ndarray:
    """Probabilities ``(len(idx), species)`` in the order of ``idx``, normalised with the model's own statistics;
    calibrated when the model file carries a calibration (sdm's final models)."""
    data = TrainingSet(
        training_set_path, idx, stats=spec.norm, mask_channels=spec.mask_channels, modalities=list(spec.modalities)
    )
    if data.species != spec.species:
        raise TrainError(
            f"{training_set_path}: species differ from the model's ({data.n_species} vs {len(spec.species)})"
        )
    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = _to_device(data[np.arange(start, min(start + batch_size, len(data)))], device)
            out.append(torch.sigmoid(model(**_inputs(batch)).float()).cpu().numpy())
    probs = np.concatenate(out) if out else np.zeros((0, len(spec.species)), np.float32)
    return calibrate(probs, spec.calibration)  # the map applies it too: points and map pixels agree


# on a cluster

# Seeds and torch's thread count are per process: two trainings running at once in one worker process (a worker of
# several threads) would draw from each other's random streams, and each would take the worker's every thread.
_ONE_TRAINING_PER_PROCESS = threading.Lock()


@dataclasses.dataclass(frozen=True)
class TrainJob:
    """One network to train: :func:`train_model`'s arguments. ``training_set_path`` and ``out_dir`` are paths the
    workers and the client share, or object-store URLs (opened with ``options``) once staged
    (:func:`train_many_on_cluster`'s ``stage``)."""

    training_set_path: str
    train_idx: np.ndarray
    val_idx: np.ndarray
    tcfg: TrainConfig
    model_cfg: ModelConfig
    out_dir: str
    stats: NormStats | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)  # may hold credentials: no repr


def _train_job(job: TrainJob) -> TrainResult:
    """:func:`train_model` of ``job``; with object-store URLs, the training set fetched into this process's scratch
    (the trainer reads it at random, every epoch), the model trained there and its folder uploaded to ``out_dir``
    (files first, its completion marker last: a half-uploaded model never reads as one)."""
    args = (job.train_idx, job.val_idx, job.tcfg, job.model_cfg)
    if is_local(job.training_set_path) and is_local(job.out_dir):
        return train_model(job.training_set_path, *args, job.out_dir, job.stats)
    data = Workdir(job.training_set_path, job.options).fetch()
    local = scratch("train", uuid.uuid4().hex)
    try:
        result = train_model(data, *args, local, job.stats)
        out = Workdir(job.out_dir, job.options)
        out.put(local)
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return dataclasses.replace(result, model_path=out.url("model.pt"), last_path=out.url("last.pt"))


def _train_task(job: TrainJob) -> TrainResult:
    """train_model on a worker, one at a time per worker process and on the worker's threads, recording where it ran
    and the resources the scheduler attached to the task."""
    from distributed import get_worker
    from distributed.worker import thread_state

    with _ONE_TRAINING_PER_PROCESS:
        use_worker_threads()
        result = _train_job(job)
    worker = get_worker()
    key = getattr(thread_state, "key", None)
    task = worker.state.tasks.get(key) if key is not None else None
    resources = dict(task.resource_restrictions) if task is not None and task.resource_restrictions else None
    return dataclasses.replace(result, worker=worker.address, resources=resources)


def _staged(jobs: Sequence[TrainJob], stage: Workdir) -> list[TrainJob]:
    """``jobs`` as the workers see them under ``stage``: each local training set uploaded once (``sets/<n>``), each
    model folder a URL of its own (``models/<i>``)."""
    sets: dict[str, str] = {}
    out = []
    for i, job in enumerate(jobs):
        path = job.training_set_path
        if is_local(path) and path not in sets:
            sets[path] = stage.put(path, "sets", str(len(sets)))
        out.append(
            dataclasses.replace(
                job, training_set_path=sets.get(path, path), out_dir=stage.url("models", str(i)), options=stage.options
            )
        )
    return out


def _fetched(result: TrainResult, job: TrainJob, staged: TrainJob) -> TrainResult:
    """A staged job's model folder downloaded into the folder the caller asked (``job.out_dir``), as if the worker
    had written it there."""
    Workdir(staged.out_dir, staged.options).get(into=job.out_dir)
    out = Path(job.out_dir)
    return dataclasses.replace(result, model_path=str(out / "model.pt"), last_path=str(out / "last.pt"))


def train_many_on_cluster(
    client: Client,
    jobs: Sequence[TrainJob],
    *,
    name: str = "default",
    in_flight: int | None = None,
    stage: Workdir | None = None,
) -> list[TrainResult]:
    """Every job as one Dask task (``GPU=1`` each when a worker offers it), submitted before any is awaited, so that
    the cluster's workers train them side by side; the results in the order of ``jobs``. ``name`` (the run's) names
    the tasks. ``in_flight``: at most this many tasks submitted at a time (1: one after another); None: all at once
    (the scheduler runs as many as there are free worker threads and queues the rest).

    ``stage``: an object-store folder through which the driver and workers that share no disk exchange the files
    (the training sets uploaded there, each model folder uploaded there by its task, then downloaded into the job's
    ``out_dir`` and the stage deleted); None: the jobs' paths are shared.

    A job's numbers do not depend on where or beside what it runs: each task seeds itself (``train.seed``) and torch
    uses the worker's threads. A failed task raises its own error and traceback here, and the others are cancelled.
    """
    if in_flight is not None and in_flight < 1:
        raise TrainError(f"in_flight must be at least 1, got {in_flight}")
    folders = [os.path.abspath(job.out_dir) if is_local(job.out_dir) else job.out_dir for job in jobs]
    if len(set(folders)) < len(folders):
        raise TrainError(f"two trainings would write one folder at once: {sorted(folders)}")
    if stage is not None and not stage.local:
        run = stage.child(f"{name}-{time.time_ns()}-{uuid.uuid4().hex[:8]}")
        try:
            staged = _staged(jobs, run)
            results = _train_all(client, staged, name, in_flight)
            return [_fetched(r, j, s) for r, j, s in zip(results, jobs, staged, strict=True)]
        finally:  # the models are where the caller asked: the stage and the workers' copies of it go
            _clear_stage(client, run)
    return _train_all(client, jobs, name, in_flight)


def _clear_stage(client: Client, run: Workdir) -> None:
    """Delete the stage ``run`` and every worker's fetched copies of its training sets. Left behind only by a
    killed driver, or by a cancelled task still running when the driver gave up (its upload lands after); never
    raises over the training's own error."""
    try:
        run.remove()
    except (OSError, GeoplantnetError) as exc:
        log.warning("could not delete the training stage %s: %s", run.root, exc)
    try:
        client.run(forget_fetched, run.root, on_error="return")
    except (OSError, TimeoutError) as exc:  # a worker gone: its scratch went with it
        log.warning("could not clear the workers' copies of %s: %s", run.root, exc)


def _train_all(client: Client, jobs: Sequence[TrainJob], name: str, in_flight: int | None) -> list[TrainResult]:
    """The jobs' tasks submitted (at most ``in_flight`` at a time) and their results in the order of ``jobs``."""
    from distributed import as_completed

    resources = task_resources(client)
    if resources:
        require_resources(client, resources)
    stamp = time.time_ns()
    results: list[TrainResult | None] = [None] * len(jobs)
    waiting = iter(enumerate(jobs))
    running = as_completed()
    index: dict[Any, int] = {}

    def submit_next() -> None:
        i, job = next(waiting, (-1, None))
        if job is not None:
            future = client.submit(
                _train_task, job, resources=resources, pure=False, key=f"train-species-net-{name}-{stamp}-{i}"
            )
            index[future] = i
            running.add(future)

    for _ in range(len(jobs) if in_flight is None else min(in_flight, len(jobs))):
        submit_next()
    try:
        for future in running:
            results[index[future]] = future.result()  # a failed task raises its error with its traceback
            submit_next()
    except BaseException:
        client.cancel(list(index))
        raise
    return [r for r in results if r is not None]


def train_on_cluster(
    client: Client,
    training_set_path: str | os.PathLike[str],
    train_idx: Sequence[int] | np.ndarray,
    val_idx: Sequence[int] | np.ndarray,
    tcfg: TrainConfig,
    model_cfg: ModelConfig,
    out_dir: str | os.PathLike[str],
    stats: NormStats | None = None,
    *,
    name: str = "default",
) -> TrainResult:
    """Run :func:`train_model` as one Dask task (``GPU=1`` when a worker offers it) and wait for its result;
    ``name`` (the run's) names the task (:func:`train_many_on_cluster` for several).

    ``training_set_path`` and ``out_dir`` must be paths the worker can read and write and the client can read
    (shared filesystem); the model file is written there by the worker (:func:`train_many_on_cluster`'s ``stage``
    for workers that share no disk).
    """
    job = TrainJob(
        os.fspath(training_set_path),
        np.asarray(train_idx),
        np.asarray(val_idx),
        tcfg,
        model_cfg,
        os.fspath(out_dir),
        stats,
    )
    return train_many_on_cluster(client, [job], name=name)[0]
