"""Selecting species by id or scientific name, with one clear error for a label that is not there.

:func:`index_species` gives the ``species`` dimension coordinate (stable ids) and the ``species_name`` coordinate
(scientific names, along ``species``) a :class:`SpeciesIndex` each, so that in a notebook::

    ds = index_species(ds)
    ds.probability.sel(species="sp0001")                     # by id, as before
    ds.probability.sel(species_name="Quercus robur")         # by name
    ds.probability.sel(species_name="Quercus robr")
    # UnknownSpeciesError: unknown species 'Quercus robr' (by name); close matches: 'Quercus robur', 'Quercus rubra'

Close matches are looked up case-insensitively among both ids and names; a match of the other kind is written as the
selection to use (``species_name='Quercus robur'`` when an id was asked for). Slices and boolean masks select as with
xarray's own index. ``method=`` / ``tolerance=`` (nearest-neighbour lookups) mean nothing for string labels and are
refused with a :class:`SpeciesSelectionError`.

A scientific name shared by several ids selects all of them (the ``species`` dimension is kept, with one entry per
id); a list of names selects each name's ids in the order asked.
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Mapping
from typing import Any, TypeVar

import numpy as np
import xarray as xr
from xarray.core.indexes import PandasIndex, normalize_label
from xarray.core.indexing import IndexSelResult
from xarray.core.utils import is_dict_like

from geoplantnet.core.errors import InputError

SPECIES = "species"
SPECIES_NAME = "species_name"
MAX_MATCHES = 5  # close matches named per unknown label
MAX_SHOWN = 5  # unknown labels named in one message

T = TypeVar("T", xr.Dataset, xr.DataArray)


class SpeciesSelectionError(InputError):
    """A species selection that cannot be made (nearest-neighbour options, vectorised selection of shared names)."""


class UnknownSpeciesError(SpeciesSelectionError, KeyError):
    """Species id(s) or name(s) not in the store; the message names close matches.

    A ``KeyError`` too, so code catching xarray's own missing-label error keeps working.
    """

    def __str__(self) -> str:
        # KeyError.__str__ would print repr(message): quoted, with escaped inner quotes
        return str(self.args[0]) if self.args else ""


def _show(value: Any) -> str:
    return repr(str(value)) if isinstance(value, str) else repr(value)


class SpeciesIndex(PandasIndex):
    """A :class:`~xarray.indexes.PandasIndex` over species ids or names whose ``sel`` explains a missing label.

    ``others`` (option of :meth:`~xarray.Dataset.set_xindex`) holds the companion labels, position by position (the
    names for the id index, the ids for the name index) and ``others_name`` their coordinate; they serve only to
    suggest close matches and are dropped, never wrong, where xarray rebuilds the index (concat, join).
    """

    __slots__ = ("_candidates", "others", "others_name")

    def __init__(
        self,
        array: Any,
        dim: Hashable,
        coord_dtype: Any = None,
        *,
        fastpath: bool = False,
        others: Any = None,
        others_name: Hashable | None = None,
    ):
        super().__init__(array, dim, coord_dtype, fastpath=fastpath)
        self.others: np.ndarray | None = None
        self.others_name: Hashable | None = None
        self._candidates: dict[str, list[str]] | None = None
        self._set_others(others, others_name)

    def _set_others(self, others: Any, others_name: Hashable | None) -> None:
        if others is None or others_name is None:
            return
        values = np.asarray(others, dtype=object)
        if values.ndim == 1 and len(values) == len(self.index):
            self.others, self.others_name = values, others_name

    @classmethod
    def from_variables(cls, variables: Mapping[Any, xr.Variable], *, options: Mapping[str, Any]) -> SpeciesIndex:
        obj = super().from_variables(variables, options=options)
        assert isinstance(obj, SpeciesIndex)
        obj._set_others(options.get("others"), options.get("others_name"))
        return obj

    # --- keep the companion labels in step with the index; xarray builds every new index through these ---

    def _derived(self, new: Any, others: np.ndarray | None) -> Any:
        if isinstance(new, SpeciesIndex) and new is not self:
            new._set_others(others, self.others_name)
        return new

    def isel(self, indexers: Mapping[Any, Any]) -> SpeciesIndex | None:
        new = super().isel(indexers)
        if new is None or new is self or self.others is None:
            return new
        indexer = indexers[self.dim]
        if isinstance(indexer, xr.Variable):
            indexer = indexer.data
        try:
            others = self.others[indexer if isinstance(indexer, slice) else np.asarray(indexer)]
        except (IndexError, TypeError, ValueError):
            others = None
        return self._derived(new, others)

    def __getitem__(self, indexer: Any) -> SpeciesIndex:
        new = super().__getitem__(indexer)
        return self._derived(new, None if self.others is None else self.others[indexer])

    def roll(self, shifts: Mapping[Any, int]) -> SpeciesIndex:
        new = super().roll(shifts)
        others = None
        if self.others is not None:
            others = np.roll(self.others, shifts[self.dim] % (len(self.others) or 1))
        return self._derived(new, others)

    def rename(self, name_dict: Mapping[Any, Hashable], dims_dict: Mapping[Any, Hashable]) -> SpeciesIndex:
        new = super().rename(name_dict, dims_dict)
        if new is not self and isinstance(new, SpeciesIndex) and self.others is not None:
            new._set_others(self.others, name_dict.get(self.others_name, self.others_name))
        return new

    def _copy(self, deep: bool = True, memo: dict[int, Any] | None = None) -> SpeciesIndex:
        new = super()._copy(deep=deep, memo=memo)
        return self._derived(new, None if self.others is None else self.others.copy())

    def __repr__(self) -> str:
        return f"SpeciesIndex({self.index!r})"

    # --- selection ---

    def sel(self, labels: dict[Any, Any], method: Any = None, tolerance: Any = None) -> IndexSelResult:
        coord_name, label = next(iter(labels.items()))
        if method is not None or tolerance is not None:
            option = f"method={method!r}" if method is not None else f"tolerance={tolerance!r}"
            raise SpeciesSelectionError(
                f"{option} cannot select {coord_name!r}: species are selected by exact id or name; select them in "
                f"a .sel() of their own, e.g. .sel({coord_name}=...).sel(x=..., y=..., {option})"
            )
        if isinstance(label, slice) or is_dict_like(label):
            return super().sel(labels)
        values = normalize_label(label, dtype=self.coord_dtype)
        if values.dtype.kind == "b":
            return super().sel(labels)
        asked = list(dict.fromkeys(np.ravel(values).tolist()))
        missing = [v for v in asked if not _contains(self.index, v)]
        if missing:
            raise UnknownSpeciesError(self._unknown_message(coord_name, missing))
        if values.ndim == 0 or self.index.is_unique:
            return super().sel(labels)
        return IndexSelResult({self.dim: self._positions_non_unique(coord_name, label, values)})

    def _positions_non_unique(self, coord_name: Hashable, label: Any, values: np.ndarray) -> np.ndarray:
        """Positions of a list of labels on an index with repeated values: each label's positions, in order."""
        if values.ndim != 1 or isinstance(label, xr.Variable | xr.DataArray):
            shared = self.index[self.index.duplicated()].unique()[:MAX_SHOWN]
            raise SpeciesSelectionError(
                f"{coord_name!r} has values shared by several species ({', '.join(map(_show, shared))}): select "
                f"them with a plain list, or by species id"
            )
        every = np.arange(len(self.index))
        return np.concatenate([np.atleast_1d(every[self.index.get_loc(v)]) for v in values.tolist()]).astype(np.intp)

    def _unknown_message(self, coord_name: Hashable, missing: list[Any]) -> str:
        kind = "id" if coord_name == self.dim else "name"
        shown = missing[:MAX_SHOWN]
        more = f" and {len(missing) - len(shown)} more" if len(missing) > len(shown) else ""
        head = f"unknown species {', '.join(map(_show, shown))}{more} (by {kind})"
        if len(shown) == 1:
            matches = self.close_matches(shown[0])
            return f"{head}; " + (f"close matches: {', '.join(matches)}" if matches else "no close matches")
        parts = [f"{_show(v)} -> {', '.join(self.close_matches(v)) or 'none'}" for v in shown]
        return f"{head}; close matches: {'; '.join(parts)}"

    def close_matches(self, label: Any) -> list[str]:
        """Up to :data:`MAX_MATCHES` labels close to ``label`` (case-insensitive), ids and names alike, as shown in
        messages: this index's own labels quoted, the companion's as the selection to use (``species_name='...'``)."""
        if self._candidates is None:
            candidates: dict[str, list[str]] = {}
            for value in dict.fromkeys(str(v) for v in self.index):
                candidates.setdefault(value.lower(), []).append(_show(value))
            if self.others is not None:
                for value in dict.fromkeys(str(v) for v in self.others):
                    if value.lower() not in candidates:  # an id that is also a name is shown once, as asked
                        candidates.setdefault(value.lower(), []).append(f"{self.others_name}={_show(value)}")
            self._candidates = candidates
        close = difflib.get_close_matches(str(label).lower(), list(self._candidates), n=MAX_MATCHES)
        return [shown for key in close for shown in self._candidates[key]][:MAX_MATCHES]


def _contains(index: Any, value: Any) -> bool:
    try:
        return value in index
    except TypeError:  # unhashable label
        return False


def index_species(obj: T, *, names_index: bool = True) -> T:
    """``obj`` with :class:`SpeciesIndex` on ``species`` (ids) and, where it lies along ``species`` and
    ``names_index`` is true, on ``species_name`` (names); unchanged where there is no ``species`` dimension
    coordinate.

    Only the coordinates are read (the names once, from the store); data variables stay lazy.

    xarray's alignment matches indexes by exact type and cannot reindex a dimension carrying a second index, so
    ``reindex(species=...)`` and arithmetic with objects whose ``species`` differ and lack these indexes raise an
    ``AlignmentError``: give the other object the same indexes (``index_species(other)``, with its
    ``species_name``) or undo them first (:func:`unindex_species`).
    """
    if SPECIES not in obj.dims or SPECIES not in obj.coords or obj.coords[SPECIES].dims != (SPECIES,):
        return obj
    names = obj.coords.get(SPECIES_NAME)
    name_values = np.asarray(names.values, dtype=object) if names is not None and names.dims == (SPECIES,) else None
    id_values = np.asarray(obj.coords[SPECIES].values, dtype=object)
    if SPECIES in obj.xindexes:
        obj = obj.drop_indexes(SPECIES)
    obj = obj.set_xindex(SPECIES, SpeciesIndex, others=name_values, others_name=SPECIES_NAME)
    if name_values is not None and names_index:
        if SPECIES_NAME in obj.xindexes:
            obj = obj.drop_indexes(SPECIES_NAME)
        obj = obj.set_xindex(SPECIES_NAME, SpeciesIndex, others=id_values, others_name=SPECIES)
    return obj


def unindex_species(obj: T) -> T:
    """``obj`` with xarray's own index on ``species`` and none on ``species_name``: what :func:`index_species` undoes,
    for aligning or reindexing along ``species`` with objects that lack these indexes (xarray matches indexes by
    type, and cannot reindex a dimension that carries a second index)."""
    for name in (SPECIES_NAME, SPECIES):
        if isinstance(obj.xindexes.get(name), SpeciesIndex):
            obj = obj.drop_indexes(name)
    if SPECIES in obj.coords and obj.coords[SPECIES].dims == (SPECIES,) and SPECIES not in obj.xindexes:
        obj = obj.set_xindex(SPECIES)
    return obj
