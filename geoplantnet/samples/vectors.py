"""Polygons from a user's vector file: GeoParquet, GeoPackage, GeoJSON or a shapefile, a local path or an fsspec URL,
in any CRS. The one reader of value labels, project footprints and candidate offset sites."""

from __future__ import annotations

from pathlib import Path

import fsspec
import geopandas as gpd
import shapely

from geoplantnet.core.errors import InputError

PARQUET = (".parquet", ".geoparquet")
POLYGONAL = ("Polygon", "MultiPolygon")


class VectorError(InputError):
    """A vector file that cannot be used (one line naming the file and what to fix)."""


def read_vector(source: str | Path, what: str) -> gpd.GeoDataFrame:
    """The features of ``source`` as they are (their CRS, every column); ``what`` names the file in errors."""
    source = str(source)
    suffix = Path(source.split("?", 1)[0]).suffix.lower()
    fs, path = fsspec.core.url_to_fs(source)
    if not fs.exists(path):
        raise VectorError(f"{what} {source}: no such file")
    try:
        if suffix in PARQUET:
            with fsspec.open(source, "rb") as f:
                return gpd.read_parquet(f)
        return gpd.read_file(source)
    except Exception as exc:  # pyogrio / pyarrow raise their own kinds for unreadable files
        detail = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise VectorError(f"{what} {source}: cannot read it ({detail})") from None


def check_valid(frame: gpd.GeoDataFrame, source: str | Path, what: str) -> None:
    """Refuse invalid geometries (a self-intersecting "bow-tie", a ring crossing itself or another), naming the
    feature (its index in the file, from 0) and why: a silent repair would change the area the user drew (a bow-tie
    becomes two triangles, or loses a lobe), so the user repairs it knowingly."""
    invalid = ~frame.geometry.is_valid.to_numpy()
    if invalid.any():
        first = int(invalid.argmax())
        reason = shapely.is_valid_reason(frame.geometry.iloc[first])
        more = f" ({int(invalid.sum())} invalid features)" if invalid.sum() > 1 else ""
        raise VectorError(
            f"{what} {source}: feature {frame.index[first]} is not a valid polygon: {reason}{more}; repair it "
            "(QGIS Fix geometries, shapely.make_valid) and check the result"
        )


def read_polygons(source: str | Path, epsg: int, what: str) -> gpd.GeoDataFrame:
    """The polygons of ``source`` in EPSG:``epsg``, empty rows dropped; a file without a CRS, with other geometry
    kinds or with an invalid polygon (:func:`check_valid`) is refused."""
    frame = read_vector(source, what)
    frame = frame[~frame.geometry.isna() & ~frame.geometry.is_empty]
    if frame.empty:
        raise VectorError(f"{what} {source}: no geometries")
    if frame.crs is None:
        raise VectorError(f"{what} {source}: no CRS; write the file with its CRS (e.g. EPSG:4326 or EPSG:3035)")
    kinds = sorted(set(frame.geom_type) - set(POLYGONAL))
    if kinds:
        raise VectorError(f"{what} {source}: {', '.join(kinds)} geometries; give polygons (buffer lines to a width)")
    check_valid(frame, source, what)
    frame = frame.to_crs(epsg)
    # a valid polygon may still come out of a reprojection with a sliver of a crossing (rounding): repaired, it
    # keeps its area to the rounding
    frame["geometry"] = shapely.make_valid(frame.geometry.values)
    return frame.reset_index(drop=True)
