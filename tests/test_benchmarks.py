"""The benchmarks run at a tiny size, so that a change breaking one shows here rather than when someone times it.

``bench_refusals.py`` at one repeat of two cases: a command refusing without torch (``plot``) and one whose check
reads a model file with it (``map``). ``virtual_species.py``: its generator's properties, and the whole benchmark
(sdm, then predict at the surveys) at 4 species with one network of 2 epochs on 2 folds. ``nceas_ablation.py``: two
variants on the AWT tables at 2 epochs. ``bench_cnn_cv.py`` on the session's small region and cluster, one epoch of 2
folds x 2 members. ``habitat_ablation.py``: two stack variants and the peers on 160 made-up plots, 2 folds.
``value_ablation.py``: the probability and score variants on the small region, 2 folds of a 2-epoch U-Net."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    """This checkout first on ``PYTHONPATH``, as for the tests."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def test_bench_refusals_times_each_case_as_a_process_and_in_process() -> None:
    cases = ["map/missing model file", "plot/missing species.zarr"]
    env = _env()
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_refusals.py"), "--repeats", "1"]
    done = subprocess.run(
        command + [arg for case in cases for arg in ("--case", case)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line[:52].strip(): line[52:].split() for line in done.stdout.splitlines() if line.startswith(tuple(cases))}
    assert list(rows) == cases, done.stdout
    for case, (process, inside, ratio) in rows.items():
        # a process pays the interpreter's start and the imports on top of the command's own work
        assert float(process) > float(inside) > 0, (case, process, inside)
        assert float(ratio) >= 1, (case, ratio)
    assert re.search(r"slowest as a process: [\d.]+ s", done.stdout), done.stdout


def _virtual_species():
    spec = importlib.util.spec_from_file_location("virtual_species", ROOT / "benchmarks" / "virtual_species.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vsp():
    module = _virtual_species()
    if not module.BIO.exists():
        pytest.skip(f"real data file {module.BIO} is absent")
    return module


def test_virtual_species_are_seeded_lie_on_land_and_spread_from_rare_to_common(vsp) -> None:
    import rasterio

    layers = vsp.read_layers()
    one = vsp.generate(layers, n_species=12, n_records=600, n_surveys=150, seed=3)
    again = vsp.generate(layers, n_species=12, n_records=600, n_surveys=150, seed=3)
    other = vsp.generate(layers, n_species=12, n_records=600, n_surveys=150, seed=4)
    for name in ("observations", "surveys", "truth", "species"):
        assert getattr(one, name).equals(getattr(again, name)), name
    assert not one.observations.equals(other.observations)
    assert abs(len(one.observations) - 600) < 30 and len(one.surveys) == 150
    with rasterio.open(vsp.BIO) as src:  # every record and survey in a cell where all the layers have data
        for frame in (one.observations, one.surveys):
            values = np.array(list(src.sample(zip(frame["lon"], frame["lat"], strict=True))))
            assert np.isfinite(values).all()
    prevalence = one.species["prevalence"]
    assert prevalence.min() < 0.05 and prevalence.max() > 0.3  # rare to common
    assert np.allclose(one.prob.mean(axis=0), prevalence)
    # records come from presences: the true probability where they fall is well above the species' prevalence
    names = one.observations["species"].to_numpy()
    for s, name in enumerate(one.species["species"]):
        assert one.prob[one.record_cells[names == name], s].mean() > 1.2 * prevalence[s]
    # surveys: presences drawn from the truth
    observed = one.surveys[list(one.species["species"])].to_numpy().mean()
    assert abs(observed - one.truth[list(one.species["species"])].to_numpy().mean()) < 0.03
    assert vsp.parse_variant("dm:train.po_loss=deepmaxent,validation.models=[cnn,maxent]") == (
        "dm",
        ["train.po_loss=deepmaxent", "validation.models=[cnn,maxent]"],
    )


@pytest.mark.slow
@pytest.mark.real_data
def test_virtual_species_benchmark_scores_every_model_at_the_surveys(vsp, tmp_path, shared_cluster_sets) -> None:
    tiny = ["train.ensemble=1", "train.epochs=2", "validation.folds=2", "train.n_background=300"]
    tiny += ["validation.maxent_features=[L,LQ]", "validation.maxent_betas=[2]"]  # a small tuning grid
    argv = ["--out", str(tmp_path), "--species", "4", "--records", "200", "--surveys", "100"]
    rows = vsp.main([*argv, *(a for s in [*tiny, *shared_cluster_sets] for a in ("--set", s)), "--variant", "one:"])
    models = ("cnn", "maxent", "maxent_tuned", "random_forest")  # pipelines/bradypus.yaml's
    assert [(r["variant"], r["model"]) for r in rows] == [("one", m) for m in models]
    for row in rows:
        assert 0.5 < row["sdm_auc"] <= 1 and 0 < row["survey_auc"] <= 1 and -1 <= row["spearman"] <= 1, row
        assert row["n_auc"] >= 3 and row["no_data"] < 10, row
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows
    assert (tmp_path / "set" / "observations.csv").read_text().startswith("species,lon,lat")


@pytest.mark.slow
@pytest.mark.real_data
def test_nceas_ablation_chooses_on_the_training_folds(tmp_path, shared_cluster_sets) -> None:
    spec = importlib.util.spec_from_file_location("nceas_ablation", ROOT / "benchmarks" / "nceas_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not (ROOT.parent / "shared" / "data" / "real" / "nceas_disdat").exists():
        pytest.skip("real data folder ../shared/data/real/nceas_disdat is absent")
    # 50 km blocks: with 2 folds the chosen size (130 km) leaves a fold's training rows too few blocks to hold out
    tiny = ["train.ensemble=1", "train.epochs=2", "validation.folds=2", "validation.block_size_m=50000"]
    tiny += shared_cluster_sets
    argv = ["--region", "awt", "--variants", "recipe,background", "--out", str(tmp_path)]
    rows = module.main([*argv, *(a for s in tiny for a in ("--set", s))])
    assert [r["variant"] for r in rows] == ["recipe", "background"]
    for row in rows:
        assert 0 < row["cv_auc"] <= 1 and 0 < row["cv_auc_tg"] <= 1 and 0 < row["test_auc"] <= 1, row
    saved = json.loads((tmp_path / "nceas-awt-ablation.json").read_text())
    assert saved["chosen"] == max(rows, key=lambda r: r["cv_auc_tg"])["variant"]


@pytest.mark.slow  # the small region's training set is extracted first (~1.5 min on 2 shared cores)
def test_bench_cnn_cv_times_the_folds_one_after_another_and_side_by_side_with_the_same_numbers(
    tmp_path: Path, small_region: Path, shared_cluster_sets: list[str]
) -> None:
    from geoplantnet.testing.fixtures import copy_region

    work = copy_region(small_region, tmp_path / "work")
    sets = [arg for s in shared_cluster_sets for arg in ("--set", s)]
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_cnn_cv.py"), "--workdir", str(work), *sets]
    done = subprocess.run(
        [*command, "--epochs", "1", "--ensemble", "2", "--folds", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    wall = re.search(r"^wall seconds\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", done.stdout, re.MULTILINE)
    assert wall and all(float(v) > 0 for v in wall.groups()), done.stdout
    assert len(re.findall(r"^fold \d AUC", done.stdout, re.MULTILINE)) == 2, done.stdout
    assert "per-fold AUCs identical: yes; out-of-fold predictions identical: yes" in done.stdout


def test_habitat_ablation_prints_every_variant_beside_the_peers_and_chooses_on_the_inner_split(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("habitat_ablation", ROOT / "benchmarks" / "habitat_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(160):
        code = ("R1A", "R1B", "S2A", "T1A")[i % 4]
        pool = [f"{code}_{j}" for j in range(6)] + [f"{code[:2]}_shared{j}" for j in range(4)]
        species = ";".join(rng.choice(pool, 4, replace=False))
        rows.append({"plot": f"p{i}", "species": species, "habitat": code, "lon": rng.uniform(0, 4), "lat": 45.0})
    table = tmp_path / "plots.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    config = tmp_path / "habitats.yaml"
    config.write_text(
        f"habitats:\n  plots: {table}\n  folds: 2\n  block_size: 1.0\n"
        "  stack:\n    logistic_c: [1.0]\n    tfidf_c: [10.0]\n    weight_step: 0.5\n"
    )
    out = tmp_path / "ablation.json"
    got = module.main(["--config", str(config), "--variants", "average,stack", "--out", str(out)])
    assert sorted({r["model"] for r in got}) == ["average", "knn_jaccard", "logistic", "stack"]
    assert {r["fold"] for r in got} == {0, 1}
    saved = json.loads(out.read_text())
    assert saved["chosen"] in ("average", "stack")
    for row in got:
        assert 0 <= row["top1"] <= 1 and 0 <= row["top1_level1"] <= 1
        if row["model"] in ("average", "stack"):
            assert np.isfinite(row["inner_val"]) and row["top1"] > 0.5


@pytest.mark.slow  # the small region's feature stack, then 2 variants x 2 folds x 2 fits of a 2-epoch U-Net
def test_value_ablation_prints_the_variants_beside_the_forest_and_chooses_on_the_inner_split(
    tmp_path: Path, small_region: Path
) -> None:
    from geoplantnet.testing.fixtures import copy_region
    from geoplantnet.testing.regions import SMALL_REGION

    spec = importlib.util.spec_from_file_location("value_ablation", ROOT / "benchmarks" / "value_ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    work = copy_region(small_region, tmp_path / "work")
    tiny = [*SMALL_REGION, f"workdir={work}", f"store.root={tmp_path / 'out'}", "value.folds=2"]
    tiny += ["value.block_size_m=500", "value.epochs=2", "value.crop=32", "value.base_channels=4"]
    tiny += ["value.forest_trees=10", "value.pixels_per_polygon=30", "value.score_column=condition"]
    out = tmp_path / "ablation.json"
    argv = ["--config", str(ROOT / "pipelines" / "default.yaml"), "--variants", "probability,score", "--out", str(out)]
    got = module.main([*argv, *(a for s in tiny for a in ("--set", s))])
    assert {r["variant"] for r in got["rows"]} == {"probability", "score"}
    assert {r["fold"] for r in got["rows"]} <= {0, 1}
    for m in got["means"].values():
        assert m["test_unet"] is None or 0 <= m["test_unet"] <= 1
        assert -1 <= m["spearman_out"] <= 1 or np.isnan(m["spearman_out"])
    saved = json.loads(out.read_text())
    scored = {n: m["inner_unet"] for n, m in saved["means"].items() if m["inner_unet"] is not None}
    assert saved["chosen"] == (max(scored, key=scored.get) if scored else None)


def test_bench_overviews_prints_the_ratio() -> None:
    spec = importlib.util.spec_from_file_location("bench_overviews", ROOT / "benchmarks" / "bench_overviews.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--species", "4", "--tile", "32", "--tiles", "2", "--repeats", "1"])
    assert result["tiles"] == 4 and result["ratio"] > 0 and result["tile_write_with_overviews_s"] > 0


def test_bench_cube_runs_at_a_tiny_size_and_prints_its_ratios() -> None:
    # a process, as a user runs it: it had stopped running (write_store's signature moved) and nothing noticed
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_cube.py"), "--size", "96", "--dates-per-season", "1",
         "--chunk", "96"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio naive/ours wall time:" in proc.stdout and "\nours " in proc.stdout and "\nnaive " in proc.stdout
