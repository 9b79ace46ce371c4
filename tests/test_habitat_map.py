"""habitat.zarr from species.zarr on a real LocalCluster: values against a direct in-memory computation, no-data,
resume, refusals (a user's folder, an incomplete species store, no thresholds), the CLI end to end, and the scoring
of a habitat map against a reference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from geoplantnet.cli import main
from geoplantnet.core.config import ConfigError, RunConfig, load_config
from geoplantnet.core.encoding import NODATA, SCALE
from geoplantnet.inference.dense import decode
from geoplantnet.inference.habitat import NO_CLASS, AssemblageRule, classify_codes
from geoplantnet.jobs.habitat_map import plan_habitat_map, run_habitat_map
from geoplantnet.models.plantbert import PlotModel, assemblage_ids
from geoplantnet.storage.store import COMPLETE, open_store
from geoplantnet.storage.tiles import MANIFEST, finished_tiles
from geoplantnet.testing.cli import cli_sets, run_cli
from geoplantnet.testing.fixtures import SmallMap
from geoplantnet.validation.habitat_maps import class_codes, score_habitat_map

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "default.yaml"
TOP_SPECIES = "habitats.map_species=8"  # the small map's model has no thresholds


def _cfg(small_map: SmallMap, *extra: str) -> RunConfig:
    return load_config(CONFIG, [*small_map.overrides, *extra])


@pytest.fixture(scope="module")
def classifier(small_map: SmallMap) -> tuple[str, PlotModel]:
    """A tiny habitat classifier trained from scratch on the virtual region's plots (same species ids as the map)."""
    from geoplantnet.testing.fixtures import tiny_classifier

    species = [str(s) for s in open_store(small_map.reference)["species"].values]
    folder = tiny_classifier(small_map.cfg, species, small_map.root / "habitat-model")
    return folder, PlotModel.load(folder)


@pytest.fixture(scope="module")
def cli_run(small_map: SmallMap, classifier, shared_cluster_sets: list[str]) -> tuple[str, dict]:
    """``geoplantnet habitat-map`` end to end, run in-process on the session's cluster."""
    out = small_map.root / "cli-habitat.zarr"
    sets = cli_sets([*small_map.overrides, TOP_SPECIES, *shared_cluster_sets])
    proc = run_cli(
        "habitat-map",
        "--config",
        str(CONFIG),
        *sets,
        "--species",
        small_map.reference,
        "--model",
        classifier[0],
        "--out",
        str(out),
        "--quiet",
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(out), json.loads(proc.stdout)


def test_cli_writes_a_complete_store_naming_both_models(cli_run, small_map, classifier):
    url, summary = cli_run
    ds = open_store(url, mask_and_scale=False)
    species = open_store(small_map.reference)
    assert ds.attrs[COMPLETE] == "true" and ds.attrs["geoplantnet_product"] == "habitat"
    assert ds.attrs["species_model_version"] == species.attrs["model_version"]
    assert ds.attrs["habitat_model_version"] == f"plantbert-classifier/{classifier[1].version}"
    assert json.loads(ds.attrs["geoplantnet_config"])["habitats"]["map_species"] == 8
    assert ds["habitat"].dims == ("y", "x") and ds["habitat"].dtype == np.int16
    assert ds["top_k"].dims == ("rank", "y", "x") and ds["top_k"].shape[0] == min(10, len(classifier[1].classes))
    assert ds["habitat_probability"].dtype == np.uint8
    assert [str(c) for c in ds["habitat_code"].values] == list(classifier[1].classes)
    assert ds["habitat"].attrs["flag_meanings"].split() == list(classifier[1].classes)
    assert ds["habitat"].attrs["grid_mapping"] == "spatial_ref"
    np.testing.assert_array_equal(ds["x"].values, species["x"].values)
    raw = zarr.open_group(url, mode="r")
    assert raw["habitat"].fill_value == NO_CLASS and raw["habitat_probability"].fill_value == NODATA
    assert summary["tiles"] == summary["tiles_computed"] == 9 and summary["pixels_per_second_per_core"] > 0
    assert all(n == 1 for n in summary["model_loads"].values())


def test_tile_values_equal_a_direct_in_memory_computation(cli_run, small_map, classifier):
    url, _ = cli_run
    model = classifier[1]
    ds = open_store(url, mask_and_scale=False)
    codes = zarr.open_group(small_map.reference, mode="r")["probability"][:, 16:32, 0:16]  # one tile
    prob = decode(codes).reshape(codes.shape[0], -1).T
    vocab = model.tokenizer.get_vocab()
    species = [str(s) for s in open_store(small_map.reference)["species"].values]
    token_of = np.asarray([vocab.get(s, 1) for s in species])
    p = model.predict_proba_ids(assemblage_ids(prob, token_of, None, model.cfg.max_species, 8))
    order = np.argsort(-p, axis=1, kind="stable")
    np.testing.assert_array_equal(ds["habitat"].values[16:32, 0:16].ravel(), order[:, 0])
    k = ds["top_k"].shape[0]
    np.testing.assert_array_equal(ds["top_k"].values[:, 16:32, 0:16].reshape(k, -1), order[:, :k].T)
    best = np.rint(p.max(axis=1) * SCALE)
    assert np.abs(ds["habitat_probability"].values[16:32, 0:16].ravel() - best).max() <= 1  # float32 vs batch sums
    top_p = np.rint(np.take_along_axis(p, order[:, :k], axis=1) * SCALE).T
    assert np.abs(ds["top_k_probability"].values[:, 16:32, 0:16].reshape(k, -1) - top_p).max() <= 1


def test_no_data_pixels_stay_no_data(small_map, classifier):
    model = classifier[1]
    codes = zarr.open_group(small_map.reference, mode="r")["probability"][:, :16, :16].copy()
    token_of = np.arange(codes.shape[0]) + 5
    rule = AssemblageRule(8, None)
    before = classify_codes(model, codes, token_of, rule, top_k=3)
    codes[3, 2, 5] = NODATA  # one species without data at one pixel
    codes[:, 10, :] = NODATA  # a whole row outside the study area
    after = classify_codes(model, codes, token_of, rule, top_k=3)
    gone = np.zeros((16, 16), bool)
    gone[2, 5] = gone[10, :] = True
    assert (after.habitat[gone] == NO_CLASS).all() and (after.top_k[:, gone] == NO_CLASS).all()
    assert (after.habitat_probability[gone] == NODATA).all()
    np.testing.assert_array_equal(after.habitat[~gone], before.habitat[~gone])
    assert (before.habitat >= 0).all()


def test_resume_after_an_interrupted_run_computes_only_the_missing_tiles(small_map, classifier):
    cfg = _cfg(small_map, TOP_SPECIES)
    out = str(small_map.root / "resumed-habitat.zarr")
    first = run_habitat_map(cfg, small_map.reference, classifier[0], out, progress=False)
    # as a killed run leaves it: not complete, three tiles without their markers
    group = zarr.open_group(out, mode="r+")
    group.attrs[COMPLETE] = "false"
    markers = sorted((Path(out) / MANIFEST / first.run).glob("*.json"))
    for marker in markers[:3]:
        marker.unlink()
    before = open_store(out.replace("resumed", "cli"), mask_and_scale=False)["habitat"].values
    again = run_habitat_map(cfg, small_map.reference, classifier[0], out, progress=False)
    assert again.run == first.run and again.tiles_computed == 3 and again.tiles_skipped == 6
    assert len(finished_tiles(out, again.run)) == 9
    np.testing.assert_array_equal(open_store(out, mask_and_scale=False)["habitat"].values, before)


def test_a_users_folder_at_out_is_refused_and_untouched(small_map, classifier, tmp_path, capsys):
    user = tmp_path / "my-results"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    sets = [a for s in [*small_map.overrides, TOP_SPECIES] for a in ("--set", s)]
    rc = main(
        [
            "habitat-map",
            "--config",
            str(CONFIG),
            *sets,
            "--species",
            small_map.reference,
            "--model",
            classifier[0],
            "--out",
            str(user),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(user) in err[0] and "not a geoplantnet store" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-results"]  # no lease beside it either
    assert [p.name for p in user.iterdir()] == ["notes.txt"] and (user / "notes.txt").read_text() == "mine"


def test_an_incomplete_species_store_is_refused(small_map, classifier, tmp_path, capsys):
    species = tmp_path / "species.zarr"
    shutil.copytree(small_map.reference, species)
    zarr.open_group(str(species), mode="r+").attrs[COMPLETE] = "false"
    out = tmp_path / "habitat.zarr"
    sets = [a for s in [*small_map.overrides, TOP_SPECIES] for a in ("--set", s)]
    rc = main(
        [
            "habitat-map",
            "--config",
            str(CONFIG),
            *sets,
            "--species",
            str(species),
            "--model",
            classifier[0],
            "--out",
            str(out),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "incomplete" in err[0] and str(species) in err[0]
    assert not out.exists()


def test_a_store_without_thresholds_needs_map_species(small_map, classifier, tmp_path):
    with pytest.raises(ConfigError, match=r"habitats\.map_species"):
        plan_habitat_map(
            _cfg(small_map, "habitats.map_species=null"), small_map.reference, classifier[0], str(tmp_path / "h.zarr")
        )


def test_the_registered_habitat_product_maps_the_stores_under_store_root(cli_run, small_map, classifier, tmp_path):
    """``geoplantnet product habitat``: the registry's plan reads species.zarr and the classifier under store.root
    and writes the same habitat.zarr as ``habitat-map``."""
    root = tmp_path / "root"
    shutil.copytree(small_map.reference, root / "species.zarr")
    shutil.copytree(classifier[0], root / "habitats" / "model")
    sets = [a for s in [*small_map.overrides, TOP_SPECIES, f"store.root={root}"] for a in ("--set", s)]
    assert main(["product", "habitat", "--config", str(CONFIG), *sets, "--quiet"]) == 0
    made = open_store(str(root / "habitat.zarr"), mask_and_scale=False)
    assert made.attrs["geoplantnet_product"] == "habitat" and made.attrs[COMPLETE] == "true"
    for name in ("habitat", "top_k", "top_k_probability"):
        np.testing.assert_array_equal(made[name].values, open_store(cli_run[0], mask_and_scale=False)[name].values)


def test_score_habitat_map_on_a_constructed_case():
    classes = ["R1A", "R1B", "R2A", "T1A"]
    truth = class_codes(np.array([[0, 0, 1, 1], [2, 3, 3, -1]]), classes)
    pred = class_codes(np.array([[0, 1, 1, 2], [2, 3, -1, 0]]), classes)
    score = score_habitat_map(pred, truth, level=3)
    # pixels with both: 6; right at level 3: (0,0) (0,2) (1,0) (1,1) -> 4/6
    assert score["pixels"] == 6 and score["no_data_predicted"] == 1
    assert score["accuracy_level3"] == pytest.approx(4 / 6)
    # level 2: R1B~R1A right, R2A vs R1B wrong (R2 vs R1) -> 5/6; level 1: all R/T agree but (0,3) R vs R -> 6/6
    assert score["accuracy_level2"] == pytest.approx(5 / 6)
    assert score["accuracy_level1"] == pytest.approx(6 / 6)
    table = score["classes"]
    assert table.loc["R1A", "pixels"] == 2 and table.loc["R1A", "correct"] == 1
    assert table.loc["R1A", "recall"] == pytest.approx(0.5) and table.loc["R1B", "precision"] == pytest.approx(0.5)


@pytest.mark.slow
def test_habitats_then_habitat_map_on_the_virtual_region_scored_against_its_truth(
    small_map: SmallMap, shared_cluster_sets: list[str]
):
    """The demo's cascade as a user runs it: ``habitats`` on the region's plots (pre-training, fine-tuning, peers on
    spatial folds), then ``habitat-map --evaluate`` from the region's species map, scored against the true habitats
    next to the direct random forest."""
    out = small_map.root / "habitats-cli"
    tiny = [
        "habitats.model.hidden=32",
        "habitats.model.heads=2",
        "habitats.model.layers=2",
        "habitats.model.intermediate=64",
        "habitats.train.pretrain_epochs=30",
        "habitats.train.finetune_epochs=30",
        "habitats.folds=3",
        "habitats.block_size=500",
        "habitats.x=x",
        "habitats.y=y",
    ]
    sets = cli_sets([*small_map.overrides, *tiny, TOP_SPECIES, *shared_cluster_sets])
    trained = run_cli("habitats", "--config", str(CONFIG), *sets, "--out", str(out), "-q", cwd=ROOT)
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads(trained.stdout)
    assert {"plantbert", "logistic", "knn_jaccard"} <= set(summary["models"])
    mapped = run_cli(
        "habitat-map",
        "--config",
        str(CONFIG),
        *sets,
        "--species",
        small_map.reference,
        "--model",
        str(out / "model"),
        "--out",
        str(small_map.root / "cascade.zarr"),
        "--evaluate",
        "-q",
        cwd=ROOT,
    )
    assert mapped.returncode == 0, mapped.stderr[-3000:]
    evaluation = json.loads(mapped.stdout)["evaluation"]
    cascade, direct = evaluation["map"], evaluation["direct_forest"]
    assert cascade["pixels"] == direct["pixels"] > 1000
    # The scoring is right: the truth is aligned (the direct forest from the same predictors clears a one-class map by
    # far) and the cascade's score is what the two stores say, recomputed here from the raw indices.
    assert direct["accuracy_level1"] > evaluation["majority_class_share"]["level1"] + 0.1, evaluation
    from geoplantnet.runs.inputs import virtual_plots

    _, truth_url = virtual_plots(_cfg(small_map))
    truth = open_store(truth_url, mask_and_scale=False)
    ours = open_store(str(small_map.root / "cascade.zarr"), mask_and_scale=False)
    true_codes = class_codes(truth["habitat"].values, [str(c) for c in truth["habitat_code"].values])
    map_codes = class_codes(ours["habitat"].values, [str(c) for c in ours["habitat_code"].values])
    first = np.vectorize(lambda c: c[:1], otypes=[object])
    assert cascade["accuracy_level1"] == pytest.approx(float(np.mean(first(map_codes) == first(true_codes))))
    # The small region's plots hold 1-4 species each and its 8-epoch species model is nearly flat, so the cascade's
    # accuracy here says little; the demo-size region's numbers are in the README.
    assert set(evaluation["map_minus_direct"]) == {"accuracy_level3", "accuracy_level2", "accuracy_level1"}
