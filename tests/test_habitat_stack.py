"""The stacked habitat classifier (kind ``stack``): shapes, a saved folder that predicts the same, the EUNIS
decoding, and choices that never see the test fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geoplantnet.core.config import HabitatsConfig, HabitatStackConfig
from geoplantnet.models.habitat_classifier import ClassifierFolderError, load_classifier
from geoplantnet.models.habitat_stack import HabitatStack, decode, simplex
from geoplantnet.samples.plots import Plots, eunis_ancestor
from geoplantnet.training.habitats import train_models
from geoplantnet.validation.habitat_folds import assign_folds, calibrate_sets, inner_split

CODES = ("R1A", "R1B", "R2A", "S3B", "T1A", "T1B")


def community_plots(n: int, seed: int = 0) -> tuple[list[list[str]], np.ndarray]:
    """Plots of six habitats, each with its own species pool; sister habitats (same level-2 parent) share half of
    theirs, and a generalist turns up anywhere."""
    rng = np.random.default_rng(seed)
    sentences, labels = [], []
    for _ in range(n):
        c = int(rng.integers(len(CODES)))
        code = CODES[c]
        own = [f"{code} sp{j}" for j in range(6)] + [f"{code[:2]} shared{j}" for j in range(6)]
        sentence = list(rng.choice(own, 5, replace=False)) + (["Generalist common"] if rng.random() < 0.5 else [])
        sentences.append(sentence)
        labels.append(code)
    return sentences, np.asarray(labels, dtype=object)


@pytest.fixture(scope="module")
def fitted() -> tuple[HabitatStack, list[list[str]], np.ndarray]:
    s, y = community_plots(240, seed=1)
    vs, vy = community_plots(80, seed=2)
    cfg = HabitatStackConfig(logistic_c=[1.0, 10.0], tfidf_c=[10.0], weight_step=0.25)
    return HabitatStack(cfg=cfg).fit(s, y, vs, vy), *community_plots(60, seed=3)


def test_the_stack_learns_the_habitats_and_returns_a_distribution_over_its_classes(fitted) -> None:
    stack, test, truth = fitted
    p = stack.predict_proba(test)
    assert p.shape == (60, len(CODES)) and stack.classes == CODES
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    assert np.mean(np.asarray(stack.classes)[p.argmax(axis=1)] == truth) > 0.9
    assert abs(sum(stack.weights.values()) - 1) < 1e-9 and set(stack.decoding) == {"a", "b", "tau"}
    assert stack.choice["validation_plots"] == 80
    # an unknown species is ignored; a plot of unknown species only still gets a distribution
    q = stack.predict_proba([["Nobody knows"], [*test[0], "Nobody knows"]])
    np.testing.assert_allclose(q.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(q[1], p[0], rtol=1e-5)


def test_a_saved_stack_loads_by_kind_and_predicts_the_same(fitted, tmp_path: Path) -> None:
    stack, test, _ = fitted
    stack.names = tuple(f"habitat {c}" for c in stack.classes)
    # calibrated on the validation plots' probabilities from before the refit (out of sample), in their order
    assert stack.validation_proba is not None and stack.validation_proba.shape == (80, len(CODES))
    stack.conformal = {"level": 0.9, "q": 0.5, "plots": 80}
    version = stack.save(tmp_path / "model")
    assert version and stack.version == version
    again = load_classifier(tmp_path / "model")
    assert isinstance(again, HabitatStack)
    assert (again.classes, again.names, again.version, again.parent) == (stack.classes, stack.names, version, "")
    assert again.conformal == stack.conformal and again.vocabulary == frozenset(stack.species)
    np.testing.assert_array_equal(again.predict_proba(test), stack.predict_proba(test))
    assert not list((tmp_path / "model").glob("*.pkl"))
    assert stack.save(tmp_path / "model") == version  # the same content, the same version
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("a user's file")
    with pytest.raises(ClassifierFolderError, match="not a habitat stack folder"):
        stack.save(tmp_path / "other")


def test_sets_are_calibrated_only_on_probabilities_from_before_the_refit(fitted) -> None:
    stack, _, _ = fitted
    vs, vy = community_plots(80, seed=2)
    plots = Plots(np.arange(80).astype(str), vs, vy, np.zeros(80), np.zeros(80))
    sets = calibrate_sets(stack, plots, 0.9)
    assert sets is not None and sets["plots"] == 80
    # without validation plots the stack falls back to defaults and is refitted on these plots: in-sample, no sets
    s, y = community_plots(240, seed=1)
    blind = HabitatStack(cfg=stack.cfg).fit([*s, *vs], [*y, *vy])
    assert blind.validation_proba is None and calibrate_sets(blind, plots, 0.9) is None


def test_the_decoding_follows_the_eunis_parents_and_lifts_rare_classes() -> None:
    classes = ("R1A", "R1B", "R2A", "S3B")
    # R2A alone is the likeliest level-3 class, but level 2 says R1 (0.6) and level 1 says R (0.9)
    p = np.asarray([[0.30, 0.30, 0.32, 0.08]])
    prior = np.full(4, 0.25)
    assert classes[int(decode(p, classes, 0, 0, 0, prior).argmax())] == "R2A"
    hier = decode(p, classes, 1.0, 0.0, 0.0, prior)
    top = classes[int(hier.argmax())]
    assert eunis_ancestor(top, 2) == "R1"
    np.testing.assert_allclose(hier.sum(), 1)
    # logit adjustment: the rarer of two equally likely classes wins
    rare = decode(np.asarray([[0.5, 0.5, 0, 0]]), classes, 0, 0, 1.0, np.asarray([0.7, 0.1, 0.1, 0.1]))
    assert classes[int(rare.argmax())] == "R1B"
    assert simplex(3, 0.5).tolist() == [[0, 0, 1], [0, 0.5, 0.5], [0, 1, 0], [0.5, 0, 0.5], [0.5, 0.5, 0], [1, 0, 0]]


def test_the_choices_never_see_the_test_fold() -> None:
    sentences, labels = community_plots(300, seed=4)
    rng = np.random.default_rng(5)
    x, y = rng.uniform(0, 6, 300), rng.uniform(40, 46, 300)
    plots = Plots(np.arange(300).astype(str), sentences, labels.copy(), x, y)
    stack = HabitatStackConfig(logistic_c=[1.0, 10.0], tfidf_c=[10.0], weight_step=0.25)
    h = HabitatsConfig(folds=3, block_size=1.0, models=["stack"], stack=stack)
    folds, _ = assign_folds(plots, h)
    test = folds == 0
    fit, val = inner_split(plots, ~test, h)

    def choice(p: Plots) -> tuple[dict[str, float], dict[str, float]]:
        stack = train_models(p, p, fit, val, h, ["stack"]).classifiers["stack"]
        return stack.weights, stack.decoding

    shuffled = Plots(plots.ids, sentences, labels.copy(), x, y)
    shuffled.habitat[test] = rng.permutation(shuffled.habitat[test])[::-1]
    assert (shuffled.habitat[test] != labels[test]).any()
    assert choice(plots) == choice(shuffled)
