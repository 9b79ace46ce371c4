"""Habitat maps: each pixel's predicted species assemblage (``species.zarr``) classified by Pl@ntBERT.

One tile at a time, all in array operations: the tile's uint8 codes of every species (one read), decoded; a pixel
with no data in any species is no data; the others become sentences
(:func:`geoplantnet.models.plantbert.assemblage_ids`: the species above their saved thresholds, best first, or the
top-K), the distinct sentences are classified in batches (neighbouring pixels often share one), and the class
probabilities give the ``habitat.zarr`` variables:

- ``habitat`` (y, x) int16: index of the most probable class in ``habitat_code``; -1 = no data
- ``habitat_probability`` (y, x) uint8: its probability, coded like species probabilities (255 = no data)
- ``top_k`` (rank, y, x) int16: the classes by decreasing probability; -1 = no data
- ``top_k_probability`` (rank, y, x) uint8: their probabilities (what conformal habitat sets are made of)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
import zarr

from geoplantnet.core.config import ConfigError
from geoplantnet.core.encoding import NODATA, SCALE
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.inference.dense import decode, encode
from geoplantnet.storage.store import zarr_store
from geoplantnet.storage.tiles import probability_attrs, tiled_variable

if TYPE_CHECKING:
    from geoplantnet.models.plantbert import PlotModel

NO_CLASS = -1  # habitat / top_k where a pixel has no data
THRESHOLD = "threshold_max_tss"  # species.zarr's thresholds a sentence keeps species by (jobs.mapping.with_thresholds)


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
    """One tile's ``habitat.zarr`` arrays (see the module docstring)."""

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


def read_species_tile(
    url: str, tile: Tile, storage_options: Mapping[str, Any] | None = None, slot: int | None = None
) -> np.ndarray:
    """The uint8 codes (species, y, x) of every species over ``tile``: one read of the tile's shard (of the year in
    ``slot`` of a series)."""
    arr = zarr.open_group(zarr_store(url, storage_options), mode="r")["probability"]
    ys, xs = tile.slices
    return np.asarray(arr[:, ys, xs] if slot is None else arr[slot, :, ys, xs])


def habitat_template(
    grid: Grid, classes: Sequence[str], tile: int, top_k: int, names: Sequence[str] | None = None
) -> tuple[xr.Dataset, dict[str, dict[str, Any]]]:
    """The lazy, never computed ``habitat.zarr`` layout on ``grid`` (one chunk per tile) and its encoding."""
    k = ranks(len(classes), top_k)
    codes = " ".join(classes)
    flags = list(range(len(classes)))
    shape = (grid.height, grid.width)
    habitat, habitat_enc = tiled_variable(
        ("y", "x"),
        shape,
        dtype="int16",
        fill=NO_CLASS,
        chunks=(tile, tile),
        attrs={
            "long_name": "predicted habitat: index of the most probable class in habitat_code",
            "flag_values": flags,
            "flag_meanings": codes,
            "comment": f"{NO_CLASS} = no data (a species of the assemblage had no data, or not yet computed)",
        },
    )
    prob, prob_enc = tiled_variable(
        ("y", "x"),
        shape,
        dtype="uint8",
        fill=NODATA,
        chunks=(tile, tile),
        scale=SCALE,
        attrs=probability_attrs("probability of the predicted habitat (classifier softmax)"),
    )
    top, top_enc = tiled_variable(
        ("rank", "y", "x"),
        (k, *shape),
        dtype="int16",
        fill=NO_CLASS,
        chunks=(k, tile, tile),
        attrs={
            "long_name": "habitat classes by decreasing probability (index in habitat_code)",
            "flag_values": flags,
            "flag_meanings": codes,
            "comment": f"rank 0 = habitat; {NO_CLASS} = no data",
        },
    )
    top_p, top_p_enc = tiled_variable(
        ("rank", "y", "x"),
        (k, *shape),
        dtype="uint8",
        fill=NODATA,
        chunks=(k, tile, tile),
        scale=SCALE,
        attrs=probability_attrs("probability of each class of top_k (classifier softmax)"),
    )
    coords: dict[str, Any] = {
        **grid.coords(),
        "rank": ("rank", np.arange(k, dtype="int16"), {"long_name": "rank of the class (0 = most probable)"}),
        # the class dimension is not called "habitat": that name is the data variable's (as truth/habitat.zarr)
        "habitat_code": ("habitat_class", np.asarray(classes, dtype=object), {"long_name": "EUNIS habitat code"}),
    }
    if names is not None:
        coords["habitat_name"] = ("habitat_class", np.asarray(names, dtype=object))
    ds = xr.Dataset(
        {"habitat": habitat, "habitat_probability": prob, "top_k": top, "top_k_probability": top_p}, coords=coords
    )
    encoding = {"habitat": habitat_enc, "habitat_probability": prob_enc, "top_k": top_enc}
    return ds, {**encoding, "top_k_probability": top_p_enc}
