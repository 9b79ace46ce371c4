"""The virtual region's environment: terrain, climate, soil, land cover, towns and roads, from one seed.

Every layer is a pure function of (seed, map coordinates) built from :mod:`geoplantnet.sim.fields`, so the same
place has the same value at 10 m, at 50 m, in a window, at a scattered point and in any region that contains it.

Terrain: a regional uplift field decides where mountains are (relief grows with it); valleys are carved along the
zero lines of a valley field with flat floors (``1 - exp(-(R / w)^2)``), ridges come from a ridged field, and a
detail field adds hills; soft limits keep the elevation in (0, 2500) m. Slopes use the fields' exact gradients.
Climate: annual mean temperature falls with elevation (6.5 degC/km) and northwards, precipitation rises with
elevation, temperature seasonality (BIO4) rises eastwards (continentality); soil pH follows a geology field (calcareous
vs siliceous) and is leached by rain. Land cover follows from all of these: rivers on valley lines and lakes in flat
places, wetland beside them, forest on slopes and higher ground (conifers higher, on acid soils), krummholz/heath at
the treeline, alpine grass and bare rock above, a parcel mosaic of cropland and grassland in the lowlands, urban around
towns. Towns sit on a lattice of 4 km cells (one possible town per cell, rejected on steep, high or wet ground), so
they too are a function of space; roads join towns in neighbouring cells and run on out of any region.

Time: everything above is the region's first year. In later years (``sim.years`` > 1) land cover alone changes, by the
events of ``sim.change_events()``: round patches placed once per region from the seed on cells of the right source
class (:data:`CHANGE_RULES`), cumulative from year to year. A pixel changes at most once a year, and only if its class
in the previous year is a source of the event, so the land cover of a year stays a pure function of (seed, region,
coordinates, year) and windows still stitch exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import rasterio.transform
import shapely
from affine import Affine
from tqdm.auto import tqdm

from geoplantnet.core.config import SimConfig
from geoplantnet.core.grid import Grid, GridError, to_grid_crs
from geoplantnet.sim.fields import RandomField, hash_uniform, mesh
from geoplantnet.sources.cog import CogWriter
from geoplantnet.sources.stac_items import AssetSpec, collection_for, item_from_cogs, write_collection

LAND_COVER_CLASSES: dict[int, str] = {
    1: "urban",
    2: "cropland",
    3: "grassland",
    4: "broadleaf_forest",
    5: "coniferous_forest",
    6: "shrub_heath",
    7: "wetland",
    8: "water",
    9: "bare_rock",
}


def layer_classes(variable: str) -> dict[int, str]:
    """Code -> name of the classes the region's layer ``variable`` declares (its items say the same): known before the
    region is generated, so a scenario naming a class can be checked first. Empty for a continuous layer."""
    return dict(LAND_COVER_CLASSES) if variable == "land_cover" else {}


# Land-cover change kinds (codes of the change truth; 0 is no change) and their (source classes, new class).
CHANGE_KINDS: dict[int, str] = {1: "clearing", 2: "built_up", 3: "wetland_restored"}
CHANGE_RULES: dict[str, tuple[tuple[int, ...], int]] = {
    "clearing": ((4, 5), 6),  # a felled stand regrows as shrubs and herbs: shrub_heath
    "built_up": ((2, 3, 6), 1),  # open land becomes urban
    "wetland_restored": ((2, 3), 7),  # drained fields and meadows rewetted
}
CHANGE_CANDIDATES = 4096  # random points of the region among which patch centres are chosen
ENV_VARIABLES: tuple[str, ...] = ("elevation", "temperature", "precipitation", "seasonality", "soil_ph")
ENV_UNITS: dict[str, str] = {
    "elevation": "m",
    "temperature": "degC",
    "precipitation": "mm/year",
    "seasonality": "degC*100",  # bioclim BIO4: standard deviation of monthly mean temperature x 100
    "soil_ph": "pH",
}
LAYER_KEYS: tuple[str, ...] = (*ENV_VARIABLES, "land_cover", "road_distance", "town_distance")
ENV_NODATA = -9999.0  # continuous COGs (never produced; declared so readers know)

TOWN_CELL = 3000.0  # metres; at most one town per cell of this lattice
TOWN_MARGIN_CELLS = 2  # towns this many cells beyond the region still count for distances and roads
PARCEL_BLOCK = 1200.0  # farm blocks with their own parcel orientation
PARCEL_SIZE = (320.0, 110.0)  # strip parcels (along, across)

# Reference point of the regional gradients (about 50 N 10 E in EPSG:3035).
_X0, _Y0 = 4_321_000.0, 2_981_000.0

# Named fields of the model: name -> (seed key, length scale in metres).
_FIELDS: dict[str, tuple[int, float]] = {
    "uplift": (1, 6_000.0),
    "massif": (2, 3_500.0),
    "valley": (3, 2_500.0),
    "ridge": (4, 900.0),
    "hills": (5, 600.0),
    "temp": (6, 20_000.0),
    "rain": (7, 15_000.0),
    "season": (8, 25_000.0),
    "geology": (9, 5_000.0),
    "soil": (10, 400.0),
    "lake": (11, 1_800.0),
    "woods": (12, 2_000.0),
    "copse": (13, 400.0),
    "conifer": (14, 3_000.0),
    "treeline": (15, 3_000.0),
    "heath": (16, 1_500.0),
    "bog": (17, 1_000.0),
    "sprawl": (18, 250.0),
}


class EnvError(ValueError):
    """Bad input to the virtual environment (coordinates, grid, output folder)."""


@dataclass(frozen=True)
class ChangePatch:
    """One patch of land-cover change: a disc of ``radius`` metres around (x, y), first visible in ``year``."""

    year: int
    kind: str
    x: float
    y: float
    radius: float

    @property
    def code(self) -> int:
        return next(k for k, v in CHANGE_KINDS.items() if v == self.kind)


def _field_seed(seed: int, key: int) -> int:
    return int(np.random.SeedSequence([int(seed), 0xE4F, key]).generate_state(1)[0])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class Environment:
    """Environmental layers of the virtual region as pure functions of (seed, coordinates)."""

    def __init__(self, sim: SimConfig, grid: Grid) -> None:
        self.sim = sim
        self.grid = grid
        self.seed = int(sim.seed)
        if self.seed < 0:
            raise EnvError(f"sim.seed must be >= 0, got {self.seed}")
        self.fields = {
            name: RandomField(_field_seed(self.seed, key), length) for name, (key, length) in _FIELDS.items()
        }
        all_towns, radii = self._place_towns()
        self._town_xy = all_towns
        self._town_radius = radii
        self._town_index = _Segments(all_towns, all_towns)
        self.roads: list[shapely.LineString] = self._connect_roads()
        vertices = [shapely.get_coordinates(r) for r in self.roads]
        self._road_index = _Segments(
            np.concatenate([v[:-1] for v in vertices]) if vertices else np.zeros((0, 2)),
            np.concatenate([v[1:] for v in vertices]) if vertices else np.zeros((0, 2)),
        )
        inside = grid.contains(all_towns[:, 0], all_towns[:, 1]) if len(all_towns) else np.zeros(0, bool)
        self.towns: np.ndarray = all_towns[inside]
        self.town_radius: np.ndarray = radii[inside]
        self.changes: list[ChangePatch] = []
        self._place_changes()

    # --- public layers --------------------------------------------------------------------------------------------
    def layers(self, x: np.ndarray, y: np.ndarray, year: int | None = None) -> dict[str, np.ndarray]:
        """Every layer on the grid of 1-D centre coordinates: 2-D ``(len(y), len(x))`` arrays; land cover of
        ``year`` (default: the first year)."""
        return self._public(self._compute(x, y, points=False, year=year))

    def at_points(self, x: np.ndarray, y: np.ndarray, year: int | None = None) -> dict[str, np.ndarray]:
        """Every layer at scattered points (1-D arrays of equal length); identical to ``layers`` at grid centres."""
        x, y = np.asarray(x, dtype="float64").ravel(), np.asarray(y, dtype="float64").ravel()
        if x.shape != y.shape:
            raise EnvError(f"at_points needs x and y of equal length, got {x.size} and {y.size}")
        return self._public(self._compute(x, y, points=True, year=year))

    def surface(self, x: np.ndarray, y: np.ndarray, year: int | None = None) -> dict[str, np.ndarray]:
        """``layers`` plus what a sensor sees of the ground: elevation gradient (``elev_dx``, ``elev_dy``, m/m),
        ``slope`` (degrees), ``parcel`` (uniform [0, 1) per field parcel) and ``valley`` (0 on river lines)."""
        return self._compute(x, y, points=False, year=year)

    @property
    def years(self) -> list[int]:
        """The region's calendar years, the first (baseline land cover) first."""
        return self.sim.calendar_years

    def year_land_cover(
        self, first: np.ndarray, x: np.ndarray, y: np.ndarray, year: int, *, points: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(land cover of ``year``, int8 change codes of ``year`` vs the year before (:data:`CHANGE_KINDS`, 0 = none))
        from the first year's land cover ``first`` at the grid (or points) (x, y)."""
        x = np.asarray(x, dtype="float64").ravel()
        y = np.asarray(y, dtype="float64").ravel()
        lc = np.array(first, dtype="uint8", copy=True)
        code = np.zeros(lc.shape, dtype="int8")
        for when in sorted({p.year for p in self.changes if p.year <= year}):
            code = np.zeros(lc.shape, dtype="int8")  # only this year's changes are reported
            for patch in (p for p in self.changes if p.year == when):
                sources, target = CHANGE_RULES[patch.kind]
                if points:
                    box: tuple[slice, ...] = (slice(None),)
                    inside = (x - patch.x) ** 2 + (y - patch.y) ** 2 <= patch.radius**2
                else:
                    # only the rows and columns the disc can reach: cheap for many patches and big windows
                    box = (_span(y, patch.y, patch.radius), _span(x, patch.x, patch.radius))
                    inside = (x[None, box[1]] - patch.x) ** 2 + (y[box[0], None] - patch.y) ** 2 <= patch.radius**2
                block, block_code = lc[box], code[box]  # views: writing them writes lc and code
                # once a year at most, and only from a source class of the previous year
                hit = inside & np.isin(block, sources) & (block_code == 0)
                block[hit] = target
                block_code[hit] = patch.code
        if year not in {p.year for p in self.changes}:
            code = np.zeros(lc.shape, dtype="int8")
        return lc, code

    @staticmethod
    def _public(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: values[k] for k in LAYER_KEYS}

    # --- the model ------------------------------------------------------------------------------------------------
    def _terrain(self, x: np.ndarray, y: np.ndarray, points: bool) -> dict[str, np.ndarray]:
        f = self.fields
        grads = {n: f[n].with_gradient(x, y, points=points) for n in ("uplift", "massif", "valley", "ridge", "hills")}
        (b, bx, by), (m, mx, my) = grads["uplift"], grads["massif"]
        (r, rx, ry), (q, qx, qy), (d, dx, dy) = grads["valley"], grads["ridge"], grads["hills"]
        mtn = _sigmoid(1.4 * b + 0.8 * m - 0.3)
        dmtn = mtn * (1 - mtn)
        relief = 300.0 + 1500.0 * mtn
        w = 1.0  # valley half-width in field units: flat floors, steep sides
        ev = np.exp(-((r / w) ** 2))
        valley = 1.0 - ev
        aq = np.sqrt(q * q + 0.01)
        ridge = 1.0 + 0.25 * (1.0 - aq)
        raw = 450.0 + 300.0 * b + relief * valley * ridge + 15.0 * d
        floor = 30.0 * np.logaddexp(0.0, raw / 30.0)  # soft floor near 0 m
        top = np.tanh(floor / 2500.0)
        elevation = (2500.0 * top).astype("float32")  # soft ceiling at 2500 m
        chain = _sigmoid(raw / 30.0) * (1.0 - top * top)

        def d_raw(db: np.ndarray, dm: np.ndarray, dr: np.ndarray, dq: np.ndarray, dd: np.ndarray) -> np.ndarray:
            drelief = 1500.0 * dmtn * (1.4 * db + 0.8 * dm)
            dvalley = ev * 2.0 * r / (w * w) * dr
            dridge = -0.25 * q / aq * dq
            return 300.0 * db + (drelief * valley + relief * dvalley) * ridge + relief * valley * dridge + 15.0 * dd

        gx = (chain * d_raw(bx, mx, rx, qx, dx)).astype("float32")
        gy = (chain * d_raw(by, my, ry, qy, dy)).astype("float32")
        slope = np.degrees(np.arctan(np.hypot(gx, gy))).astype("float32")
        return {"elevation": elevation, "elev_dx": gx, "elev_dy": gy, "slope": slope, "valley": r}

    def _climate(self, terrain: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, points: bool):
        f = self.fields
        px, py = mesh(x, y, points=points)
        elev = terrain["elevation"]
        north = ((py - _Y0) / 100_000.0).astype("float32")  # 100 km units
        east = ((px - _X0) / 100_000.0).astype("float32")
        temperature = 10.8 - 0.0065 * elev - 0.7 * north + 0.6 * f["temp"].evaluate(x, y, points=points)
        precipitation = 560.0 + 0.55 * elev + 90.0 * f["rain"].evaluate(x, y, points=points) - 40.0 * east
        precipitation = np.maximum(precipitation, 250.0)
        seasonality = 640.0 + 25.0 * east - 0.03 * elev + 30.0 * f["season"].evaluate(x, y, points=points)
        geology = f["geology"].evaluate(x, y, points=points)
        soil_ph = 6.3 + 1.4 * np.tanh(1.2 * geology) - 0.0008 * (precipitation - 800.0)
        soil_ph = np.clip(soil_ph + 0.15 * f["soil"].evaluate(x, y, points=points), 4.0, 8.5)
        return {
            "temperature": temperature.astype("float32"),
            "precipitation": precipitation.astype("float32"),
            "seasonality": seasonality.astype("float32"),
            "soil_ph": soil_ph.astype("float32"),
        }

    def _distances(self, x: np.ndarray, y: np.ndarray, points: bool) -> dict[str, np.ndarray]:
        px, py = (x, y) if points else np.meshgrid(x, y)
        shape = px.shape
        town, idx = self._town_index.nearest(px.ravel(), py.ravel())
        road, _ = self._road_index.nearest(px.ravel(), py.ravel())
        radius = self._town_radius[idx] if len(self._town_radius) else np.zeros(idx.shape)
        return {
            "town_distance": town.reshape(shape).astype("float32"),
            "town_radius": radius.reshape(shape).astype("float32"),
            "road_distance": road.reshape(shape).astype("float32"),
        }

    def parcels(self, x: np.ndarray, y: np.ndarray, *, points: bool = False) -> np.ndarray:
        """Uniform [0, 1) per agricultural parcel (strips in farm blocks of their own orientation)."""
        px, py = mesh(x, y, points=points)
        bi, bj = np.floor(px / PARCEL_BLOCK), np.floor(py / PARCEL_BLOCK)
        theta = hash_uniform(self.seed, 0xB10C, bi, bj) * (np.pi / 2)
        cos, sin = np.cos(theta), np.sin(theta)
        u = np.floor((px * cos + py * sin) / PARCEL_SIZE[0])
        v = np.floor((py * cos - px * sin) / PARCEL_SIZE[1])
        return hash_uniform(self.seed, 0xFA7, bi, bj, u, v).astype("float32")

    def _compute(self, x: np.ndarray, y: np.ndarray, points: bool, year: int | None = None) -> dict[str, np.ndarray]:
        x = np.asarray(x, dtype="float64").ravel()
        y = np.asarray(y, dtype="float64").ravel()
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise EnvError("environment coordinates must be finite EPSG:3035 metres")
        out = self._terrain(x, y, points)
        out.update(self._climate(out, x, y, points))
        out.update(self._distances(x, y, points))
        out["parcel"] = self.parcels(x, y, points=points)
        out["land_cover"] = self._land_cover(out, x, y, points)
        if year is not None and self.changes:
            out["land_cover"] = self.year_land_cover(out["land_cover"], x, y, int(year), points=points)[0]
        return out

    def _land_cover(self, v: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, points: bool) -> np.ndarray:
        f = {name: self.fields[name].evaluate(x, y, points=points) for name in self._LC_FIELDS}
        elev, slope, ph, temp = v["elevation"], v["slope"], v["soil_ph"], v["temperature"]
        river = np.abs(v["valley"])
        lc = np.full(elev.shape, 3, dtype="uint8")  # grassland unless something else fits
        # Lowland agriculture: each parcel is a field (crop) or a meadow, crops where flat, low, warm, not acid.
        p_crop = (
            0.8
            * np.clip((12.0 - slope) / 6.0, 0, 1)
            * np.clip((1000.0 - elev) / 300.0, 0, 1)
            * np.clip((ph - 4.5) / 1.0, 0, 1)
            * np.clip(temp - 5.0, 0, 1)
        )
        lc[v["parcel"] < p_crop] = 2
        forest = 0.09 * (slope - 10.0) + (elev - 750.0) / 350.0 + 1.1 * f["woods"] + 0.5 * f["copse"] > 0.4
        conifer = (elev - 950.0) / 250.0 + 0.9 * f["conifer"] + 0.6 * (5.2 - ph) > 0
        lc[forest & ~conifer] = 4
        lc[forest & conifer] = 5
        lc[(ph < 5.0) & (f["heath"] > 1.2) & ~forest] = 6  # lowland heath on acid soils
        treeline = 1850.0 + 100.0 * f["treeline"]
        lc[(elev > treeline - 180.0) & (elev <= treeline)] = 6  # krummholz and dwarf-shrub heath
        lc[elev > treeline] = 3  # alpine grassland
        rock = (elev > treeline + 280.0) | ((slope > 32.0) & (elev > treeline - 300.0)) | (slope > 48.0)
        lc[rock] = 9
        lake = (f["lake"] > 2.1) & (slope < 6.0) & (elev < 1900.0)
        water = ((river < 0.035) & (elev < 1300.0) & (slope < 5.0)) | lake
        wet = ((river < 0.11) & (slope < 5.0) & (elev < 1300.0)) | ((f["lake"] > 1.85) & (slope < 6.0))
        wet |= (v["precipitation"] > 1000.0) & (slope < 3.0) & (f["bog"] > 1.3)  # raised bogs
        lc[wet & ~water] = 7
        urban = v["town_distance"] < v["town_radius"] * (1.0 + 0.35 * f["sprawl"])
        lc[urban & ~water] = 1
        lc[water] = 8
        return lc

    _LC_FIELDS = ("woods", "copse", "conifer", "treeline", "heath", "lake", "bog", "sprawl")

    # --- change over the years -----------------------------------------------------------------------------------
    def _place_changes(self) -> None:
        """Fill :attr:`changes`: every event's patch centres, drawn from the seed among random points of the region.

        Centres lie on the event's source classes in the previous year, preferably where the change is likely
        (built-up next to towns and roads, rewetting near rivers and lakes); patches of one event do not overlap."""
        events = self.sim.change_events()
        if not events:
            return
        rng = np.random.default_rng([self.seed, 0xC4A6E])
        xmin, ymin, xmax, ymax = self.grid.bounds
        cx, cy = rng.uniform(xmin, xmax, CHANGE_CANDIDATES), rng.uniform(ymin, ymax, CHANGE_CANDIDATES)
        base = self._compute(cx, cy, points=True)
        first = base["land_cover"]
        # Cost of a centre, lowest first (ties in random order): built-up grows out of towns and along roads, with
        # some jitter so that patches are not all at the one nearest place; rewetting near rivers and lakes.
        to_built = np.minimum(base["road_distance"], np.maximum(base["town_distance"] - base["town_radius"], 0.0))
        wet = (np.abs(base["valley"]) < 0.3) | (self.fields["lake"].at_points(cx, cy) > 1.5)
        cost = {
            "clearing": np.zeros(cx.shape),
            "built_up": to_built + rng.uniform(0.0, 300.0, cx.shape),
            "wetland_restored": (~wet).astype("float64"),
        }
        for i, event in enumerate(events):
            previous = self.year_land_cover(first, cx, cy, event.year - 1, points=True)[0]
            _, code = self.year_land_cover(first, cx, cy, event.year, points=True)
            sources, _ = CHANGE_RULES[event.kind]
            free = np.isin(previous, sources) & (code == 0)
            order = np.random.default_rng([self.seed, 0xC4A6F, event.year, i]).permutation(CHANGE_CANDIDATES)
            order = order[free[order]]
            order = order[np.argsort(cost[event.kind][order], kind="stable")]
            chosen: list[int] = []
            for j in order:
                if len(chosen) == event.count:
                    break
                if all(math.hypot(cx[j] - cx[k], cy[j] - cy[k]) >= 2.0 * event.size_m for k in chosen):
                    chosen.append(int(j))
            # appended at once, so the next event sees this one's patches (no two changes of a pixel in a year)
            self.changes.extend(
                ChangePatch(event.year, event.kind, float(cx[j]), float(cy[j]), float(event.size_m)) for j in chosen
            )

    # --- towns and roads ------------------------------------------------------------------------------------------
    def _cells(self) -> tuple[np.ndarray, np.ndarray]:
        xmin, ymin, xmax, ymax = self.grid.bounds
        i0 = math.floor(xmin / TOWN_CELL) - TOWN_MARGIN_CELLS
        i1 = math.floor(xmax / TOWN_CELL) + TOWN_MARGIN_CELLS
        j0 = math.floor(ymin / TOWN_CELL) - TOWN_MARGIN_CELLS
        j1 = math.floor(ymax / TOWN_CELL) + TOWN_MARGIN_CELLS
        ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1))
        return ii.ravel(), jj.ravel()

    def _town_candidates(self, ii: np.ndarray, jj: np.ndarray) -> tuple[np.ndarray, ...]:
        present = hash_uniform(self.seed, 0x7011, ii, jj) < 0.75
        tx = (ii + 0.15 + 0.7 * hash_uniform(self.seed, 0x7012, ii, jj)) * TOWN_CELL
        ty = (jj + 0.15 + 0.7 * hash_uniform(self.seed, 0x7013, ii, jj)) * TOWN_CELL
        radius = 200.0 + 600.0 * hash_uniform(self.seed, 0x7014, ii, jj) ** 2
        return present, tx, ty, radius

    def _place_towns(self) -> tuple[np.ndarray, np.ndarray]:
        """Towns on low, gentle, dry ground; every present cell below the high mountains is also a road junction."""
        ii, jj = self._cells()
        present, tx, ty, radius = self._town_candidates(ii, jj)
        terrain = self._terrain(tx, ty, points=True)
        lake = self.fields["lake"].at_points(tx, ty)
        dry = (np.abs(terrain["valley"]) > 0.15) & (lake < 1.7)
        junction = present & dry & (terrain["elevation"] < 1900)
        town = junction & (terrain["elevation"] < 1400) & (terrain["slope"] < 15)
        cells = zip(ii.tolist(), jj.tolist(), tx.tolist(), ty.tolist(), junction.tolist(), strict=True)
        self._junctions = {(i, j): (x, y) for i, j, x, y, keep in cells if keep}
        return np.column_stack([tx[town], ty[town]]).astype("float64"), radius[town].astype("float64")

    def _connect_roads(self) -> list[shapely.LineString]:
        """Roads between towns (and hamlets) of neighbouring cells, orthogonal often, diagonal sometimes, winding."""
        roads = []
        for (i, j), a in sorted(self._junctions.items()):
            for di, dj, p in ((1, 0, 0.9), (0, 1, 0.9), (1, 1, 0.4), (1, -1, 0.4)):
                b = self._junctions.get((i + di, j + dj))
                if b is None or hash_uniform(self.seed, 0x80AD, i, j, di + 2, dj + 2) >= p:
                    continue
                wiggle = hash_uniform(self.seed, 0x80AE, i, j, di + 2, dj + 2, np.arange(2)) * 2 - 1
                roads.append(_winding(np.asarray(a), np.asarray(b), wiggle))
        return roads


def _span(centres: np.ndarray, at: float, radius: float) -> slice:
    """The slice of sorted (ascending or descending) pixel centres within ``radius`` of ``at``."""
    near = np.flatnonzero(np.abs(centres - at) <= radius)
    return slice(int(near[0]), int(near[-1]) + 1) if near.size else slice(0, 0)


def _winding(a: np.ndarray, b: np.ndarray, wiggle: np.ndarray, n: int = 12) -> shapely.LineString:
    t = np.linspace(0.0, 1.0, n + 1)
    along = b - a
    normal = np.array([-along[1], along[0]])
    offset = 0.08 * wiggle[0] * np.sin(np.pi * t) + 0.04 * wiggle[1] * np.sin(2 * np.pi * t)
    pts = a[None, :] + t[:, None] * along[None, :] + offset[:, None] * normal[None, :]
    return shapely.LineString(pts)


class _Segments:
    """Exact distance from points to the nearest of many line segments (a town is a segment of length 0).

    Points are grouped by cells of a global lattice; for each cell only the segments that can hold the nearest one
    (centre distance within the cell's diameter of the best) are measured. The result depends only on the points'
    coordinates, not on how they are batched, so windows and scattered points agree exactly.
    """

    CELL = 500.0
    FAR = 1e5  # metres reported when there is no segment at all

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        self.a = np.asarray(a, dtype="float64").reshape(-1, 2)
        self.b = np.asarray(b, dtype="float64").reshape(-1, 2)
        self.d = self.b - self.a
        self.len2 = np.maximum((self.d**2).sum(axis=1), 1e-12)

    def _distance(self, px: np.ndarray, py: np.ndarray, seg: np.ndarray) -> np.ndarray:
        ax, ay = self.a[seg, 0][None, :], self.a[seg, 1][None, :]
        dx, dy = self.d[seg, 0][None, :], self.d[seg, 1][None, :]
        rx, ry = px[:, None] - ax, py[:, None] - ay
        t = np.clip((rx * dx + ry * dy) / self.len2[seg][None, :], 0.0, 1.0)
        return np.hypot(rx - t * dx, ry - t * dy)

    def nearest(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance, segment index) for each point; FAR and 0 when there are no segments."""
        dist = np.full(px.shape, self.FAR)
        index = np.zeros(px.shape, dtype="int64")
        if not len(self.a) or not px.size:
            return dist, index
        # One int64 key per lattice cell (offset so both halves are non-negative), grouped by a stable sort.
        ci = np.floor(px / self.CELL).astype("int64") + (1 << 30)
        cj = np.floor(py / self.CELL).astype("int64") + (1 << 30)
        key = (ci << 31) | cj
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        ends = np.r_[starts[1:], len(order)]
        half = self.CELL / np.sqrt(2.0)
        for s0, s1 in zip(starts, ends, strict=True):
            members = order[s0:s1]
            k = int(sorted_key[s0])
            centre = (np.array([k >> 31, k & ((1 << 31) - 1)], dtype="float64") - (1 << 30) + 0.5) * self.CELL
            dc = self._distance(centre[:1], centre[1:], np.arange(len(self.a)))[0]
            cand = np.flatnonzero(dc <= dc.min() + 2.0 * half)
            d = self._distance(px[members], py[members], cand)
            best = np.argmin(d, axis=1)
            dist[members] = d[np.arange(len(members)), best]
            index[members] = cand[best]
        return dist, index


# --- writing --------------------------------------------------------------------------------------------------------
def _lonlat_grid(grid: Grid, res: float) -> tuple[Affine, int, int]:
    """A WorldClim-style lon/lat raster (edges on multiples of ``res`` from -180/90) covering ``grid`` + a margin."""
    lon0, lat0, lon1, lat1 = grid.lonlat_bounds()
    margin = max(3 * res, 0.02 * max(lon1 - lon0, lat1 - lat0))
    left = math.floor(round((lon0 - margin + 180.0) / res, 6)) * res - 180.0
    right = math.ceil(round((lon1 + margin + 180.0) / res, 6)) * res - 180.0
    bottom = 90.0 - math.ceil(round((90.0 - (lat0 - margin)) / res, 6)) * res
    top = 90.0 - math.floor(round((90.0 - (lat1 + margin)) / res, 6)) * res
    width, height = round((right - left) / res), round((top - bottom) / res)
    return rasterio.transform.from_origin(left, top, res, res), width, height


def _windows(height: int, width: int, size: int):
    for r0 in range(0, height, size):
        for c0 in range(0, width, size):
            yield slice(r0, min(height, r0 + size)), slice(c0, min(width, c0 + size))


def _start(sim: SimConfig) -> datetime:
    try:
        return datetime.fromisoformat(sim.start).replace(tzinfo=UTC)
    except ValueError:
        raise EnvError(f"sim.start={sim.start!r} is not an ISO date (e.g. 2024-01-01)") from None


def write_environment(
    sim: SimConfig,
    grid: Grid,
    out_dir: Path,
    *,
    collection_id: str = "virtual-environment",
    progress: bool = False,
) -> list[pystac.Item]:
    """Write the environment as COGs + GeoParquet + a STAC collection in ``out_dir``; returns the items.

    Continuous variables go to EPSG:4326 at ``sim.env_resolution_deg`` over the region plus a margin (WorldClim-like:
    consumers must reproject), land cover to a uint8 EPSG:3035 COG at ``sim.s2_resolution`` (nodata 0), towns and
    roads to GeoParquet (assets of the land-cover item with role ``vector``). One item per layer, asset key = name.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = Environment(sim, grid)
    when = _start(sim)
    try:
        lc_grid = grid.at_resolution(sim.s2_resolution)
    except GridError as exc:
        raise EnvError(f"land cover at sim.s2_resolution={sim.s2_resolution}: {exc}") from None
    transform, width, height = _lonlat_grid(grid, sim.env_resolution_deg)
    size = sim.chunk
    paths = {v: out_dir / f"{v}.tif" for v in (*ENV_VARIABLES, "land_cover")}
    n_win = len(list(_windows(height, width, size))) + int(np.prod(lc_grid.n_tiles(size)))
    bar = tqdm(total=n_win, desc="environment windows", disable=not progress)
    writers = {
        v: CogWriter(paths[v], width=width, height=height, transform=transform, crs=4326, dtype="float32",
                     nodata=ENV_NODATA, band_name=v)
        for v in ENV_VARIABLES
    }  # fmt: skip
    try:
        for ys, xs in _windows(height, width, size):
            cols, rows = np.meshgrid(np.arange(xs.start, xs.stop), np.arange(ys.start, ys.stop))
            lon, lat = rasterio.transform.xy(transform, rows.ravel(), cols.ravel(), offset="center")
            px, py = to_grid_crs(np.asarray(lon), np.asarray(lat), 4326)
            values = env.at_points(px, py)
            for v, writer in writers.items():
                writer.write(values[v].reshape(rows.shape), (ys, xs))
            bar.update()
        for writer in writers.values():
            writer.close()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    with CogWriter(paths["land_cover"], width=lc_grid.width, height=lc_grid.height, transform=lc_grid.transform,
                   crs=lc_grid.epsg, dtype="uint8", nodata=0, overview_resampling="mode",
                   band_name="land_cover") as writer:  # fmt: skip
        for tile in lc_grid.tiles(size):
            sub = lc_grid.subgrid(*tile.slices)
            writer.write(env.layers(sub.x, sub.y)["land_cover"], tile.slices)
            bar.update()
    bar.close()
    vectors = write_vectors(env, out_dir)

    items = []
    for v in (*ENV_VARIABLES, "land_cover"):
        item = item_from_cogs(f"{collection_id}-{v}", when, [AssetSpec(v, str(paths[v].resolve()))],
                              collection=collection_id, properties={"geoplantnet:virtual": True})  # fmt: skip
        band = item.assets[v].extra_fields["raster:bands"][0]
        band["unit"] = ENV_UNITS.get(v, "class")
        if layer_classes(v):
            item.properties["classification:classes"] = [{"value": k, "name": n} for k, n in layer_classes(v).items()]
        if v == "land_cover":
            for key, path in vectors.items():
                item.add_asset(
                    key,
                    pystac.Asset(str(path.resolve()), media_type="application/vnd.apache.parquet", roles=["vector"]),
                )
        items.append(item)
    description = "virtual environmental layers (climate, soil, terrain, land cover)"
    collection = collection_for(collection_id, items, description)
    write_collection(collection, items, out_dir)
    return items


def write_vectors(env: Environment, out_dir: Path) -> dict[str, Path]:
    """Towns (points with radius) and roads (lines) of the region as GeoParquet in EPSG:3035."""
    towns = gpd.GeoDataFrame(
        {"town_id": np.arange(len(env.towns), dtype="int32"), "radius_m": env.town_radius.astype("float32")},
        geometry=gpd.points_from_xy(env.towns[:, 0], env.towns[:, 1]),
        crs=env.grid.crs,
    )
    roads = gpd.GeoDataFrame(
        {"road_id": np.arange(len(env.roads), dtype="int32")}, geometry=list(env.roads), crs=env.grid.crs
    )
    paths = {"towns": Path(out_dir) / "towns.parquet", "roads": Path(out_dir) / "roads.parquet"}
    towns.to_parquet(paths["towns"])
    roads.to_parquet(paths["roads"])
    return paths
