"""`geoplantnet sdm-table`: species models from tables of extracted predictors, scored on independent surveys.

A small virtual benchmark written as the NCEAS files are laid out (presence-only records with predictor columns and an
occurrence flag, 2,000 background sites, test sites with their predictors in one table and presence-absence per species
in another), with known species responses, so the scores can be checked against what the data allow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoplantnet.core.config import TableConfig
from geoplantnet.samples.tables import TableError, read_tables
from geoplantnet.testing.cli import Result, cli_sets, run_cli

ROOT = Path(__file__).resolve().parents[1]
SPECIES = [f"sp{i}" for i in range(6)]
GROUPS = {s: ("plant" if i < 3 else "bird") for i, s in enumerate(SPECIES)}


def _env(rng: np.random.Generator, n: int) -> pd.DataFrame:
    x, y = rng.uniform(0, 200_000, n), rng.uniform(0, 200_000, n)
    # smooth fields of the coordinates, so that spatial blocks mean something; one skewed variable, one categorical
    return pd.DataFrame(
        {
            "x": x,
            "y": y,
            "temp": 20 + 5 * np.sin(x / 40_000) + rng.normal(0, 0.5, n),
            "rain": np.exp(6 + np.cos(y / 50_000) + rng.normal(0, 0.3, n)),
            "soil": (np.floor(x / 70_000) + np.floor(y / 70_000)).astype(int) % 3 + 1,
        }
    )


def _suitability(env: pd.DataFrame) -> np.ndarray:
    z_t = (env["temp"].to_numpy() - 20) / 3
    z_r = (np.log(env["rain"].to_numpy()) - 6) / 0.7
    out = []
    for i in range(len(SPECIES)):
        opt_t, opt_r = (-1.0, 0.0, 1.0)[i % 3], (1.0, -1.0)[i % 2]
        logit = 1 - (z_t - opt_t) ** 2 - 0.7 * (z_r - opt_r) ** 2 + (0.8 if i % 3 == 0 else 0) * (env["soil"] == 2)
        out.append(1 / (1 + np.exp(-logit.to_numpy() * 1.5)))
    return np.stack(out, axis=1)


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("table-benchmark")
    pool = _env(rng, 20_000)
    p = _suitability(pool)
    records = []
    for k, s in enumerate(SPECIES):
        pick = rng.choice(len(pool), 120, replace=False, p=p[:, k] / p[:, k].sum())
        part = pool.iloc[pick].assign(spid=s, occ=1, group=GROUPS[s])
        records.append(part)
    po = pd.concat(records).reset_index(drop=True)
    po.insert(0, "siteid", [f"po{i}" for i in range(len(po))])
    bg = _env(rng, 2000).assign(spid="pseudo", occ=0, group=np.nan)
    bg.insert(0, "siteid", [f"bg{i}" for i in range(len(bg))])
    test = _env(rng, 300)
    test.insert(0, "siteid", [f"t{i}" for i in range(len(test))])
    test.insert(0, "group", np.where(np.arange(300) < 150, "plant", "bird"))
    truth = _suitability(test)
    pa = test[["group", "siteid", "x", "y"]].copy()
    for k, s in enumerate(SPECIES):
        surveyed = pa["group"] == GROUPS[s]
        pa[s] = np.where(surveyed, (rng.random(300) < truth[:, k]).astype(float), np.nan)
    paths = {
        "presence": folder / "train_po.csv.gz",
        "background": folder / "train_bg.csv",
        "test": folder / "test_pa.csv",
        "test_env": folder / "test_env.parquet",
    }
    po.to_csv(paths["presence"], index=False)
    bg.to_csv(paths["background"], index=False)
    pa.to_csv(paths["test"], index=False)
    test.to_parquet(paths["test_env"], index=False)
    long = pa.melt(id_vars=["group", "siteid", "x", "y"], var_name="spid", value_name="presence").dropna()
    long = long.merge(test.drop(columns=["group", "x", "y"]), on="siteid")
    long.to_csv(folder / "test_long.csv", index=False)
    paths["test_long"] = folder / "test_long.csv"
    return paths


def _table_cfg(paths: dict[str, Path], **extra: object) -> TableConfig:
    settings: dict[str, object] = {
        "presence": str(paths["presence"]),
        "background": str(paths["background"]),
        "test": str(paths["test"]),
        "test_env": str(paths["test_env"]),
        "species": "spid",
        "group": "group",
        "crs": "EPSG:3035",
        "categorical": ["soil"],
    }
    return TableConfig.model_validate({**settings, **extra})


def test_tables_become_one_feature_layout_for_training_and_test_sites(benchmark: dict[str, Path]) -> None:
    samples, test = read_tables(_table_cfg(benchmark))
    # the occurrence flag (1 at records, 0 in the background) would give the answer away: never a predictor
    assert samples.feature_names == ["temp", "rain", "soil=1", "soil=2", "soil=3"]
    assert any("occ" in n for n in samples.notes)
    assert samples.features.shape == (720 + 2000, 5)
    assert (samples.label[samples.source == "po"] == 1).sum(axis=1).min() == 1
    assert (samples.label[samples.source == "bg"] == 0).all()  # pseudo-absences of every species
    assert samples.group_of == GROUPS
    assert test is not None and test.features.shape == (300, 5)
    # a plant site did not survey the birds: unknown, not absent
    plant_site = np.flatnonzero(test.group == "plant")[0]
    assert (test.label[plant_site, 3:] == -1).all() and (test.label[plant_site, :3] >= 0).all()
    # the long layout (site, species, presence + predictors) reads to the same labels and features
    _, long = read_tables(
        _table_cfg(benchmark, test=str(benchmark["test_long"]), test_env=None, presence_column="presence")
    )
    assert long is not None
    order = pd.Index(long.site).get_indexer(test.site)
    np.testing.assert_array_equal(long.label[order], test.label)
    np.testing.assert_allclose(long.features[order], test.features)


def test_missing_columns_and_files_are_named(benchmark: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TableError, match="no column 'species'"):
        read_tables(_table_cfg(benchmark).model_copy(update={"species": "species"}))
    with pytest.raises(TableError, match="no such file"):
        read_tables(_table_cfg(benchmark).model_copy(update={"background": str(tmp_path / "nope.csv")}))


def _cli(*args: str, cwd: Path) -> Result:
    return run_cli(*args, cwd=cwd)  # in-process: the command's output and status are what is tested, not a process


@pytest.mark.slow
def test_sdm_table_scores_every_model_on_the_independent_sites(benchmark: dict[str, Path], tmp_path: Path) -> None:
    cfg = tmp_path / "table.yaml"
    cfg.write_text(
        "name: table-test\n"
        "table: {species: spid, group: group, crs: 'EPSG:3035', categorical: [soil], share: group}\n"
        "model: {env_hidden: 64, fusion_hidden: 64}\n"
        "train: {po_loss: deepmaxent, scaling: robust, ensemble: 2, epochs: 30, patience: 5, batch_size: 1024, "
        "lr: 0.002}\n"
        "validation: {models: [cnn, maxent, maxent_tuned, random_forest], block_size_m: 20000, "
        "maxent_features: [L, LQ], maxent_betas: [1, 4]}\n"
        "cluster: {n_workers: 1, threads_per_worker: 2, memory_limit: 3GiB}\n"
    )
    out = tmp_path / "run"
    done = _cli(
        "sdm-table",
        "--config",
        str(cfg),
        "--presence",
        str(benchmark["presence"]),
        "--background",
        str(benchmark["background"]),
        "--test",
        str(benchmark["test"]),
        "--test-env",
        str(benchmark["test_env"]),
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    models = summary["independent"]["models"]
    assert set(models) == {"cnn", "maxent", "maxent_tuned", "random_forest"}
    # the species respond strongly to the predictors: every model must rank the surveys far better than chance
    for name, entry in models.items():
        assert entry["species"] == 6 and set(entry["groups"]) == {"plant", "bird"}
        assert entry["auc"] > 0.7, (name, entry)
    # wins and losses against the tuned MaxEnt, the peer to beat (the default MaxEnt keeps its column)
    assert sum(models["cnn"]["vs_maxent_tuned"].values()) == sum(models["maxent"]["vs_maxent_tuned"].values()) == 6
    # one network per group (share: group), each an ensemble of 2 with its own early-stopping blocks
    assert set(summary["units"]) == {"plant", "bird"}
    assert all(len(runs) == 2 for runs in summary["independent"]["deep_training"].values())
    files = summary["independent"]["model_files"]
    kinds = ("cnn", "maxent", "maxent_tuned", "random_forest")
    assert set(files) == {f"{m}-{g}" for m in kinds for g in ("plant", "bird")}
    from geoplantnet.models.peers import load_peer
    from geoplantnet.training.train import load_model

    _, spec = load_model(files["cnn-plant"])
    assert spec.members == 2 and spec.species == ["sp0", "sp1", "sp2"]
    assert spec.variables is None or spec.variables[:2] == ["temp", "rain"]
    assert load_peer(files["maxent-bird"])[1].species == ["sp3", "sp4", "sp5"]
    tuning = load_peer(files["maxent_tuned-bird"], kind="maxent_tuned")[1].tuning
    assert tuning is not None and len(tuning) == 3 and all(t["features"] in ("L", "LQ", "default") for t in tuning)
    report = (out / "report" / "report.md").read_text()
    for heading in ("## All species", "## Per biological group", "## Wins and losses per species", "## Per species"):
        assert heading in report
    assert (out / "report" / "auc_scatter.png").stat().st_size > 1000
    per_species = pd.read_csv(out / "report" / "per_species.csv")
    assert len(per_species) == 24 and per_species.auc.between(0, 1).all()
    assert "- cnn vs maxent_tuned:" in report and "| maxent |" in report


def test_without_test_sites_the_tuned_maxent_is_cross_validated_nested(
    benchmark: dict[str, Path], tmp_path: Path, shared_cluster_sets: list[str]
) -> None:
    # no test table: each unit cross-validated on spatial blocks; the tuned MaxEnt tunes inside each fold on blocks of
    # that fold's training rows (tests/test_maxent_tuning.py checks that the outer test rows are never seen)
    cfg = tmp_path / "table.yaml"
    cfg.write_text(
        "name: table-cv\n"
        "table: {species: spid, group: group, crs: 'EPSG:3035', categorical: [soil], share: region}\n"
        "validation: {models: [maxent, maxent_tuned], block_size_m: 20000, folds: 3, "
        "maxent_features: [L, LQ], maxent_betas: [2]}\n"
    )
    out = tmp_path / "run"
    args = ["--presence", str(benchmark["presence"]), "--background", str(benchmark["background"])]
    args += ["--out", str(out), *cli_sets(shared_cluster_sets)]
    done = _cli("sdm-table", "--config", str(cfg), *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    cv = json.loads((out / "summary.json").read_text())["cross_validation"]["all"]
    assert set(cv["models"]) == {"maxent", "maxent_tuned"} and set(cv["seconds"]) == {"maxent", "maxent_tuned"}
    assert all(m["folds"] == 3 and m["n_samples"] == 2720 for m in cv["models"].values())
    # background sites are pseudo-absences: every model is scored against them and against the target group
    assert all(0.5 < m["auc"] <= 1 and 0 < m["auc_tg"] <= 1 for m in cv["models"].values()), cv["models"]
    assert "| maxent_tuned" in Path(cv["report"]).read_text()


def test_sdm_table_bad_input_is_one_line_and_exit_2(benchmark: dict[str, Path], tmp_path: Path) -> None:
    done = _cli(
        "sdm-table",
        "--presence",
        str(tmp_path / "missing.csv"),
        "--background",
        str(benchmark["background"]),
        "--set",
        "table.species=spid",
        "--out",
        str(tmp_path / "o"),
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "missing.csv: no such file" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["sdm", "sdm-table"])
def test_a_users_file_or_folder_at_out_is_refused_and_left_as_it_was(command: str, tmp_path: Path) -> None:
    thesis = tmp_path / "thesis.docx"
    thesis.write_bytes(b"my thesis")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    for out, what in ((thesis, "is a file, not a"), (folder, "geoplantnet did not write")):
        done = (
            _cli(command, "--presence", "x.csv", "--background", "y.csv", "--out", str(out), cwd=tmp_path)
            if command == "sdm-table"
            else _cli(command, "--out", str(out), cwd=tmp_path)
        )
        assert done.returncode == 2 and what in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert thesis.read_bytes() == b"my thesis"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
