"""The habitat map's own model (``habitats.map_model``): trained at the labelled plots on the species model's
cross-fitted assemblages and the point predictors, chosen on spatial folds, mapped tile by tile on a real cluster and
scored against the virtual region's truth beside the direct forest; other classifier kinds map too, and the fused
path keeps giving what the two-pass map gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geoplantnet.core.encoding import NODATA
from geoplantnet.models.habitat_classifier import load_classifier
from geoplantnet.models.map_forest import MapForest
from geoplantnet.storage.store import COMPLETE, open_store
from geoplantnet.testing.cli import cli_sets, run_cli
from geoplantnet.testing.fixtures import SmallMap

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "pipelines" / "default.yaml"


@pytest.fixture(scope="module")
def trained_map(small_map: SmallMap, shared_cluster_sets: list[str]) -> tuple[str, dict]:
    """``geoplantnet habitat-map --set habitats.map_model=auto --evaluate`` on the small region's species map."""
    out = small_map.root / "auto-habitat.zarr"
    sets = cli_sets([*small_map.overrides, "habitats.map_model=auto", *shared_cluster_sets])
    proc = run_cli(
        "habitat-map",
        "--config",
        str(CONFIG),
        *sets,
        "--species",
        small_map.reference,
        "--out",
        str(out),
        "--evaluate",
        "--quiet",
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(out), json.loads(proc.stdout)


def test_the_shipped_map_is_at_least_the_direct_forest_on_the_truth(trained_map):
    url, summary = trained_map
    choice, evaluation = summary["map_model"], summary["evaluation"]
    assert choice["chosen"] in {"assemblage", "predictors", "joint"}
    assert set(choice["fold_accuracy"]) == {"assemblage", "predictors", "joint"}
    assert choice["fold_accuracy"][choice["chosen"]] == max(choice["fold_accuracy"].values())
    ds = open_store(url, mask_and_scale=False)
    assert ds.attrs[COMPLETE] == "true" and ds.attrs["habitat_model_version"].startswith("map-forest/")
    shipped, direct = evaluation["map"], evaluation["direct_forest"]
    assert shipped["pixels"] == direct["pixels"] > 1000
    assert shipped["accuracy_level3"] >= direct["accuracy_level3"], evaluation
    assert "cascade_alone" in evaluation and evaluation["map_minus_direct"]["accuracy_level3"] >= 0


def test_the_saved_map_model_loads_by_kind_and_maps_again_identically(trained_map, small_map, shared_cluster_sets):
    url, summary = trained_map
    folder = summary["map_model"]["folder"]
    model = load_classifier(folder)
    assert isinstance(model, MapForest) and model.inputs == summary["map_model"]["chosen"]
    # the saved folder mapped as any classifier folder (habitats.map_model=folder) gives the same store
    again = small_map.root / "again-habitat.zarr"
    sets = cli_sets([*small_map.overrides, *shared_cluster_sets])
    args = ["--species", small_map.reference, "--model", folder, "--out", str(again), "-q"]
    proc = run_cli("habitat-map", "--config", str(CONFIG), *sets, *args, cwd=ROOT)
    if model.needs_predictors:  # a model on predictors needs the run's inputs, which only map_model!=folder reads
        assert proc.returncode == 2 and "point predictors" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("habitat", "top_k", "top_k_probability"):
        a = open_store(url, mask_and_scale=False)[name].values
        np.testing.assert_array_equal(open_store(str(again), mask_and_scale=False)[name].values, a)


class ListForest:
    """A stand-in for another helper's kind: a plain classifier of species lists (the PlotClassifier protocol)."""

    def __init__(self, forest: MapForest) -> None:
        self.inner, self.classes, self.names = forest, forest.classes, forest.names
        self.version, self.parent, self.species = "list-forest-1", "", forest.species

    def predict_proba(self, sentences):
        return self.inner.predict_proba(sentences)


def test_a_classifier_of_species_lists_that_is_not_plantbert_maps(small_map: SmallMap, tmp_path, monkeypatch):
    """Any kind answering predict_proba(sentences) maps by the sentence rule, each distinct sentence once."""
    from geoplantnet.core.config import load_config
    from geoplantnet.inference import habitat
    from geoplantnet.inference.habitat import HabitatModelRef, plan_classifier

    species = [str(s) for s in open_store(small_map.reference)["species"].values]
    rng = np.random.default_rng(0)
    A = rng.random((60, len(species))).astype("float32")
    labels = np.where(A[:, 0] > A[:, 1], "R1A", "T1B")
    forest = MapForest.fit("assemblage", A, None, labels, species=species, trees=20)
    folder = tmp_path / "list-forest"
    forest.save(folder)
    model = ListForest(forest)
    monkeypatch.setattr(habitat, "read_classifier", lambda f, kind, device="cpu": model)
    cfg = load_config(CONFIG, [*small_map.overrides, "habitats.map_species=5"])
    classifier, _ = plan_classifier(
        habitat.ClassifierFolder(str(folder), model, "list-forest"),
        species,
        None,
        "the map",
        habitats=cfg.habitats,
        device="cpu",
    )
    assert classifier.model == HabitatModelRef(str(folder), model.version, "list-forest")
    import zarr

    codes = np.asarray(zarr.open_group(small_map.reference, mode="r")["probability"][:, :16, :16])
    codes[:, 0, 0] = NODATA
    blocks = habitat.classify_sentences(
        model, codes, species, np.ones(len(species), bool), classifier.rule, 32, top_k=2
    )
    # the same as classifying each pixel's top-5 species list (Pl@ntBERT's sentence rule) one by one
    from geoplantnet.inference.dense import decode
    from geoplantnet.samples.plots import assemblage_order

    prob = decode(codes).reshape(len(species), -1).T
    top, _ = assemblage_order(prob, None, 32, 5)
    expect = model.predict_proba([[species[i] for i in row] for row in top]).argmax(axis=1).reshape(16, 16)
    assert blocks.habitat[0, 0] == -1
    np.testing.assert_array_equal(blocks.habitat.ravel()[1:], expect.ravel()[1:])
    got, _ = classifier.classify(codes)
    np.testing.assert_array_equal(got.habitat, blocks.habitat)


def test_a_map_forest_folder_maps_two_pass_and_fused_identically(small_map: SmallMap, tmp_path, shared_cluster_sets):
    """A map forest on the predicted assemblage (no predictors) is a classifier folder like Pl@ntBERT's: habitat-map
    maps it, and the fused path (indicators --from-model, impact) classifies the same codes into the same classes."""
    import zarr

    from geoplantnet.core.config import load_config
    from geoplantnet.inference.fused import FusedPredictor
    from geoplantnet.inference.habitat import plan_classifier
    from geoplantnet.jobs.habitat_map import run_habitat_map

    species = [str(s) for s in open_store(small_map.reference)["species"].values]
    rng = np.random.default_rng(1)
    A = rng.random((80, len(species))).astype("float32")
    labels = np.where(A[:, 2] > 0.5, "R1A", np.where(A[:, 3] > 0.5, "S2B", "T1B"))
    folder = tmp_path / "assemblage-forest"
    MapForest.fit("assemblage", A, None, labels, species=species[::-1], trees=20).save(folder)
    cfg = load_config(CONFIG, [*small_map.overrides, *shared_cluster_sets])
    out = str(tmp_path / "forest-habitat.zarr")
    summary = run_habitat_map(cfg, small_map.reference, str(folder), out, progress=False)
    assert summary.habitat_model_version.startswith("map-forest/") and summary.tiles_computed == 9
    stored = open_store(out, mask_and_scale=False)
    codes = np.asarray(zarr.open_group(small_map.reference, mode="r")["probability"][:])
    classifier, model = plan_classifier(str(folder), species, None, "the map", habitats=cfg.habitats, device="cpu")
    fused = FusedPredictor(species=None, habitats=classifier, n_species=len(species), n_ranks=3)  # type: ignore[arg-type]
    _, top, _, _ = fused.classify(codes, {"model_loads": 0})
    k = stored["top_k"].shape[0]
    np.testing.assert_array_equal(stored["top_k"].values, top[:k])
    np.testing.assert_array_equal(stored["habitat"].values, top[0])
    assert [str(c) for c in stored["habitat_code"].values] == list(model.classes)


def test_the_candidates_on_folds_and_the_joint_stack_survive_a_save_and_load(tmp_path):
    """Constructed plots where the predictors name one split and the assemblage another: each candidate is scored on
    the same folds, auto takes the best mean (a setting overrides it), and a joint stack reloads to the same
    probabilities."""
    from geoplantnet.validation.map_models import choose_map_model, compare_map_models

    rng = np.random.default_rng(0)
    n = 120
    X = rng.normal(size=(n, 3)).astype("float32")
    A = rng.random((n, 6)).astype("float32")
    labels = np.where(X[:, 0] > 0, "R1A", "T1B")
    folds = np.arange(n) % 4
    scores = compare_map_models(A, X, labels, folds, trees=30)
    assert set(scores) == {"predictors", "joint", "assemblage"} and all(len(s["folds"]) == 4 for s in scores.values())
    assert scores["predictors"]["accuracy"] > scores["assemblage"]["accuracy"]
    chosen, info = choose_map_model(scores)
    assert info["fold_accuracy"][chosen] == max(info["fold_accuracy"].values())
    assert choose_map_model(scores, "assemblage")[0] == "assemblage"
    species = [f"s{i}" for i in range(6)]
    joint = MapForest.fit("joint", A, X, labels, species=species, features=["a", "b", "c"], folds=folds, trees=30)
    joint.save(tmp_path / "joint")
    back = load_classifier(tmp_path / "joint")
    assert isinstance(back, MapForest) and back.version == joint.version and back.stage is not None
    np.testing.assert_array_equal(back.predict_rows(A, X), joint.predict_rows(A, X))
    with pytest.raises(Exception, match="point predictors"):
        back.predict_proba([["s1", "s2"]])


def test_auto_refuses_in_one_line_when_no_candidate_could_be_scored():
    """Every matched plot in one fold: no candidate has a fold score, so ``auto`` cannot choose (a setting still
    names one)."""
    from geoplantnet.core.config import ConfigError
    from geoplantnet.validation.map_models import choose_map_model, compare_map_models

    rng = np.random.default_rng(0)
    A, X = rng.random((12, 3)).astype("float32"), rng.normal(size=(12, 2)).astype("float32")
    labels = np.where(X[:, 0] > 0, "R1A", "T1B")
    scores = compare_map_models(A, X, labels, np.zeros(12, int), trees=5)
    assert all(not np.isfinite(s["accuracy"]) for s in scores.values())
    with pytest.raises(ConfigError, match="too few labelled plots across folds"):
        choose_map_model(scores)
    assert choose_map_model(scores, "predictors")[0] == "predictors"


def test_the_out_of_fold_assemblages_are_calibrated_as_the_pixels_are():
    """species.zarr holds a calibrated model's calibrated values: the training rows get the same calibration, matched
    by species name; a species the model lacks, or no calibration, stays as it is."""
    from geoplantnet.models.calibration import Calibration, SpeciesCalibration, calibrate
    from geoplantnet.validation.map_models import PlotAssemblages

    rng = np.random.default_rng(0)
    prob = rng.random((20, 3)).astype("float32")
    oof = PlotAssemblages(np.zeros(20), np.zeros(20), ["a", "b", "extra"], prob, np.arange(20) % 4)
    model_species = ["b", "a"]
    cal = Calibration(method="platt", species=[SpeciesCalibration(slope=2.0, intercept=-1.0), None])
    out = oof.calibrated(cal, model_species)
    expected = calibrate(prob[:, [1, 0]], cal)
    np.testing.assert_allclose(out.prob[:, 1], expected[:, 0])  # b: its own map
    np.testing.assert_allclose(out.prob[:, 0], prob[:, 0])  # a: no map of its own
    np.testing.assert_array_equal(out.prob[:, 2], prob[:, 2])  # not the model's
    assert not np.allclose(out.prob[:, 1], prob[:, 1]) and oof.calibrated(None, model_species) is oof


def test_a_forest_on_predictors_refuses_a_species_store_on_another_grid(small_map: SmallMap, tmp_path):
    """The point predictors are read on the config's grid, the codes on the store's: they must be the same pixels."""
    from dataclasses import replace

    from geoplantnet.core.config import load_config
    from geoplantnet.inference.habitat import HabitatMapError
    from geoplantnet.inference.map_inputs import PixelPredictors
    from geoplantnet.models.peers import PeerSpec
    from geoplantnet.products.habitat_map import plan_habitat, store_epsg
    from geoplantnet.samples.extraction import grid_of

    cfg = load_config(CONFIG, small_map.overrides)
    ds = open_store(small_map.reference)
    species = [str(s) for s in ds["species"].values]
    grid = grid_of(ds["probability"], store_epsg(ds, cfg.grid.epsg))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2)).astype("float32")
    labels = np.where(X[:, 0] > 0, "R1A", "T1B")
    folder = tmp_path / "predictors-forest"
    MapForest.fit("predictors", None, X, labels, species=species, features=["v1", "v2"], trees=5).save(folder)
    spec = PeerSpec(kind="random_forest", species=species, variables=["v1", "v2"], features=["v1", "v2"])

    def plan(on):
        predictors = PixelPredictors(None, spec, on, None)
        kw = {"habitats": cfg.habitats, "device": "cpu", "epsg": cfg.grid.epsg, "species_options": {}}
        return plan_habitat(
            small_map.reference, str(folder), str(tmp_path / "h.zarr"), **kw, out_options={}, predictors=predictors
        )

    assert plan(grid).grid.same_pixels(grid)
    with pytest.raises(HabitatMapError, match="another grid"):
        plan(replace(grid, left=grid.left + grid.resolution))
    with pytest.raises(HabitatMapError, match="another grid"):
        plan(replace(grid, width=grid.width - 1))


def test_a_missing_species_model_fails_before_the_cross_fit(small_map: SmallMap, tmp_path, monkeypatch):
    """The cross-fit (one species network per fold) is the expensive part: a missing model file is found first."""
    from geoplantnet.core.config import load_config
    from geoplantnet.models.species_files import ModelFileError
    from geoplantnet.runs import habitat_model
    from geoplantnet.runs.context import RunContext

    def no_cross_fit(*args, **kwargs):
        raise AssertionError("the cross-fit ran before the species model was read")

    monkeypatch.setattr(habitat_model, "_raw_assemblages", no_cross_fit)
    cfg = load_config(CONFIG, small_map.overrides)
    with pytest.raises(ModelFileError, match="no such model file"):
        habitat_model.train_map_model(RunContext(cfg), None, str(tmp_path / "gone.pt"), str(tmp_path / "m"))  # type: ignore[arg-type]
