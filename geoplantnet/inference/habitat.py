"""Habitats of predicted assemblages on a worker, in array operations, by a classifier of any kind.

One block at a time: the block's uint8 codes of every species, decoded; a pixel with no data in any species is no
data. Pl@ntBERT (:func:`classify_codes`): the others become sentences (:func:`geoplantnet.models.plantbert.
assemblage_ids`: the species above their saved thresholds, best first, or the top-K), the distinct sentences are
classified in batches (neighbouring pixels often share one). Any other kind of species-list classifier
(:func:`classify_sentences`): the same rule on species names. The map's own forest (:func:`classify_pixels`,
:mod:`geoplantnet.models.map_forest`): the decoded probabilities and, when it takes them, the tile's point predictors
(:class:`geoplantnet.inference.map_inputs.PixelPredictors`). The class probabilities give the ``habitat.zarr``
arrays (:class:`HabitatBlocks`).

:class:`HabitatClassifier` is what a habitat tile and a fused indicator tile ship to the workers: the classifier's
folder, kind and version, how the map's species reach it, the assemblage rule. Each worker process loads the
classifier once (:func:`cached_classifier`, the pinned worker cache). :class:`ClassifierFolder` is the folder read
and checked on the driver before anything else starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from geoplantnet.core.config import ConfigError, HabitatsConfig, redact
from geoplantnet.core.encoding import NODATA
from geoplantnet.core.errors import GeoplantnetError, InputError
from geoplantnet.inference.dense import decode, encode

# Pl@ntBERT (torch, transformers), distributed and the worker cache are imported where a classifier is read or a tile
# classified: a command refuses a bad species store without them (tests/test_refusal_times.py)
if TYPE_CHECKING:
    from geoplantnet.core.grid import Tile
    from geoplantnet.inference.map_inputs import PixelPredictors
    from geoplantnet.models.habitat_classifier import PlotClassifier
    from geoplantnet.models.map_forest import MapForest
    from geoplantnet.models.plantbert import PlotModel

NO_CLASS = -1  # habitat / top_k where a pixel has no data
# species.zarr's thresholds a sentence keeps species by (products.species_map.with_thresholds)
THRESHOLD = "threshold_max_tss"
BATCH = 1024  # sentences per classifier forward pass (inference: far larger than the training batch)
PLANTBERT, MAP_FOREST = "classifier", "map-forest"  # the kinds of classifier folders mapped by their own path


class HabitatMapError(GeoplantnetError):
    """A habitat map that cannot start (model and store do not fit) or a tile that failed (one line naming it)."""


@dataclass(frozen=True)
class AssemblageRule:
    """How a pixel's species become a sentence: ``top_species`` best species, or (None) those at or above
    ``thresholds`` (per species of the store); at most the model's ``max_species`` either way."""

    top_species: int | None
    thresholds: np.ndarray | None

    @classmethod
    def of(cls, top_species: int | None, thresholds: np.ndarray | None, store: str) -> AssemblageRule:
        """The rule of the ``habitats.map_species`` setting for a species store, refused (one line) when the store
        has no thresholds to apply."""
        if top_species is None and (thresholds is None or not np.isfinite(thresholds).any()):
            raise ConfigError(
                f"{store} has no species thresholds (its model was not calibrated by sdm): set habitats.map_species "
                "(e.g. --set habitats.map_species=10) to describe each pixel by its top species instead"
            )
        return cls(top_species, None if top_species is not None else thresholds)

    def describe(self) -> str:
        return f"top {self.top_species} species" if self.top_species else f"species at or above {THRESHOLD}"


@dataclass
class HabitatBlocks:
    """One tile's ``habitat.zarr`` arrays (see :mod:`geoplantnet.products.habitat_map`)."""

    habitat: np.ndarray  # (y, x) int16
    habitat_probability: np.ndarray  # (y, x) uint8
    top_k: np.ndarray  # (rank, y, x) int16
    top_k_probability: np.ndarray  # (rank, y, x) uint8

    def as_dict(self) -> dict[str, np.ndarray]:
        return {
            "habitat": self.habitat,
            "habitat_probability": self.habitat_probability,
            "top_k": self.top_k,
            "top_k_probability": self.top_k_probability,
        }


def ranks(n_classes: int, top_k: int) -> int:
    """Classes kept in ``top_k``: the setting, at most the model's classes."""
    return min(top_k, n_classes)


def _habitat_blocks(p: np.ndarray, valid: np.ndarray, k: int) -> HabitatBlocks:
    """The arrays of class probabilities ``p`` (pixels with data, classes) at the ``valid`` pixels (y, x)."""
    h, w = valid.shape
    habitat = np.full((h, w), NO_CLASS, np.int16)
    top = np.full((k, h, w), NO_CLASS, np.int16)
    top_p = np.zeros((k, h, w), np.float32)
    if valid.any():
        order = np.argsort(-p, axis=1, kind="stable")[:, :k]
        habitat[valid] = order[:, 0]
        top[:, valid] = order.T
        top_p[:, valid] = np.take_along_axis(p, order, axis=1).T
    top_codes = encode(top_p, valid)
    return HabitatBlocks(habitat, top_codes[0], top, top_codes)


def classify_codes(
    model: PlotModel,
    codes: np.ndarray,
    token_of: np.ndarray,
    rule: AssemblageRule,
    *,
    top_k: int,
    batch_size: int = 1024,
) -> HabitatBlocks:
    """Habitat arrays of a block of species codes (species, y, x) uint8; ``token_of``: the model's token of each
    species of the store (:func:`geoplantnet.models.plantbert.species_vocabulary_index`)."""
    from geoplantnet.models.plantbert import assemblage_ids

    k = ranks(len(model.classes), top_k)
    valid = ~(codes == NODATA).any(axis=0)  # a species without data leaves the assemblage unknown
    p = np.zeros((0, len(model.classes)), np.float32)
    if valid.any():
        prob = decode(codes[:, valid]).T  # (pixels with data, species)
        ids = assemblage_ids(prob, token_of, rule.thresholds, model.cfg.max_species, rule.top_species)
        # many pixels share a sentence (thresholded assemblages repeat): classify each distinct one once
        sentences, inverse = np.unique(ids, axis=0, return_inverse=True)
        p = model.predict_proba_ids(sentences, batch_size)[inverse.reshape(-1)]
    return _habitat_blocks(p, valid, k)


def classify_sentences(
    model: PlotClassifier,
    codes: np.ndarray,
    species: Sequence[str],
    known: np.ndarray,
    rule: AssemblageRule,
    max_species: int,
    *,
    top_k: int,
) -> HabitatBlocks:
    """Habitat arrays of species codes (species, y, x) by any kind that classifies species lists
    (:meth:`PlotClassifier.predict_proba`): each pixel's sentence built by the same rule as Pl@ntBERT's (``known``:
    the store's species the model knows; the others are left out), each distinct sentence classified once."""
    from geoplantnet.samples.plots import assemblage_order

    k = ranks(len(model.classes), top_k)
    valid = ~(codes == NODATA).any(axis=0)
    p = np.zeros((0, len(model.classes)), np.float32)
    if valid.any():
        prob = np.where(known[None, :], decode(codes[:, valid]).T, -np.inf)
        order, keep = assemblage_order(prob, rule.thresholds, max_species, rule.top_species)
        keep &= np.isfinite(np.take_along_axis(prob, order, axis=1))
        index = np.where(keep, order, -1)
        rows, inverse = np.unique(index, axis=0, return_inverse=True)
        names = np.asarray(species, dtype=object)
        sentences = [[str(s) for s in names[r[r >= 0]]] for r in rows]
        p = np.asarray(model.predict_proba(sentences), np.float32)[inverse.reshape(-1)]
    return _habitat_blocks(p, valid, k)


def classify_pixels(
    model: MapForest,
    codes: np.ndarray,
    columns: np.ndarray,
    predictors: np.ndarray | None,
    has_data: np.ndarray | None,
    *,
    top_k: int,
) -> HabitatBlocks:
    """Habitat arrays of a map forest (:mod:`geoplantnet.models.map_forest`) from species codes (species, y, x)
    (``columns``: the store's species of each of the model's assemblage columns) and, when it takes them, the
    pixels' point predictors (y * x, features) with their no-data rule ``has_data`` (y * x); a pixel without data in
    either is no data."""
    _, h, w = codes.shape
    k = ranks(len(model.classes), top_k)
    valid = ~(codes == NODATA).any(axis=0)
    if has_data is not None:
        valid &= has_data.reshape(h, w)
    p = np.zeros((0, len(model.classes)), np.float32)
    if valid.any():
        A = decode(codes[columns][:, valid]).T if model.needs_assemblage else None
        X = predictors.reshape(h, w, -1)[valid] if predictors is not None else None
        p = model.predict_rows(A, X)
    return _habitat_blocks(p, valid, k)


@dataclass(frozen=True)
class HabitatModelRef:
    """A habitat classifier folder, the version (content hash of its weights) the driver read there, and its kind."""

    folder: str
    version: str
    kind: str = PLANTBERT


def cached_classifier(ref: HabitatModelRef, device: str) -> tuple[Any, int]:
    """The classifier of ``ref`` kept by this worker process, and the loads it has done; a folder whose model changed
    since the driver read it is refused rather than mixed into a map."""
    from geoplantnet.runtime.devices import resolve_device
    from geoplantnet.runtime.worker_cache import pinned

    dev = resolve_device(device)

    def load() -> tuple[Any, str]:
        model = read_classifier(ref.folder, ref.kind, str(dev))
        return model, model.version

    return pinned("habitat-model", ref.folder, ref.version, str(dev), load, "habitat model")


def read_classifier(folder: str, kind: str, device: str = "cpu") -> Any:
    """The classifier in ``folder``: Pl@ntBERT as it always loaded, any other kind through its registered loader."""
    if kind == PLANTBERT:
        from geoplantnet.models.plantbert import PlotModel

        return PlotModel.load(folder, device)  # PlotModelError (one line) when the folder is not a Pl@ntBERT model
    from geoplantnet.models.habitat_classifier import load_classifier

    return load_classifier(folder, device)


@dataclass(frozen=True)
class HabitatClassifier:
    """How species codes (and, for a map forest, the pixels' point predictors) become habitat arrays: the classifier,
    how the map's species reach it (Pl@ntBERT's token of each species, a sentence model's known species, a map
    forest's columns), the assemblage rule; what a habitat tile and a fused indicator tile share (small: the
    per-species arrays are S values)."""

    model: HabitatModelRef
    token_of: np.ndarray  # Pl@ntBERT: the model's token of each species of the map; others: 1 where known, else 0
    rule: AssemblageRule
    assemblage: str  # the rule in words, with the model's max_species
    top_k: int
    batch_size: int
    device: str
    species: tuple[str, ...] = ()  # the map's species (a sentence model's words)
    max_species: int = 0  # a sentence model's longest sentence
    columns: np.ndarray | None = None  # a map forest's assemblage columns as the map's species indices
    predictors: PixelPredictors | None = None  # a map forest's point predictors, read per tile
    unknown: int = 0  # the map's species the classifier does not know (left out of its inputs)

    @property
    def version(self) -> str:
        prefix = "plantbert-classifier" if self.model.kind == PLANTBERT else self.model.kind
        return f"{prefix}/{self.model.version}"

    def classify(self, codes: np.ndarray, tile: Tile | None = None) -> tuple[HabitatBlocks, int]:
        """The habitat arrays of species codes (species, y, x) uint8 (of ``tile``, whose point predictors a map forest
        reads), and the loads of this worker's classifier."""
        model, loads = cached_classifier(self.model, self.device)
        if self.model.kind == PLANTBERT:
            blocks = classify_codes(
                model, codes, self.token_of, self.rule, top_k=self.top_k, batch_size=self.batch_size
            )
        elif self.model.kind == MAP_FOREST:
            rows = has = None
            if self.predictors is not None:
                if tile is None:
                    raise HabitatMapError("a map forest on point predictors classifies whole map tiles")
                rows = self.predictors.tile(tile)
                has = self.predictors.has_data(rows)
            cols = self.columns if self.columns is not None else np.zeros(0, int)
            blocks = classify_pixels(model, codes, cols, rows, has, top_k=self.top_k)
        else:
            known = self.token_of.astype(bool)
            blocks = classify_sentences(
                model, codes, self.species, known, self.rule, self.max_species, top_k=self.top_k
            )
        return blocks, loads


@dataclass(frozen=True)
class ClassifierFolder:
    """A habitat classifier folder read and checked on the driver (a classifier of any kind, not a fill-mask model):
    read before a job's inputs are made or a cluster starts, so a wrong folder fails first."""

    folder: str
    model: Any  # a PlotClassifier (geoplantnet.models.habitat_classifier)
    kind: str = PLANTBERT

    @classmethod
    def read(cls, folder: str) -> ClassifierFolder:
        """Load ``folder``; one-line errors when it is not a habitat classifier."""
        from geoplantnet.models.habitat_classifier import ClassifierFolderError, read_meta

        try:
            kind = str(read_meta(folder).get("kind", PLANTBERT))
        except ClassifierFolderError:
            kind = PLANTBERT  # Pl@ntBERT's loader says what is wrong with the folder, as it always did
        kind = PLANTBERT if kind == "fill-mask" else kind
        model = read_classifier(folder, kind)
        if not model.classes:
            where = redact({"b": folder})["b"]
            raise InputError(f"{where}: a fill-mask model, not a habitat classifier (run geoplantnet habitats)")
        return cls(folder, model, kind)

    @classmethod
    def of(cls, classifier: str | ClassifierFolder) -> ClassifierFolder:
        """``classifier`` itself, or the folder at that URL read."""
        return classifier if isinstance(classifier, ClassifierFolder) else cls.read(classifier)


def plan_classifier(
    folder: str | ClassifierFolder,
    species: Sequence[str],
    thresholds: np.ndarray | None,
    species_source: str,
    *,
    habitats: HabitatsConfig,
    device: str,
    predictors: PixelPredictors | None = None,
) -> tuple[HabitatClassifier, Any]:
    """Load the habitat classifier (unless given read) and check it fits the map's ``species`` (named
    ``species_source`` in messages) and the ``habitats.map_species`` rule (``thresholds``: the map's
    ``threshold_max_tss``, None without); one-line refusals. ``device``: where workers run it (``map.device``);
    ``predictors``: the pixels' point predictors, for a map forest that takes them (None where a run has none)."""
    read = ClassifierFolder.of(folder)
    model_folder, model, kind = read.folder, read.model, read.kind
    where = redact({"b": model_folder})["b"]
    ref = HabitatModelRef(model_folder, model.version, kind)
    common = {"top_k": habitats.top_k, "batch_size": BATCH, "device": device}
    if kind == MAP_FOREST:
        return _plan_forest(model, ref, species, species_source, where, predictors, common), model
    if kind == PLANTBERT:
        from geoplantnet.models.plantbert import UNK, species_vocabulary_index

        token_of = species_vocabulary_index(model.tokenizer, species)
        known, max_species = token_of != UNK, model.cfg.max_species
    else:
        vocabulary = set(getattr(model, "species", ()) or species)
        known = np.asarray([s in vocabulary for s in species])
        token_of, max_species = known.astype(np.int64), habitats.model.max_species
    if not known.any():
        raise HabitatMapError(
            f"none of the {len(species)} species of {species_source} is in the vocabulary of the habitat model "
            f"{where} (species ids differ: train it on plots naming the same species)"
        )
    rule = AssemblageRule.of(habitats.map_species, thresholds, species_source)
    classifier = HabitatClassifier(
        model=ref,
        token_of=token_of,
        rule=rule,
        assemblage=rule.describe() + f" max_species={max_species}",
        species=tuple(str(s) for s in species) if kind != PLANTBERT else (),
        max_species=max_species,
        unknown=int((~known).sum()),
        **common,
    )
    return classifier, model


def _plan_forest(
    model: MapForest,
    ref: HabitatModelRef,
    species: Sequence[str],
    species_source: str,
    where: str,
    predictors: PixelPredictors | None,
    common: dict[str, Any],
) -> HabitatClassifier:
    """A map forest's plan: its assemblage columns found among the map's species, its point predictors those the
    run reads (one-line refusals)."""
    index = {str(s): i for i, s in enumerate(species)}
    missing = [s for s in model.species if s not in index]
    if missing:
        raise HabitatMapError(
            f"the habitat map model {where} was fitted on {len(missing)} species that {species_source} lacks "
            f"(e.g. {missing[0]!r}): train it on this species map's model"
        )
    if model.needs_predictors:
        if predictors is None:
            raise HabitatMapError(
                f"the habitat map model {where} takes the pixels' point predictors: map it with habitat-map on the "
                "run's inputs (it cannot classify species alone)"
            )
        if list(model.features) != predictors.features:
            raise HabitatMapError(
                f"the habitat map model {where} was fitted on the predictors {list(model.features)[:4]}..., the run "
                f"reads {predictors.features[:4]}...: the same species model's inputs are needed"
            )
    n = len(species)
    return HabitatClassifier(
        model=ref,
        token_of=np.zeros(n, np.int64),
        rule=AssemblageRule(None, None),
        assemblage=f"map forest on {model.inputs}: {len(model.species)} species' probabilities, "
        f"{len(model.features)} point predictors",
        columns=np.asarray([index[s] for s in model.species], np.int64),
        predictors=predictors if model.needs_predictors else None,
        unknown=n - len(model.species) if model.needs_assemblage else 0,
        **common,
    )
