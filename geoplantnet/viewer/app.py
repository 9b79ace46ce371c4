"""The viewer's web application (FastAPI): the page, its JavaScript library, and a read-only API over one root's
catalogue.

Routes (every one reads through :class:`~geoplantnet.viewer.items.Catalogue`, which looks names up among what the
catalogue lists and never joins a URL to a path):

- ``/``: the page (``page/``); ``/static/...``: the bundled Leaflet (``static/``, built by scripts/bootstrap.sh)
- ``/api/catalog``: products, their items (one per year of a series), variables with kind, range and colormap,
  species counts, years
- ``/api/species?q=``: species whose id or scientific name contains ``q`` (case-insensitive)
- ``/tiles/{item}/{variable}/{z}/{x}/{y}.png?species=&colormap=&vmin=&vmax=``: an XYZ tile (Web Mercator)
- ``/api/legend/{item}/{variable}``: the colour scale and range of a variable
- ``/api/point?lon=&lat=&year=``: a pixel's description (:func:`geoplantnet.query.describe_point`)
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from geoplantnet.core.errors import GeoplantnetError, InputError
from geoplantnet.viewer import point, render
from geoplantnet.viewer.items import Catalogue, NotFound, variable_kind

PAGE = Path(__file__).parent / "page"
STATIC = Path(__file__).parent / "static"
LEAFLET = STATIC / "leaflet" / "leaflet.js"
MAX_ZOOM = 22
MAX_SPECIES_RESULTS = 20
TILE_CACHE = 1024  # tiles kept as PNG bytes (a few kB each): panning back or switching a year back redraws nothing


class ViewerBuildMissing(InputError):
    """The bundled JavaScript library is not there (the package was not built by scripts/bootstrap.sh)."""


def create_app(root: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """The FastAPI application serving ``root``'s catalogue, read-only."""
    from fastapi import FastAPI, HTTPException, Query, Response
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    if not LEAFLET.is_file():
        raise ViewerBuildMissing(f"{LEAFLET} is missing: run scripts/bootstrap.sh (npm ci + copy into the package)")
    catalogue = Catalogue(root, storage_options)
    app = FastAPI(title="geoplantnet viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/page", StaticFiles(directory=PAGE), name="page")

    @app.exception_handler(NotFound)
    async def not_found(_request: Any, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(render.RenderError)
    @app.exception_handler(InputError)
    async def bad_request(_request: Any, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(GeoplantnetError)
    async def unavailable(_request: Any, exc: GeoplantnetError) -> JSONResponse:
        # a store being rewritten since the server started, an object store that failed: one line, no traceback
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.get("/")
    def page() -> FileResponse:
        return FileResponse(PAGE / "index.html", media_type="text/html")

    @app.get("/api/catalog")
    def catalog() -> dict[str, Any]:
        return describe_catalogue(catalogue)

    @app.get("/api/species")
    def species(q: str = Query("", max_length=100)) -> list[dict[str, str]]:
        return search_species(catalogue, q)

    @app.get("/api/legend/{item_id}/{variable}")
    def legend(item_id: str, variable: str, colormap: str | None = None) -> dict[str, Any]:
        da, kind = catalogue.variable(item_id, variable, species=_any_species(catalogue, item_id, variable))
        lo, hi = catalogue.value_range(item_id, variable, kind, da)
        return render.legend(colormap or default_colormap(kind), lo, hi, classes=kind == "class")

    @functools.lru_cache(maxsize=TILE_CACHE)
    def draw(
        item_id: str,
        variable: str,
        species: str | None,
        z: int,
        x: int,
        y: int,
        colormap: str | None,
        vmin: float | None,
        vmax: float | None,
    ) -> bytes:
        """A tile's PNG, drawn once (the stores served are complete: their values do not change under a key)."""
        da, kind = catalogue.variable(item_id, variable, species)
        lo, hi = catalogue.value_range(item_id, variable, kind, da)
        factor = _factor(catalogue, item_id, da, z, y)
        if factor > 1:
            da, _ = catalogue.variable(item_id, variable, species, factor)
        return render.render_tile(
            da,
            z,
            x,
            y,
            colormap=colormap or default_colormap(kind),
            lo=lo if vmin is None else vmin,
            hi=hi if vmax is None else vmax,
            classes=kind == "class",
        )

    @app.get("/tiles/{item_id}/{variable}/{z}/{x}/{y}.png")
    def tile(
        item_id: str,
        variable: str,
        z: int,
        x: int,
        y: int,
        species: str | None = None,
        colormap: str | None = None,
        vmin: float | None = None,
        vmax: float | None = None,
    ) -> Response:
        if not (0 <= z <= MAX_ZOOM and 0 <= x < 2**z and 0 <= y < 2**z):
            raise HTTPException(400, f"no tile {z}/{x}/{y}")
        body = draw(item_id, variable, species, z, x, y, colormap, vmin, vmax)
        return Response(body, media_type="image/png", headers={"Cache-Control": "max-age=60"})

    @app.get("/api/point")
    def describe_point(
        lon: float = Query(..., ge=-180, le=180), lat: float = Query(..., ge=-90, le=90), year: int | None = None
    ) -> dict[str, Any]:
        return point.describe(catalogue, lon, lat, year)

    return app


def default_colormap(kind: str) -> str:
    """Classes: one colour each (tab20); probabilities and indicators: viridis (perceptually uniform)."""
    return render.CLASS_COLORMAP if kind == "class" else "viridis"


def _any_species(catalogue: Catalogue, item_id: str, variable: str) -> str | None:
    """A species of the item (the legend of a probability does not depend on which)."""
    ds = catalogue.dataset(item_id)
    return str(ds["species"].values[0]) if variable in ds and "species" in ds[variable].dims else None


def _factor(catalogue: Catalogue, item_id: str, da: Any, z: int, y: int) -> int:
    """The overview factor that zoom ``z`` reads (1: full resolution): about one stored cell per screen pixel."""
    resolution = abs(float(da["x"].values[1] - da["x"].values[0])) if da.sizes["x"] > 1 else 1.0
    return render.overview_factor(z, y, resolution, catalogue.factors(item_id)) or 1


def describe_catalogue(catalogue: Catalogue) -> dict[str, Any]:
    """Products, their items and drawable variables (with class names), years and species count (what the page's
    menus list)."""
    products: dict[str, dict[str, Any]] = {}
    years: set[int] = set()
    for item in catalogue.items.values():
        ds = catalogue.dataset(item.id)
        variables = []
        for name in ds.data_vars:
            kind = variable_kind(ds, str(name))
            if kind is not None:
                variables.append(
                    {
                        "name": str(name),
                        "kind": kind,
                        "long_name": str(ds[name].attrs.get("long_name", name)),
                        "units": str(ds[name].attrs.get("units", "")),
                        "colormap": default_colormap(kind),
                        "classes": _classes(ds[name].attrs) if kind == "class" else [],
                    }
                )
        if not variables:  # nothing the viewer draws (composites: season x band cubes)
            continue
        entry = products.setdefault(item.product, {"product": item.product, "items": []})
        entry["items"].append(
            {
                "id": item.id,
                "year": item.year,
                "variables": variables,
                "bounds": _bounds(ds),
                "species": int(ds.sizes.get("species", 0)),
            }
        )
        if item.year is not None:
            years.add(item.year)
    return {"root": Path(catalogue.root).name, "products": list(products.values()), "years": sorted(years)}


def _bounds(ds: Any) -> list[float] | None:
    """The item's extent in longitude/latitude (west, south, east, north), for the page's first view."""
    import rioxarray  # noqa: F401  (the .rio accessor)

    try:
        return [float(v) for v in ds.rio.transform_bounds("EPSG:4326")]
    except Exception:  # no CRS or no grid: the page starts from a default view
        return None


def _classes(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A class variable's codes and their names (CF ``flag_values`` / ``flag_meanings``), for the legend."""
    names = str(attrs.get("flag_meanings", "")).split()
    codes = list(attrs.get("flag_values", range(len(names))))
    return [{"code": int(c), "label": n} for c, n in zip(codes, names, strict=False)]


def search_species(catalogue: Catalogue, q: str) -> list[dict[str, str]]:
    """Species whose id or scientific name contains ``q`` (case-insensitive), names first, at most 20."""
    needle = q.strip().lower()
    seen: dict[str, str] = {}
    for item in catalogue.items.values():
        ds = catalogue.dataset(item.id)
        if "species" not in ds.coords:
            continue
        names = ds["species_name"].values if "species_name" in ds.coords else ds["species"].values
        for sid, name in zip(ds["species"].values, names, strict=True):
            if needle in str(name).lower() or needle in str(sid).lower():
                seen.setdefault(str(sid), str(name))
    hits = sorted(seen.items(), key=lambda kv: (not kv[1].lower().startswith(needle), kv[1]))
    return [{"id": sid, "name": name} for sid, name in hits[:MAX_SPECIES_RESULTS]]
