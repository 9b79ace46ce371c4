"""Habitats of predicted assemblages: Pl@ntBERT over each pixel's species, on a worker, in array operations.

One block at a time: the block's uint8 codes of every species, decoded; a pixel with no data in any species is no
data; the others become sentences (:func:`geoplantnet.models.plantbert.assemblage_ids`: the species above their saved
thresholds, best first, or the top-K), the distinct sentences are classified in batches (neighbouring pixels often
share one), and the class probabilities give the ``habitat.zarr`` arrays (:class:`HabitatBlocks`).

:class:`HabitatClassifier` is what a habitat tile and a fused indicator tile ship to the workers: the classifier's
folder and version, each species' token, the assemblage rule. Each worker process loads the classifier once
(:func:`cached_classifier`, the pinned worker cache). :class:`ClassifierFolder` is the folder read and checked on the
driver before anything else starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from geoplantnet.core.config import ConfigError, HabitatsConfig, redact
from geoplantnet.core.encoding import NODATA
from geoplantnet.core.errors import GeoplantnetError, InputError
from geoplantnet.inference.dense import decode, encode

# Pl@ntBERT (torch, transformers), distributed and the worker cache are imported where a classifier is read or a tile
# classified: a command refuses a bad species store without them (tests/test_refusal_times.py)
if TYPE_CHECKING:
    from geoplantnet.models.plantbert import PlotModel

NO_CLASS = -1  # habitat / top_k where a pixel has no data
# species.zarr's thresholds a sentence keeps species by (products.species_map.with_thresholds)
THRESHOLD = "threshold_max_tss"
BATCH = 1024  # sentences per classifier forward pass (inference: far larger than the training batch)


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

    _, h, w = codes.shape
    k = ranks(len(model.classes), top_k)
    valid = ~(codes == NODATA).any(axis=0)  # a species without data leaves the assemblage unknown
    habitat = np.full((h, w), NO_CLASS, np.int16)
    top = np.full((k, h, w), NO_CLASS, np.int16)
    top_p = np.zeros((k, h, w), np.float32)
    if valid.any():
        prob = decode(codes[:, valid]).T  # (pixels with data, species)
        ids = assemblage_ids(prob, token_of, rule.thresholds, model.cfg.max_species, rule.top_species)
        # many pixels share a sentence (thresholded assemblages repeat): classify each distinct one once
        sentences, inverse = np.unique(ids, axis=0, return_inverse=True)
        p = model.predict_proba_ids(sentences, batch_size)[inverse.reshape(-1)]
        order = np.argsort(-p, axis=1, kind="stable")[:, :k]
        habitat[valid] = order[:, 0]
        top[:, valid] = order.T
        top_p[:, valid] = np.take_along_axis(p, order, axis=1).T
    top_codes = encode(top_p, valid)
    return HabitatBlocks(habitat, top_codes[0], top, top_codes)


@dataclass(frozen=True)
class HabitatModelRef:
    """A habitat classifier folder and the version (content hash of its weights) the driver read there."""

    folder: str
    version: str


def cached_classifier(ref: HabitatModelRef, device: str) -> tuple[PlotModel, int]:
    """The classifier of ``ref`` kept by this worker process, and the loads it has done; a folder whose model changed
    since the driver read it is refused rather than mixed into a map."""
    from geoplantnet.models.plantbert import PlotModel
    from geoplantnet.runtime.devices import resolve_device
    from geoplantnet.runtime.worker_cache import pinned

    dev = resolve_device(device)

    def load() -> tuple[PlotModel, str]:
        model = PlotModel.load(ref.folder, dev)
        return model, model.version

    return pinned("habitat-model", ref.folder, ref.version, str(dev), load, "habitat model")


@dataclass(frozen=True)
class HabitatClassifier:
    """How species codes become habitat arrays: the classifier, the token of each species of the map, the
    assemblage rule; what a habitat tile and a fused indicator tile share (small: the per-species arrays are S
    values)."""

    model: HabitatModelRef
    token_of: np.ndarray  # the model's token of each species of the map
    rule: AssemblageRule
    assemblage: str  # the rule in words, with the model's max_species
    top_k: int
    batch_size: int
    device: str

    @property
    def version(self) -> str:
        return f"plantbert-classifier/{self.model.version}"

    def classify(self, codes: np.ndarray) -> tuple[HabitatBlocks, int]:
        """The habitat arrays of species codes (species, y, x) uint8, and the loads of this worker's classifier."""
        model, loads = cached_classifier(self.model, self.device)
        blocks = classify_codes(model, codes, self.token_of, self.rule, top_k=self.top_k, batch_size=self.batch_size)
        return blocks, loads


@dataclass(frozen=True)
class ClassifierFolder:
    """A habitat classifier folder read and checked on the driver (a Pl@ntBERT classifier, not a fill-mask model):
    read before a job's inputs are made or a cluster starts, so a wrong folder fails first."""

    folder: str
    model: PlotModel

    @classmethod
    def read(cls, folder: str) -> ClassifierFolder:
        """Load ``folder``; one-line errors when it is not a habitat classifier."""
        from geoplantnet.models.plantbert import PlotModel

        model = PlotModel.load(folder)  # PlotModelError (one line) when the folder is not a Pl@ntBERT model
        if not model.classes:
            where = redact({"b": folder})["b"]
            raise InputError(f"{where}: a fill-mask model, not a habitat classifier (run geoplantnet habitats)")
        return cls(folder, model)

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
) -> tuple[HabitatClassifier, PlotModel]:
    """Load the habitat classifier (unless given read) and check it fits the map's ``species`` (named
    ``species_source`` in messages) and the ``habitats.map_species`` rule (``thresholds``: the map's
    ``threshold_max_tss``, None without); one-line refusals. ``device``: where workers run it (``map.device``)."""
    from geoplantnet.models.plantbert import UNK, species_vocabulary_index

    read = ClassifierFolder.of(folder)
    model_folder, model = read.folder, read.model
    where = redact({"b": model_folder})["b"]
    token_of = species_vocabulary_index(model.tokenizer, species)
    if (token_of == UNK).all():
        raise HabitatMapError(
            f"none of the {len(species)} species of {species_source} is in the vocabulary of the habitat model "
            f"{where} (species ids differ: train it on plots naming the same species)"
        )
    rule = AssemblageRule.of(habitats.map_species, thresholds, species_source)
    classifier = HabitatClassifier(
        model=HabitatModelRef(model_folder, model.version),
        token_of=token_of,
        rule=rule,
        assemblage=rule.describe() + f" max_species={model.cfg.max_species}",
        top_k=habitats.top_k,
        batch_size=BATCH,
        device=device,
    )
    return classifier, model
