"""How ``geoplantnet habitats`` trains Pl@ntBERT on folds: the pre-training shared by every fold never sees a
labelled plot (so no fold's test surveys), a fold's fill-mask model continues from it without the fold's test plots,
and every epoch reaches the driver as an event (progress bars)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from distributed import Client, LocalCluster

from geoplantnet.core.config import HabitatsConfig, PlotModelConfig, PlotTrainConfig
from geoplantnet.models.plantbert import build_tokenizer
from geoplantnet.runs.progress import EpochBars
from geoplantnet.samples.plots import Plots
from geoplantnet.training.habitats import TOPIC, HabitatData, pretrain_shared, shared_corpus
from geoplantnet.training.plantbert import carry_over, submit
from geoplantnet.validation.habitat_folds import assign_folds, run_fold

TINY = PlotModelConfig(hidden=32, layers=1, heads=2, intermediate=64, max_species=12, dropout=0.0)
FAST = PlotTrainConfig(pretrain_epochs=3, continue_epochs=2, finetune_epochs=2, batch_size=32, patience=5)


def _plots(n: int, prefix: str, seed: int, labelled: bool, marker: str = "") -> Plots:
    """Community plots (the habitat is the community); ``marker`` adds a species of these plots only."""
    rng = np.random.default_rng(seed)
    community = rng.integers(4, size=n)
    sentences = [[f"Genus{c} species{j}" for j in sorted(rng.choice(8, 4, replace=False))] for c in community]
    if marker:
        sentences = [[*s, f"{marker}{i}"] for i, s in enumerate(sentences)]
    return Plots(
        ids=np.asarray([f"{prefix}{i}" for i in range(n)], dtype=object),
        sentences=sentences,
        habitat=np.asarray([f"R{c + 1}A" if labelled else "" for c in community], dtype=object),
        x=rng.uniform(0, 4, n),
        y=rng.uniform(40, 44, n),
    )


def _data() -> HabitatData:
    """Labelled surveys (each with a species of its own) and unlabelled lists, some of which are copies of labelled
    surveys under the same id, as GLC24's solution file holds its labelled surveys."""
    labelled = _plots(160, "s", 1, True, marker="Only labelled ")
    copies = labelled.subset(np.arange(0, 160, 4))
    copies.habitat = np.full(len(copies), "", dtype=object)
    corpus = Plots.concat([labelled, _plots(240, "u", 2, False), copies])
    _, first = np.unique(corpus.ids.astype(str), return_index=True)
    return HabitatData(labelled=labelled, corpus=corpus.subset(np.sort(first)))


def _config(**extra: object) -> HabitatsConfig:
    return HabitatsConfig(folds=2, block_size=2.0, models=["plantbert"], model=TINY, train=FAST, **extra)


def test_the_shared_pretraining_never_sees_a_test_folds_surveys() -> None:
    data, h = _data(), _config()
    shared = shared_corpus(data)
    assert len(shared) == 240 and not set(shared.ids) & set(data.labelled.ids)
    folds, _ = assign_folds(data.labelled, h)
    for k in range(h.folds):
        assert not set(shared.ids) & set(data.labelled.ids[folds == k])
    model = pretrain_shared(data, h)
    assert model is not None
    # no species of a labelled survey only (each has one) is in the shared model's vocabulary
    assert not [t for t in model.tokenizer.get_vocab() if t.startswith("Only")]
    # a fold continues from it: its own training surveys' species join, its test surveys' never do
    fold = run_fold(data, folds, 0, h, model)
    assert fold["fill_mask"]["epochs"] == FAST.continue_epochs
    assert fold["rows"][0]["test_species_unknown"] > 0.15  # the test plots' own species are [UNK] (1 of 5 tokens)


def test_continued_pretraining_keeps_each_species_embedding_by_token() -> None:
    data, h = _data(), _config()
    parent = pretrain_shared(data, h)
    assert parent is not None
    words = sorted(t for t in parent.tokenizer.get_vocab() if t.startswith("Genus"))
    tokenizer = build_tokenizer([*words[1:], "Another species"])  # one species gone, one new: ids shift
    child = carry_over(parent, tokenizer, TINY)
    old, new = parent.tokenizer.get_vocab(), tokenizer.get_vocab()
    parent_emb = parent.model.bert.embeddings.word_embeddings.weight
    child_emb = child.bert.embeddings.word_embeddings.weight
    for word in words[1:]:
        assert torch.equal(child_emb[new[word]], parent_emb[old[word]].cpu())
    assert child.cls.predictions.decoder.weight is child_emb  # still tied


def test_training_epochs_reach_the_driver_as_events() -> None:
    data, h = _data(), _config()
    folds, _ = assign_folds(data.labelled, h)
    events: list[dict] = []
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
        EpochBars(client, TOPIC, progress=True, sink=events.append),
    ):
        shared = submit(client, pretrain_shared, data, h, key="test-shared")
        fold = submit(client, run_fold, data, folds, 1, h, shared, key="test-fold")
        fold.result(timeout=120)
        deadline = time.monotonic() + 10  # events travel through the scheduler: a bounded wait
        while time.monotonic() < deadline and not any(
            e["task"] == "fold 1" and e["stage"] == "plantbert" and e["last"] for e in events
        ):
            time.sleep(0.1)
    stages = {(e["task"], e["stage"]) for e in events}
    assert {("shared", "pre-train"), ("fold 1", "pre-train"), ("fold 1", "plantbert")} <= stages
    shared_epochs = [e for e in events if e["task"] == "shared"]
    assert [e["epoch"] for e in shared_epochs] == list(range(FAST.pretrain_epochs))
    assert shared_epochs[-1]["last"] and all(e["epochs"] == FAST.pretrain_epochs for e in shared_epochs)
    assert all(np.isfinite(e["loss"]) for e in events)


@pytest.mark.parametrize("unlabelled", [0, 40])
def test_without_enough_lists_of_their_own_folds_pretrain_from_scratch(unlabelled: int) -> None:
    labelled = _plots(160, "s", 1, True)
    corpus = Plots.concat([labelled, _plots(unlabelled, "u", 2, False)])
    assert pretrain_shared(HabitatData(labelled=labelled, corpus=corpus), _config()) is None


def test_bars_draw_on_a_terminal_and_stay_quiet_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """One bar helper for every command: drawn on a terminal, silent on a pipe or a log file, silent with -q."""
    import io
    import sys

    from geoplantnet.runs.progress import bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, progress, drawn in ((Terminal(), True, True), (io.StringIO(), True, False), (Terminal(), False, False)):
        monkeypatch.setattr(sys, "stderr", stream)
        b = bar(9, progress=progress, desc="tiles")
        b.update(9)
        b.close()
        assert ("9/9" in stream.getvalue()) is drawn


def test_the_final_stack_keeps_a_fill_mask_model_without_fine_tuning_a_pl_ntbert_it_throws_away() -> None:
    from geoplantnet.validation.habitat_folds import final_models

    data = _data()
    h = _config(classifier="stack").model_copy(update={"models": ["plantbert", "stack"]})
    fill, classifier = final_models(data, h, pretrain_shared(data, h))
    assert fill is not None and fill.kind == "fill-mask" and classifier.kind == "stack"
    from geoplantnet.training.habitats import FILL_MASK, train_models
    from geoplantnet.validation.habitat_folds import inner_split

    fit, val = inner_split(data.labelled, np.ones(len(data.labelled), dtype=bool), h)
    trained = train_models(data.labelled, data.corpus, fit, val, h, ["stack", FILL_MASK])
    assert trained.fill_mask is not None
    assert set(trained.classifiers) == {"stack"} and "plantbert" not in trained.seconds
