"""Training set I/O, training, checkpoints, early stopping, learning a known signal, and training as a Dask task."""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from distributed import Client, LocalCluster

from geoplantnet.core.config import ConfigError, ModelConfig, RunConfig, TrainConfig
from geoplantnet.runtime.devices import use_worker_threads
from geoplantnet.samples.training_set import ChunkBatchSampler, TrainingSet, TrainingSetError, write_training_set
from geoplantnet.training.train import (
    ModelFileError,
    TrainError,
    TrainJob,
    _auc,
    load_model,
    predict,
    resolve_device,
    save_model,
    train_many_on_cluster,
    train_model,
    train_on_cluster,
)

N, SPECIES, SEASONS, BANDS, PATCH, ENV_VARS, ENV_SIZE = 300, 20, 2, 3, 8, 4, 3
MODEL = {
    "patch_size": PATCH,
    "env_patch_size": ENV_SIZE,
    "width": 8,
    "depth": 2,
    "series_hidden": 8,
    "env_hidden": 16,
    "fusion_hidden": 32,
    "dropout": 0.0,
}


def _cfg(**train) -> tuple[TrainConfig, ModelConfig]:
    """The ``train`` and ``model`` sections training takes."""
    cfg = RunConfig.model_validate({"model": MODEL, "train": {"epochs": 1, "batch_size": 64, "lr": 5e-3, **train}})
    return cfg.train, cfg.model


def _make(path: Path, n: int = N, seed: int = 0, with_s2: bool = True) -> tuple[str, np.ndarray, np.ndarray]:
    """Species depend on the environment only (logistic in env values); Sentinel-2 inputs are noise."""
    rng = np.random.default_rng(seed)
    env_point = rng.normal(size=(n, ENV_VARS)).astype("f4")
    env = env_point[:, :, None, None] + 0.1 * rng.normal(size=(n, ENV_VARS, ENV_SIZE, ENV_SIZE)).astype("f4")
    p = 1 / (1 + np.exp(-(env_point @ (2 * rng.normal(size=(ENV_VARS, SPECIES))) - 1.0)))
    source = rng.choice(["pa", "po", "bg"], size=n, p=[0.5, 0.35, 0.15])
    label = np.full((n, SPECIES), -1, np.int8)
    pa = source == "pa"
    label[pa] = rng.random((pa.sum(), SPECIES)) < p[pa]
    for i in np.nonzero(source == "po")[0]:
        label[i, rng.choice(SPECIES, p=p[i] / p[i].sum())] = 1
    s2 = {}
    if with_s2:
        patch = rng.normal(size=(n, SEASONS, BANDS, PATCH, PATCH)).astype("f4")
        patch[0, 0, 0, :2, :2] = np.nan
        s2 = {"patch": patch, "series": patch[:, :, :, PATCH // 2, PATCH // 2]}
    out = write_training_set(
        path,
        x=rng.random(n) * 1e4,
        y=rng.random(n) * 1e4,
        label=label,
        source=source,
        species=[f"s{i}" for i in range(SPECIES)],
        env=env,
        env_point=env_point,
        chunk_samples=64,
        attrs={"bands": "B04,B08,B11"},
        **s2,
    )
    return out, label, source


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _make(tmp_path_factory.mktemp("ts") / "training.zarr")


SPLIT = np.arange(N)
TRAIN, VAL = SPLIT[SPLIT % 5 != 0], SPLIT[SPLIT % 5 == 0]


# the training set


def test_training_set_prepares_batches_in_the_order_asked(store):
    path, label, _ = store
    ts = TrainingSet(path, SPLIT[::-1])  # positions 7, 299, 169 are samples 292, 0, 130
    assert ts.modality_shapes() == {
        "patch": (SEASONS * BANDS + SEASONS, PATCH, PATCH),
        "series": (BANDS + 1, SEASONS),
        "env": (ENV_VARS + 1, ENV_SIZE, ENV_SIZE),
    }
    batch = ts[[7, 299, 169]]
    np.testing.assert_array_equal(batch["label"].numpy(), label[[292, 0, 130]])
    patch = batch["patch"].numpy()
    assert np.isfinite(patch).all()
    assert patch[1, SEASONS * BANDS, 0, 0] == 0.0 and patch[1, SEASONS * BANDS, 5, 5] == 1.0  # season-0 mask
    assert patch[1, 0, 0, 0] == 0.0  # NaN filled with 0 after normalisation
    single = ts[3]
    assert single["env"].shape == (ENV_VARS + 1, ENV_SIZE, ENV_SIZE) and single["source"].ndim == 0


def test_normalisation_stats_come_from_the_training_indices_only(store):
    path, _, _ = store
    small, other = TrainingSet(path, TRAIN[:50]), TrainingSet(path, TRAIN[50:])
    assert small.stats != other.stats
    val = TrainingSet(path, VAL, stats=small.stats)
    assert val.stats == small.stats
    env = TrainingSet(path, TRAIN, modalities=["env"])[np.arange(len(TRAIN))]["env"].numpy()
    np.testing.assert_allclose(env[:, :ENV_VARS].mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(env[:, :ENV_VARS].std(axis=(0, 2, 3)), 1.0, atol=1e-3)


def test_chunk_batch_sampler_covers_every_sample_once_touching_few_chunks(store):
    path, _, _ = store
    ts = TrainingSet(path, TRAIN)
    sampler = ChunkBatchSampler(ts, 32, seed=3, window=2)
    batches = list(sampler)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(TRAIN)))
    for b in batches:
        rows = ts.indices[b]
        assert (np.diff(rows) > 0).all()
        assert np.unique(rows // ts.chunk_size).size <= 2 * 2  # a window of 2 chunks, a batch may straddle two
    sampler.set_epoch(1)
    assert [list(b) for b in sampler] != [list(b) for b in batches]
    # a last batch of one sample (BatchNorm cannot train on it) joins the one before; every sample still comes once
    odd = ChunkBatchSampler(ts, len(TRAIN) - 1, seed=3)
    sizes = [len(b) for b in odd]
    assert sizes == [len(TRAIN)] and len(odd) == 1


def test_env_point_only_store_and_bad_inputs(tmp_path):
    rng = np.random.default_rng(0)
    n = 10
    path = write_training_set(
        tmp_path / "p.zarr",
        x=np.zeros(n),
        y=np.zeros(n),
        label=np.zeros((n, 2), np.int8),
        source=["pa"] * n,
        species=["a", "b"],
        env_point=rng.normal(size=(n, 3)),
    )
    ts = TrainingSet(path)
    assert ts.env_from_point and ts.modality_shapes() == {"env": (4, 1, 1)}
    with pytest.raises(TrainingSetError, match="patch"):
        TrainingSet(path, modalities=["patch"])
    with pytest.raises(TrainingSetError, match="out of range"):
        TrainingSet(path, [0, 99])
    with pytest.raises(TrainingSetError, match="source"):
        write_training_set(
            tmp_path / "q.zarr",
            x=np.zeros(1),
            y=np.zeros(1),
            label=np.zeros((1, 2)),
            source=["survey"],
            species=["a", "b"],
        )
    with pytest.raises(TrainingSetError, match="label"):
        write_training_set(
            tmp_path / "q.zarr",
            x=np.zeros(1),
            y=np.zeros(1),
            label=np.full((1, 2), 2),
            source=["pa"],
            species=["a", "b"],
        )
    with pytest.raises(TrainingSetError, match="cannot open"):
        TrainingSet(tmp_path / "missing.zarr")


# training


def test_same_seed_gives_the_same_weights(store, tmp_path):
    path, _, _ = store
    states = []
    for run in ("a", "b"):
        result = train_model(path, TRAIN, VAL, *_cfg(), tmp_path / run)
        states.append(torch.load(result.last_path, weights_only=True)["state_dict"])
    for key in states[0]:
        torch.testing.assert_close(states[0][key], states[1][key], rtol=0, atol=0)
    other = train_model(path, TRAIN, VAL, *_cfg(seed=1), tmp_path / "c")
    weights = torch.load(other.last_path, weights_only=True)["state_dict"]
    assert any(not torch.equal(weights[k], states[0][k]) for k in weights if weights[k].is_floating_point())


def test_checkpoint_round_trip_gives_identical_predictions(store, tmp_path):
    path, _, _ = store
    result = train_model(path, TRAIN, VAL, *_cfg(epochs=2), tmp_path)
    assert result.device == "cpu" and result.precision == "float32" and len(result.epoch_seconds) == 2
    assert {p.name for p in tmp_path.iterdir()} == {"model.pt", "last.pt"}
    model, spec = load_model(result.model_path)
    again, spec2 = load_model(save_model(tmp_path / "copy" / "again.pt", model, spec))
    assert spec == spec2 and spec.species == [f"s{i}" for i in range(SPECIES)]
    order = VAL[::-1]  # predictions follow the order asked for, not the storage order
    probs = predict(model, spec, path, order, batch_size=16)
    np.testing.assert_array_equal(probs, predict(again, spec2, path, order, batch_size=16))
    # other batch sizes take other BLAS paths: equal to float rounding only
    np.testing.assert_allclose(probs[::-1], predict(again, spec2, path, VAL, batch_size=7), rtol=0, atol=1e-6)
    assert probs.shape == (len(VAL), SPECIES) and ((probs > 0) & (probs < 1)).all()


def test_early_stopping_stops_when_validation_does_not_improve(store, tmp_path):
    path, _, _ = store
    # weights barely move (lr 1e-12); only BatchNorm statistics settle, so the score plateaus within a few epochs
    result = train_model(path, TRAIN, VAL, *_cfg(epochs=12, patience=2, lr=1e-12), tmp_path)
    assert result.stopped_early and result.epochs_run < 12
    assert result.epochs_run == result.best_epoch + 1 + 2  # exactly `patience` epochs after the best one


def test_learns_a_synthetic_environmental_signal(tmp_path):
    path, label, source = _make(tmp_path / "signal.zarr", n=1000, seed=5, with_s2=False)
    idx = np.arange(1000)
    train_idx, val_idx, test_idx = idx[:650], idx[650:750], idx[750:]
    result = train_model(path, train_idx, val_idx, *_cfg(epochs=25, patience=25, lr=1e-2), tmp_path / "out")
    model, spec = load_model(result.model_path)
    probs = predict(model, spec, path, test_idx)
    pa = source[test_idx] == "pa"
    auc = _auc(probs[pa], label[test_idx][pa])
    assert auc is not None and auc > 0.8, auc


def test_bad_requests_give_clear_errors(store, tmp_path):
    path, _, _ = store
    with pytest.raises(TrainError, match="overlap"):
        train_model(path, TRAIN, TRAIN[:5], *_cfg(), tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train\.device=cuda"):
            resolve_device("cuda")
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match=r"junk\.pt"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(ModelFileError, match=r"^s3://bucket/junk\.pt: not a readable model file"):
        load_model(io.BytesIO(b"not a model"), name="s3://bucket/junk.pt")


# on a Dask cluster


def test_train_on_cluster_without_gpu_requests_no_resources(store, tmp_path):
    path, _, _ = store
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            memory_limit="2GiB",
        ) as cluster,
        Client(cluster) as client,
    ):
        result = train_on_cluster(client, path, TRAIN, VAL, *_cfg(), tmp_path)
        assert result.resources is None and result.worker in client.scheduler_info()["workers"]
    _, spec = load_model(result.model_path)
    assert result.device == "cpu" and len(spec.species) == SPECIES


def test_train_on_cluster_uses_the_gpu_worker_but_cpu_when_torch_has_no_cuda(store, tmp_path):
    path, _, _ = store
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, resources={"GPU": 1}, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        result = train_on_cluster(client, path, TRAIN, VAL, *_cfg(), tmp_path)
    assert result.resources == {"GPU": 1}
    assert result.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert Path(result.model_path).exists()


def test_monitor_auto_watches_records_against_the_target_group_without_surveys(store, tmp_path):
    """Without surveys in the validation split, ``train.monitor=auto`` early-stops on the records' AUC against the
    other species' record sites (what recipes are chosen on); ``loss`` keeps the loss."""
    path, _, source = store
    no_pa = np.flatnonzero(source != "pa")
    train_idx, val_idx = no_pa[no_pa % 5 != 0], no_pa[no_pa % 5 == 0]
    auto = train_model(path, train_idx, val_idx, *_cfg(epochs=2, monitor="auto"), tmp_path / "auto")
    assert auto.monitor == "val_auc" and 0 <= auto.best_score <= 1
    assert all(e.val_auc is not None for e in auto.history)
    loss = train_model(path, train_idx, val_idx, *_cfg(epochs=2, monitor="loss"), tmp_path / "loss")
    assert loss.monitor == "val_loss" and all(e.val_auc is None for e in loss.history)


def _weights(path: str) -> list[torch.Tensor]:
    model, _ = load_model(path)
    return [p.detach().clone() for p in model.state_dict().values()]


def _seed_jobs(path: str, out: Path, n: int = 3) -> list[TrainJob]:
    """``n`` networks differing by their seed, dropout on (so that their random streams matter)."""
    tcfg, model_cfg = _cfg(epochs=2)
    model_cfg = model_cfg.model_copy(update={"dropout": 0.3})
    return [
        TrainJob(path, TRAIN, VAL, tcfg.model_copy(update={"seed": k}), model_cfg, str(out / f"seed-{k}"))
        for k in range(n)
    ]


def _assert_same_training(a: list, b: list) -> None:
    for ra, rb in zip(a, b, strict=True):
        assert [(e.train_loss, e.val_loss, e.val_auc) for e in ra.history] == [
            (e.train_loss, e.val_loss, e.val_auc) for e in rb.history
        ]
        for wa, wb in zip(_weights(ra.model_path), _weights(rb.model_path), strict=True):
            assert torch.equal(wa, wb)


def test_many_trainings_run_side_by_side_with_the_numbers_of_one_after_another(store, tmp_path, dask_address):
    """Three networks on the session's 2 workers: all at once, then one at a time; results in the jobs' order, both
    workers used, and the same histories and weights either way."""
    path, _, _ = store
    with Client(dask_address) as client:
        together = train_many_on_cluster(client, _seed_jobs(path, tmp_path / "together"), name="test")
        apart = train_many_on_cluster(client, _seed_jobs(path, tmp_path / "apart"), name="test", in_flight=1)
    assert [Path(r.model_path).parent.name for r in together] == ["seed-0", "seed-1", "seed-2"]
    assert len({r.worker for r in together}) == 2
    _assert_same_training(together, apart)
    assert together[0].history != together[1].history  # the seeds differ, so the members do


def test_a_failed_training_task_raises_its_own_error_and_traceback(store, tmp_path, dask_address):
    path, _, _ = store
    good = TrainJob(path, TRAIN, VAL, *_cfg(), str(tmp_path / "good"))
    bad = TrainJob(path, TRAIN, TRAIN[:5], *_cfg(), str(tmp_path / "bad"))
    with Client(dask_address) as client, pytest.raises(TrainError, match="overlap") as failed:
        train_many_on_cluster(client, [good, bad], name="test")
    assert "train_model" in [entry.name for entry in failed.traceback]  # the worker's frames, not only ours
    with Client(dask_address) as client, pytest.raises(TrainError, match="one folder at once"):
        train_many_on_cluster(client, [good, good], name="test")


def test_torch_computes_on_the_workers_threads_and_trains_one_network_at_a_time_per_process(store, tmp_path):
    """A worker of 2 threads: torch takes both, and two trainings on it (which would share torch's random stream)
    give the numbers they give one after another."""
    path, _, _ = store
    before = torch.get_num_threads()
    try:
        assert use_worker_threads() is None  # not on a worker: nothing changed
        # in-process workers, so torch's thread count is this process's (put back after)
        with (
            LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster,
            Client(cluster) as client,
        ):
            assert client.submit(lambda: (use_worker_threads(), torch.get_num_threads())).result() == (2, 2)
            together = train_many_on_cluster(client, _seed_jobs(path, tmp_path / "together", 2), name="test")
            apart = train_many_on_cluster(client, _seed_jobs(path, tmp_path / "apart", 2), name="test", in_flight=1)
        _assert_same_training(together, apart)
    finally:
        torch.set_num_threads(before)


def test_trainings_staged_through_an_object_store_give_the_numbers_of_a_shared_folder(
    store, tmp_path, dask_address, s3_server
):
    """Workers that share no disk with the driver: the training set goes up to the stage, each task fetches it, trains
    in its scratch and uploads its model folder, which lands where the job asked; the same histories and weights as
    trainings on a shared folder, and the stage is deleted after."""
    import fsspec

    from geoplantnet.storage.workdir import Workdir

    path, _, _ = store
    stage = Workdir(f"s3://{s3_server.bucket}/train-stage", s3_server.storage_options)
    with Client(dask_address) as client:
        staged = train_many_on_cluster(client, _seed_jobs(path, tmp_path / "staged", 2), name="test", stage=stage)
        shared = train_many_on_cluster(client, _seed_jobs(path, tmp_path / "shared", 2), name="test")
    assert [r.model_path for r in staged] == [str(tmp_path / "staged" / f"seed-{k}" / "model.pt") for k in range(2)]
    assert all(Path(r.last_path).is_file() for r in staged)
    _assert_same_training(staged, shared)
    fs = fsspec.filesystem("s3", **s3_server.storage_options)
    assert not [p for p, info in fs.find(stage.root, detail=True).items() if info["size"]]
    # nor do the workers keep their copies of the staged training sets (a long-lived worker would fill its disk)
    from geoplantnet.storage.workdir import forget_fetched

    with Client(dask_address) as client:
        kept = client.run(forget_fetched, stage.root)  # how many copies each worker still had to delete
    assert kept and not any(kept.values()), kept
