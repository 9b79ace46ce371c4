"""Maps of a store's variables on matplotlib axes, in the store's own CRS: axes labelled with the CRS's axis names,
units and EPSG code, a colour bar for continuous variables and a legend for class variables (their CF
``flag_values`` / ``flag_meanings``). The notebooks draw every map with these, so they read alike."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from pyproj import CRS


def store_crs(da: xr.DataArray | xr.Dataset) -> CRS:
    """The CRS of a store's variable (its ``spatial_ref`` coordinate's ``crs_wkt``, as ``open_store`` returns it)."""
    if "spatial_ref" not in da.coords or "crs_wkt" not in da["spatial_ref"].attrs:
        raise ValueError("no spatial_ref coordinate with a crs_wkt: not a georeferenced geoplantnet store")
    return CRS.from_wkt(da["spatial_ref"].attrs["crs_wkt"])


def crs_labels(crs: CRS) -> tuple[str, str]:
    """Axis labels for x and y: the CRS's axis names and units with its EPSG code (``Easting (metre, EPSG:3035)``)."""
    code = f"EPSG:{crs.to_epsg()}" if crs.to_epsg() else crs.name
    axes = {a.direction: a for a in crs.axis_info}
    x, y = axes.get("east"), axes.get("north")
    return (
        f"{x.name if x else 'x'} ({x.unit_name if x else '?'}, {code})",
        f"{y.name if y else 'y'} ({y.unit_name if y else '?'}, {code})",
    )


def _extent(da: xr.DataArray) -> tuple[float, float, float, float]:
    """Cell edges (left, right, bottom, top) of a north-up grid given by its cell-centre coordinates."""
    x, y = da["x"].values, da["y"].values
    dx = float(x[1] - x[0]) if x.size > 1 else 1.0
    dy = float(y[0] - y[1]) if y.size > 1 else 1.0
    return float(x[0] - dx / 2), float(x[-1] + dx / 2), float(y[-1] - dy / 2), float(y[0] + dy / 2)


def _frame(ax: Any, da: xr.DataArray, title: str | None) -> None:
    xlabel, ylabel = crs_labels(store_crs(da))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_aspect("equal")
    plain_ticks(ax)
    ax.set_title(title if title is not None else str(da.attrs.get("long_name", da.name)), fontsize=10)


def plain_ticks(ax: Any) -> None:
    """Whole coordinates without offset, few enough ticks that seven-digit metres do not overlap."""
    from matplotlib.ticker import MaxNLocator

    ax.ticklabel_format(style="plain", useOffset=False)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.yaxis.set_major_locator(MaxNLocator(5))


def _axes(ax: Any) -> Any:
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(6, 5), layout="constrained")
    return ax


def show_map(
    da: xr.DataArray,
    ax: Any = None,
    *,
    title: str | None = None,
    label: str | None = None,
    cmap: str = "viridis",
    **kwargs: Any,
) -> Any:
    """A continuous 2-D (y, x) variable with a colour bar (``label``, else its ``long_name`` and ``units``); extra
    keyword arguments go to ``imshow`` (``vmin``, ``vmax``, ``norm``). Returns the axes."""
    if da.ndim != 2:
        raise ValueError(f"{da.name}: a map needs a 2-D (y, x) variable, got dims {da.dims}")
    ax = _axes(ax)
    image = ax.imshow(np.asarray(da.values, dtype="float64"), extent=_extent(da), cmap=cmap, **kwargs)
    units = da.attrs.get("units")
    bar = label if label is not None else (f"{da.name} ({units})" if units and units != "1" else str(da.name))
    ax.figure.colorbar(image, ax=ax, label=bar, shrink=0.85)
    _frame(ax, da, title)
    return ax


def show_classes(
    da: xr.DataArray,
    ax: Any = None,
    *,
    names: dict[int, str] | None = None,
    title: str | None = None,
    cmap: str = "tab20",
) -> Any:
    """A class variable (integer codes; -1 and NaN = no data, left blank) with a legend of the classes present,
    named by ``names`` or by the variable's ``flag_values`` / ``flag_meanings``. Returns the axes."""
    import matplotlib as mpl
    from matplotlib.patches import Patch

    if da.ndim != 2:
        raise ValueError(f"{da.name}: a map needs a 2-D (y, x) variable, got dims {da.dims}")
    ax = _axes(ax)
    names = names if names is not None else class_names(da)
    codes = np.asarray(da.values, dtype="float64")
    codes[codes < 0] = np.nan
    present = sorted(int(c) for c in np.unique(codes[np.isfinite(codes)]))
    palette = mpl.colormaps[cmap]
    known = sorted(set(names) | set(present)) or [0]
    colours = mpl.colors.ListedColormap([palette(i % palette.N) for i in range(len(known))])
    index = np.full(codes.shape, np.nan)
    for i, code in enumerate(known):
        index[codes == code] = i
    ax.imshow(index, extent=_extent(da), cmap=colours, vmin=-0.5, vmax=len(known) - 0.5, interpolation="nearest")
    handles = [Patch(color=colours(known.index(c)), label=f"{c}: {names.get(c, '?')}") for c in present]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    _frame(ax, da, title)
    return ax


def class_names(da: xr.DataArray) -> dict[int, str]:
    """The class codes of a variable and their names from its CF ``flag_values`` / ``flag_meanings`` (codes 0.. when
    only the meanings are given); empty when it declares none."""
    meanings = str(da.attrs.get("flag_meanings", "")).split()
    values = da.attrs.get("flag_values")
    if isinstance(values, str):
        values = [int(v) for v in values.strip("[]").replace(",", " ").split()]
    codes = list(values) if values is not None else list(range(len(meanings)))
    return {int(c): m for c, m in zip(codes, meanings, strict=False)}
