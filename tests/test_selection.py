"""Species selection by id and name on a real (small) Zarr store: one clear error with close matches, lazy data."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from geoplantnet.core.errors import InputError
from geoplantnet.storage.selection import (
    SpeciesIndex,
    SpeciesSelectionError,
    UnknownSpeciesError,
    index_species,
    unindex_species,
)

IDS = ["sp0001", "sp0002", "sp0003", "sp0004"]
NAMES = ["Quercus robur", "Quercus rubra", "Fagus sylvatica", "Pinus sylvestris"]


def _dataset(ids: list[str] = IDS, names: list[str] = NAMES) -> xr.Dataset:
    n = len(ids)
    prob = np.linspace(0, 1, n * 3 * 4).reshape(n, 3, 4).round(2)
    return xr.Dataset(
        {"probability": (("species", "y", "x"), prob)},
        coords={
            "species": np.asarray(ids, dtype=object),
            "species_name": ("species", np.asarray(names, dtype=object)),
            "y": [30.0, 20.0, 10.0],
            "x": [0.0, 10.0, 20.0, 30.0],
        },
    )


def _write(ds: xr.Dataset, path: Path) -> str:
    encoding = {"probability": {"dtype": "uint8", "scale_factor": 0.01, "_FillValue": 255}}
    ds.to_zarr(path, mode="w", encoding=encoding, consolidated=True)
    return str(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _write(_dataset(), tmp_path_factory.mktemp("sel") / "species.zarr")


@pytest.fixture
def ds(store: str) -> xr.Dataset:
    return index_species(xr.open_zarr(store, consolidated=True))


def _lazy(obj: xr.Dataset | xr.DataArray) -> bool:
    variables = obj.data_vars.values() if isinstance(obj, xr.Dataset) else [obj]
    return all(isinstance(v.data, da.Array) for v in variables)


def _error(call) -> UnknownSpeciesError:
    with pytest.raises(UnknownSpeciesError) as info:
        call()
    return info.value


def test_store_strings_are_indexed_and_data_stays_lazy(ds: xr.Dataset) -> None:
    assert isinstance(ds.xindexes["species"], SpeciesIndex)
    assert isinstance(ds.xindexes["species_name"], SpeciesIndex)
    assert ds.species_name.dims == ("species",)
    assert _lazy(ds)
    assert ds.probability.encoding["dtype"] == np.dtype("uint8")


def test_unknown_name_is_one_clean_line_with_close_matches(ds: xr.Dataset) -> None:
    err = _error(lambda: ds.probability.sel(species_name="Quercus robr"))
    assert isinstance(err, KeyError) and isinstance(err, InputError)
    assert str(err) == "unknown species 'Quercus robr' (by name); close matches: 'Quercus robur', 'Quercus rubra'"


def test_unknown_id_message_and_no_nearest_suggestion(ds: xr.Dataset) -> None:
    assert str(_error(lambda: ds.probability.sel(species="nonexistent"))) == (
        "unknown species 'nonexistent' (by id); no close matches"
    )
    assert "sp0001" in str(_error(lambda: ds.sel(species="sp001")))


def test_a_name_asked_as_id_points_to_species_name(ds: xr.Dataset) -> None:
    message = str(_error(lambda: ds.probability.sel(species="Quercus robur")))
    assert message.startswith("unknown species 'Quercus robur' (by id); close matches: species_name='Quercus robur'")
    assert "species='sp0003'" in str(_error(lambda: ds.sel(species_name="sp0003")))


def test_close_matches_ignore_case(ds: xr.Dataset) -> None:
    assert "'Fagus sylvatica'" in str(_error(lambda: ds.sel(species_name="fagus SYLVATICA")))


def test_lists_name_each_unknown_label(ds: xr.Dataset) -> None:
    message = str(_error(lambda: ds.sel(species_name=["Quercus robur", "Quercus robr", "zzzz"])))
    assert message == (
        "unknown species 'Quercus robr', 'zzzz' (by name); "
        "close matches: 'Quercus robr' -> 'Quercus robur', 'Quercus rubra'; 'zzzz' -> none"
    )
    many = [f"nope{i}" for i in range(8)]
    assert "'nope4' and 3 more (by id)" in str(_error(lambda: ds.sel(species=many)))


def test_nearest_and_tolerance_are_refused(ds: xr.Dataset) -> None:
    with pytest.raises(
        SpeciesSelectionError, match=r"method='nearest' cannot select 'species'.*\.sel\(species=\.\.\.\)"
    ):
        ds.sel(species="sp0001", method="nearest")
    with pytest.raises(SpeciesSelectionError, match="tolerance=1"):
        ds.probability.sel(species_name="Quercus robur", tolerance=1)
    # the grid's own indexes still take nearest lookups
    assert ds.sel(species="sp0002").sel(x=11.0, y=21.0, method="nearest").probability.shape == ()


def test_selection_by_id_and_name_everywhere(ds: xr.Dataset) -> None:
    expected = ds.probability.isel(species=0).values
    for got in (
        ds.probability.sel(species="sp0001"),
        ds.probability.sel(species_name="Quercus robur"),
        ds.sel(species_name="Quercus robur").probability,
        ds.probability.loc[{"species_name": "Quercus robur"}],
        ds.loc[{"species": "sp0001"}].probability,
    ):
        assert got.dims == ("y", "x")
        assert str(got.species.values) == "sp0001" and str(got.species_name.values) == "Quercus robur"
        np.testing.assert_array_equal(got.values, expected)
    picked = ds.probability.sel(species_name=["Fagus sylvatica", "Quercus robur"])
    assert list(picked.species.values) == ["sp0003", "sp0001"]
    assert _lazy(picked)


def test_slices_and_masks_select_as_before(ds: xr.Dataset) -> None:
    assert list(ds.sel(species=slice("sp0002", "sp0003")).species.values) == ["sp0002", "sp0003"]
    assert list(ds.sel(species=slice("sp0003", None)).species.values) == ["sp0003", "sp0004"]
    mask = np.array([True, False, True, False])
    assert list(ds.sel(species=mask).species.values) == ["sp0001", "sp0003"]


def test_indexes_survive_isel_where_arithmetic_and_keep_their_hints(ds: xr.Dataset) -> None:
    sub = ds.isel(species=[3, 0])
    assert isinstance(sub.xindexes["species_name"], SpeciesIndex)
    assert str(sub.probability.sel(species_name="Pinus sylvestris").species.values) == "sp0004"
    # hints follow the selection: only the names left are suggested
    assert str(_error(lambda: sub.sel(species_name="Quercus robr"))).endswith("close matches: 'Quercus robur'")
    assert "species_name='Pinus sylvestris'" in str(_error(lambda: sub.sel(species="pinus sylvestris")))

    scaled = (ds.probability * 2 + 1).where(ds.probability > 0.3)
    ratio = scaled / scaled.max(("y", "x"))
    for obj in (
        scaled,
        ratio,
        ds.where(ds.probability > 0.3),
        ds.sel(species=["sp0002"]).sel(species_name=["Quercus rubra"]),
    ):
        assert _lazy(obj)
        assert isinstance(obj.xindexes["species_name"], SpeciesIndex)
    np.testing.assert_allclose(
        ratio.sel(species_name="Quercus rubra").values,
        ratio.sel(species="sp0002").values,
    )
    # arithmetic between parts of one store aligns on both indexes
    both = ds.probability + ds.probability.sel(species=["sp0003", "sp0001"])
    assert list(both.species.values) == ["sp0001", "sp0003"]
    assert list(both.species_name.values) == ["Quercus robur", "Fagus sylvatica"]
    # and with a plain array over the same species
    weights = xr.DataArray([1.0, 2.0, 3.0, 4.0], coords={"species": IDS}, dims="species")
    assert (ds.probability * weights).sizes["species"] == 4


def test_to_dataframe_and_back_to_zarr(ds: xr.Dataset, tmp_path: Path) -> None:
    picked = ds.sel(species_name=["Quercus rubra"]).probability
    frame = picked.to_dataframe()
    assert frame.index.names == ["species", "y", "x"] and len(frame) == 12
    # xarray leaves indexed coordinates out of the columns; without the name index, species_name is a column again
    assert "species_name" not in frame
    assert set(unindex_species(picked).to_dataframe()["species_name"]) == {"Quercus rubra"}

    out = _write(ds.isel(species=[1, 2]), tmp_path / "again.zarr")
    back = index_species(xr.open_zarr(out, consolidated=True))
    assert list(back.species_name.values) == ["Quercus rubra", "Fagus sylvatica"]
    xr.testing.assert_allclose(back.probability.compute(), ds.probability.isel(species=[1, 2]).compute())
    assert str(_error(lambda: back.sel(species_name="Quercus robr"))).endswith("close matches: 'Quercus rubra'")


def test_shared_names_select_every_id(tmp_path: Path) -> None:
    names = ["Quercus robur", "Quercus robur", "Fagus sylvatica", "Pinus sylvestris"]
    ds = index_species(xr.open_zarr(_write(_dataset(names=names), tmp_path / "dup.zarr"), consolidated=True))
    both = ds.probability.sel(species_name="Quercus robur")
    assert both.dims == ("species", "y", "x") and list(both.species.values) == ["sp0001", "sp0002"]
    picked = ds.sel(species_name=["Pinus sylvestris", "Quercus robur"])
    assert list(picked.species.values) == ["sp0004", "sp0001", "sp0002"]
    assert str(ds.probability.sel(species_name="Fagus sylvatica").species.values) == "sp0003"
    assert "'Quercus robur'" in str(_error(lambda: ds.sel(species_name="Quercus robu")))
    with pytest.raises(SpeciesSelectionError, match=r"shared by several species \('Quercus robur'\)"):
        ds.sel(species_name=xr.DataArray(["Quercus robur"], dims="pick"))


def test_no_species_axis_is_left_alone() -> None:
    grid = xr.Dataset({"elevation": (("y", "x"), np.zeros((2, 2)))}, coords={"y": [1.0, 0.0], "x": [0.0, 1.0]})
    assert index_species(grid) is grid
    ids_only = index_species(_dataset().drop_vars("species_name"))
    assert isinstance(ids_only.xindexes["species"], SpeciesIndex)
    assert str(_error(lambda: ids_only.sel(species="sp0009"))).startswith("unknown species 'sp0009' (by id)")
    twice = index_species(index_species(_dataset()))
    assert isinstance(twice.xindexes["species_name"], SpeciesIndex)


def test_unindex_species_restores_reindex_and_alignment(ds: xr.Dataset) -> None:
    # documented limit of xarray's custom indexes: a differently typed index, or a second index on the dimension
    with pytest.raises(ValueError, match="conflicting indexes"):
        ds.probability.reindex(species=["sp0003", "sp0001"])
    plain = unindex_species(ds)
    assert type(plain.xindexes["species"]).__name__ == "PandasIndex" and "species_name" not in plain.xindexes
    reindexed = plain.probability.reindex(species=["sp0003", "sp0001"])
    assert list(reindexed.species_name.values) == ["Fagus sylvatica", "Quercus robur"]
    weights = xr.DataArray([1.0, 2.0], coords={"species": ["sp0003", "sp0001"]}, dims="species")
    assert list((plain.probability * weights).species.values) == ["sp0001", "sp0003"]
