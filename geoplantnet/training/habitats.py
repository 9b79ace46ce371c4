"""Training the habitat models of ``geoplantnet habitats``: Pl@ntBERT (tokenizer, fill-mask pre-training, habitat
fine-tuning with and without it) and its peers (bag-of-species logistic regression, random forest, Jaccard nearest
plots), all on the same training plots, early-stopped on the same validation plots; the stack
(:mod:`geoplantnet.models.habitat_stack`) makes its choices on those validation plots and refits on both.

Pre-training is shared where that is legal: the corpus lists that belong to no labelled plot (:func:`shared_corpus`) are
in no fold's test set, so :func:`pretrain_shared` learns from them once, and every fold (and the final model)
continues from it on its own corpus (with its training plots) for ``train.continue_epochs``. Epochs are reported as
events on :data:`TOPIC` (:func:`epoch_events`) for the driver's progress bars.

The models, their training (torch, transformers, scikit-learn) are imported where they run: a bad plot table is
refused without them (tests/test_refusal_times.py).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from geoplantnet.core.config import ConfigError, HabitatsConfig
from geoplantnet.runtime.devices import use_worker_threads
from geoplantnet.samples.plots import Plots

if TYPE_CHECKING:
    from geoplantnet.models.habitat_peers import CooccurrenceFill
    from geoplantnet.models.plantbert import PlotModel
    from geoplantnet.training.plantbert import Epochs

BERT_MODELS = ("plantbert", "plantbert_scratch")
# in train_models' ``models``: the fill-mask model alone, without fine-tuning a classifier from it (the final models
# when the saved classifier is not Pl@ntBERT: its fill-mask model is still saved, for `habitats classify`)
FILL_MASK = "fill_mask"
TOPIC = "geoplantnet-habitats"  # the Dask event topic of training epochs (progress bars on the driver)
MIN_SHARED = 100  # fewer lists outside the labelled plots: every fold pre-trains from scratch on its own corpus


@dataclass
class HabitatData:
    """Labelled plots (codes cut to the level), the pre-training corpus, and what reading them noticed."""

    labelled: Plots
    corpus: Plots
    notes: list[str] = field(default_factory=list)
    names: dict[str, str] | None = None  # habitat code -> name (``habitats.names``)
    esy: np.ndarray | None = None  # EUNIS-ESy's code per labelled plot (``habitats.esy``; validation/habitat_esy.py)


def habitat_classes(labels: Sequence[str] | np.ndarray, h: HabitatsConfig) -> tuple[str, ...]:
    """The classes with at least ``habitats.min_plots`` plots, sorted."""
    count = Counter(labels)
    return tuple(sorted(c for c, n in count.items() if n >= h.min_plots))


def class_index(labels: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """Each label's index in ``classes`` (-1 for a class not kept)."""
    where = {c: i for i, c in enumerate(classes)}
    return np.asarray([where.get(c, -1) for c in labels], dtype="int64")


@dataclass
class TrainedModels:
    """What one training run made: the models by name, the fill-mask model, timings and histories."""

    classifiers: dict[str, Any]
    fill_mask: PlotModel | None
    baseline: CooccurrenceFill | None
    classes: tuple[str, ...]
    seconds: dict[str, float]
    history: dict[str, list[dict[str, float]]]


def epoch_events(task: str) -> Callable[[str], Epochs | None]:
    """``stage -> on_epoch``: each epoch's record sent as an event on :data:`TOPIC` (``task``, ``stage``, ``epoch``,
    ``epochs``, ``loss``, ``last``) from the Dask worker running it; nothing outside a worker."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return lambda stage: None

    def stage_events(stage: str) -> Epochs:
        def send(record: dict[str, Any]) -> None:
            keys = ("epoch", "epochs", "loss", "val_loss", "last")
            worker.log_event(TOPIC, {"task": task, "stage": stage, **{k: record[k] for k in keys if k in record}})

        return send

    return stage_events


def shared_corpus(data: HabitatData) -> Plots:
    """The corpus lists that belong to no labelled plot (by id): in no fold's test or validation set, so pre-training
    on them can be shared by every fold and the final model."""
    return data.corpus.subset(~np.isin(data.corpus.ids.astype(str), data.labelled.ids.astype(str)))


def pretrain_shared(data: HabitatData, h: HabitatsConfig, task: str = "shared") -> PlotModel | None:
    """The fill-mask model every fold continues from, learnt on :func:`shared_corpus` (early stopping on a seeded
    random tenth of it); None when Pl@ntBERT is not pre-trained or fewer than :data:`MIN_SHARED` lists are shared."""
    from geoplantnet.models.plantbert import build_tokenizer, encode_sentences
    from geoplantnet.training.plantbert import pretrain

    use_worker_threads()
    shared = shared_corpus(data)
    if "plantbert" not in h.models or h.train.pretrain_epochs == 0 or len(shared) < MIN_SHARED:
        return None
    tokenizer = build_tokenizer(sorted({t for s in shared.sentences for t in s}))
    ids, _ = encode_sentences(tokenizer, shared.sentences, h.model.max_species)
    held = np.random.default_rng(h.seed).random(len(ids)) < 0.1
    model, _ = pretrain(tokenizer, ids[~held], ids[held], h.model, h.train, on_epoch=epoch_events(task)("pre-train"))
    return model


def train_models(
    labelled: Plots,
    corpus: Plots,
    fit: np.ndarray,
    val: np.ndarray,
    h: HabitatsConfig,
    models: list[str],
    shared: PlotModel | None = None,
    task: str = "",
) -> TrainedModels:
    """Every model in ``models`` trained on ``labelled[fit]`` (+ ``corpus`` for pre-training), early-stopped on
    ``labelled[val]``. With ``shared`` (:func:`pretrain_shared`), the fill-mask model continues from it on the same
    corpus for ``train.continue_epochs`` at ``train.continue_lr``. ``task`` names the epoch events
    (:func:`epoch_events`)."""
    from geoplantnet.models.habitat_peers import PEERS, CooccurrenceFill, JaccardNeighbours
    from geoplantnet.models.plantbert import build_tokenizer, encode_sentences
    from geoplantnet.training.plantbert import finetune, pretrain

    use_worker_threads()  # torch on the worker's threads, not every core
    events = epoch_events(task or "models")
    classes = habitat_classes(labelled.habitat[fit], h)
    if not classes:
        raise ConfigError(f"no habitat has habitats.min_plots={h.min_plots} training plots")
    use = fit & np.isin(labelled.habitat, classes)
    seconds: dict[str, float] = {}
    history: dict[str, list[dict[str, float]]] = {}
    out: dict[str, Any] = {}
    fill = baseline = None
    if any(m in (*BERT_MODELS, FILL_MASK) for m in models):
        val_ids_set = set(labelled.ids[val].astype(str))
        pre = corpus.subset(~np.isin(corpus.ids.astype(str), list(val_ids_set)))
        tokenizer = build_tokenizer(sorted({t for s in pre.sentences for t in s}))
        mc, tc = h.model, h.train
        corpus_ids, _ = encode_sentences(tokenizer, pre.sentences, mc.max_species)
        val_sentences = [labelled.sentences[i] for i in np.flatnonzero(val)]
        val_ids, _ = encode_sentences(tokenizer, val_sentences, mc.max_species)
        fit_ids, _ = encode_sentences(tokenizer, [labelled.sentences[i] for i in np.flatnonzero(use)], mc.max_species)
        fit_y, val_y = class_index(labelled.habitat[use], classes), class_index(labelled.habitat[val], classes)
        if ("plantbert" in models or FILL_MASK in models) and tc.pretrain_epochs > 0:
            t0 = time.perf_counter()
            # continued on the whole fold corpus (its own plots alone: it forgets, fill-mask top-5 0.19 -> 0.10)
            epochs = tc.pretrain_epochs if shared is None else tc.continue_epochs
            cont = tc if shared is None else tc.model_copy(update={"pretrain_lr": tc.continue_lr})
            fill, history["fill_mask"] = pretrain(
                tokenizer, corpus_ids, val_ids, mc, cont, parent=shared, epochs=epochs, on_epoch=events("pre-train")
            )
            seconds["fill_mask"] = time.perf_counter() - t0
            baseline = CooccurrenceFill(pre.sentences)
        for name in (m for m in models if m in BERT_MODELS):
            parent = fill if name == "plantbert" else None
            t0 = time.perf_counter()
            out[name], history[name] = finetune(
                tokenizer, parent, fit_ids, fit_y, val_ids, val_y, classes, mc, tc, on_epoch=events(name)
            )
            seconds[name] = time.perf_counter() - t0
    for name in (m for m in models if m in PEERS):
        t0 = time.perf_counter()
        peer = JaccardNeighbours(classes, h.seed, h.knn) if name == "knn_jaccard" else PEERS[name](classes, h.seed)
        out[name] = peer.fit(
            [labelled.sentences[i] for i in np.flatnonzero(use)],
            labelled.habitat[use],
            [labelled.sentences[i] for i in np.flatnonzero(val)],
            labelled.habitat[val],
        )
        seconds[name] = time.perf_counter() - t0
    if "stack" in models:
        # The stack makes its choices on the validation plots itself, then refits on training + validation plots.
        from geoplantnet.models.habitat_stack import HabitatStack

        t0 = time.perf_counter()
        stack = HabitatStack(cfg=h.stack, min_plots=h.min_plots, seed=h.seed)
        out["stack"] = stack.fit(
            [labelled.sentences[i] for i in np.flatnonzero(fit)],
            labelled.habitat[fit],
            [labelled.sentences[i] for i in np.flatnonzero(val)],
            labelled.habitat[val],
        )
        seconds["stack"] = time.perf_counter() - t0
    return TrainedModels(out, fill, baseline, classes, seconds, history)
