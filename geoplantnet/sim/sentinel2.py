"""Virtual Sentinel-2 L2A time series of the region: ten bands, SCL, clouds, shadows, snow, phenology, orbit edges.

Each date renders the environment's ground (:meth:`Environment.surface`) as a linear mix of a green canopy and a
background per land-cover class, ``fc * canopy + (1 - fc) * background``, where the green fraction ``fc`` follows a
seasonal curve of the class and the pixel (a double logistic with green-up delayed by elevation; deciduous forest
bare in winter, conifers evergreen, winter and summer crops with an abrupt harvest that rotate by parcel and year,
meadows mown once). Snow covers the ground where the date's temperature (annual mean + a seasonal cycle with the
region's seasonality + weather) is below freezing; the slope facing the sun is brighter. Clouds are thresholds of a
per-date random field (so the cloud fraction varies from date to date around ``sim.cloud_cover_mean``, with some
clear dates), semi-transparent at their edges with bright flat spectra; their shadows are the same field displaced by
a fixed sun offset and darken the ground; thin cirrus veils some dates. Some dates have an orbit (swath) edge across
the region: no data beyond it in every band and in SCL.

Encoding is that of L2A since processing baseline 04.00: ``DN = reflectance * 10000 + 1000`` as uint16, 0 = no data,
and the items carry ``raster:bands`` scale 0.0001 and offset -0.1. The SCL band is at 20 m with the real class codes.
Everything is a pure function of (seed, coordinates, date), generated window by window into COGs; a date renders
the land cover of its calendar year (:meth:`Environment.year_land_cover`), so a multi-year series shows the region's
land-cover changes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pystac
import rasterio.env
from scipy.special import ndtri
from tqdm.auto import tqdm

from geoplantnet.core.config import SimConfig
from geoplantnet.core.grid import Grid, GridError
from geoplantnet.sim.environment import Environment
from geoplantnet.sim.fields import RandomField, hash_uniform, mesh
from geoplantnet.sources.cog import CogWriter
from geoplantnet.sources.stac_items import AssetSpec, collection_for, item_from_cogs, write_collection

S2_BANDS: dict[str, tuple[float, float, str | None]] = {
    "B02": (10.0, 0.490, "blue"),
    "B03": (10.0, 0.560, "green"),
    "B04": (10.0, 0.665, "red"),
    "B05": (20.0, 0.705, "rededge"),
    "B06": (20.0, 0.740, None),
    "B07": (20.0, 0.783, None),
    "B08": (10.0, 0.842, "nir"),
    "B8A": (20.0, 0.865, "nir08"),
    "B11": (20.0, 1.610, "swir16"),
    "B12": (20.0, 2.190, "swir22"),
}
SCL_CLASSES: dict[int, str] = {
    0: "no_data",
    1: "saturated",
    2: "dark",
    3: "cloud_shadow",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium",
    9: "cloud_high",
    10: "thin_cirrus",
    11: "snow",
}
SCALE, OFFSET = 0.0001, -0.1  # reflectance = DN * SCALE + OFFSET (baseline >= 04.00)
NODATA = 0
CLOUD_SCL = (8, 9, 10)  # what eo:cloud_cover counts (medium, high probability, thin cirrus), as Sen2Cor does
SHADOW_OFFSET = (170.0, -360.0)  # metres from a shadow to the cloud that casts it (sun in the south-south-east)
SWATH_TILT_DEG = 13.0  # swath edges run about 13 degrees off grid north
SEASONS = ((12, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11))  # meteorological: DJF, MAM, JJA, SON
BANDS = tuple(S2_BANDS)
GDAL_CACHE_BYTES = 64 * 2**20

# Endmember reflectances for B02 B03 B04 B05 B06 B07 B08 B8A B11 B12 (surface reflectance, 0-1).
_SPECTRA = {
    "broadleaf": (0.030, 0.060, 0.030, 0.090, 0.280, 0.380, 0.420, 0.440, 0.220, 0.100),
    "conifer": (0.020, 0.040, 0.020, 0.060, 0.170, 0.220, 0.250, 0.260, 0.120, 0.050),
    "grass": (0.035, 0.070, 0.035, 0.110, 0.300, 0.380, 0.400, 0.420, 0.250, 0.120),
    "crop": (0.030, 0.070, 0.030, 0.100, 0.320, 0.420, 0.460, 0.480, 0.240, 0.110),
    "litter": (0.060, 0.090, 0.120, 0.150, 0.180, 0.200, 0.220, 0.240, 0.300, 0.220),
    "soil": (0.080, 0.110, 0.150, 0.180, 0.210, 0.230, 0.250, 0.270, 0.330, 0.280),
    "urban": (0.080, 0.100, 0.110, 0.120, 0.140, 0.150, 0.160, 0.170, 0.200, 0.180),
    "water": (0.050, 0.045, 0.030, 0.020, 0.012, 0.010, 0.008, 0.007, 0.004, 0.003),
    "rock": (0.120, 0.140, 0.160, 0.180, 0.200, 0.210, 0.220, 0.230, 0.270, 0.220),
    "asphalt": (0.070, 0.080, 0.090, 0.095, 0.100, 0.105, 0.110, 0.115, 0.130, 0.120),
    "snow": (0.850, 0.840, 0.820, 0.800, 0.780, 0.750, 0.720, 0.700, 0.120, 0.080),
    "cloud": (0.560, 0.550, 0.540, 0.540, 0.550, 0.560, 0.570, 0.570, 0.430, 0.300),
    "cirrus": (0.300, 0.300, 0.300, 0.300, 0.300, 0.300, 0.300, 0.300, 0.220, 0.160),
}
# Per land-cover class 1..9: canopy endmember, background endmember(s) with weights, and phenology
# (base, amplitude, green-up doy, senescence doy, green-up rate, senescence rate (days)).
_CLASSES = {
    1: ("grass", {"urban": 1.0}, (0.10, 0.15, 110, 290, 8, 12)),
    2: ("crop", {"soil": 1.0}, (0.05, 0.85, 110, 215, 8, 2)),  # replaced per parcel by the crop type
    3: ("grass", {"litter": 0.7, "soil": 0.3}, (0.35, 0.50, 85, 300, 10, 15)),
    4: ("broadleaf", {"litter": 1.0}, (0.12, 0.82, 115, 290, 6, 8)),
    5: ("conifer", {"litter": 0.6, "soil": 0.4}, (0.62, 0.20, 100, 290, 12, 20)),
    6: ("grass", {"litter": 0.5, "soil": 0.5}, (0.25, 0.35, 120, 270, 10, 12)),
    7: ("grass", {"water": 0.5, "litter": 0.5}, (0.15, 0.60, 125, 275, 8, 10)),
    8: ("grass", {"water": 1.0}, (0.00, 0.00, 150, 250, 10, 10)),
    9: ("grass", {"rock": 1.0}, (0.02, 0.06, 160, 250, 10, 10)),
}
# Crop types on cropland parcels (share, green-up, harvest, autumn cover of winter crops).
_CROPS = ((0.45, 75, 200, 0.25), (0.35, 150, 265, 0.0), (0.20, 105, 215, 0.0))


class Sentinel2Error(ValueError):
    """A grid, configuration or output folder the Sentinel-2 simulation cannot use."""


# --- dates and per-date plans ----------------------------------------------------------------------------------------
def _season_windows(start: datetime, years: int) -> list[tuple[datetime, datetime]]:
    """4 x ``years`` consecutive meteorological seasons from the one holding ``start``, the first clipped to it."""
    first = next(i for i, months in enumerate(SEASONS) if start.month in months)
    m0 = SEASONS[first][0]
    month0 = (start.year - (1 if m0 > start.month else 0)) * 12 + (m0 - 1)  # months since year 0

    def at(months: int) -> datetime:
        return datetime(months // 12, months % 12 + 1, 1, tzinfo=UTC)

    return [(max(at(month0 + 3 * k), start), at(month0 + 3 * k + 3)) for k in range(4 * years)]


def acquisition_dates(sim: SimConfig) -> list[datetime]:
    """``sim.years`` x 4 seasons x ``sim.dates_per_season`` overpass times (UTC, about 10:30 local), seeded jitter."""
    try:
        start = datetime.fromisoformat(sim.start).replace(tzinfo=UTC)
    except ValueError:
        raise Sentinel2Error(f"sim.start={sim.start!r} is not an ISO date (e.g. 2024-01-01)") from None
    rng = np.random.default_rng([sim.seed, 0x5E2DA7E])
    dates = []
    n = sim.dates_per_season
    for lo, hi in _season_windows(start, sim.years):
        span = (hi - lo).total_seconds() / 86400.0
        for i in range(n):
            day = (i + 0.5 + rng.uniform(-0.3, 0.3)) * span / n
            when = lo + timedelta(days=math.floor(day), seconds=int(rng.integers(9 * 3600 + 1800, 10 * 3600 + 2400)))
            dates.append(when)
    return sorted(dates)


@dataclass(frozen=True)
class DatePlan:
    """Everything that varies by date (drawn once per region, before any window is rendered)."""

    index: int
    when: datetime
    platform: str
    relative_orbit: int
    cloud_fraction: float  # target fraction of the region under thick cloud (0 = clear date)
    cirrus: bool
    swath: tuple[float, float, float, int] | None  # (x at y_ref, y_ref, dx/dy, side: -1 nodata west, +1 east)
    sun_zenith: float  # degrees
    sun_azimuth: float  # degrees from north, clockwise
    weather: float  # degC anomaly of the date (cold spells bring snow)
    phenology_shift: float  # days, one per year (early or late spring)

    @property
    def doy(self) -> int:
        return self.when.timetuple().tm_yday

    @property
    def item_id(self) -> str:
        sat = "S2A" if self.platform.endswith("a") else "S2B"
        return f"{sat}_MSIL2A_{self.when:%Y%m%dT%H%M%S}_R{self.relative_orbit:03d}"


def _sun(lat: float, doy: int, hour_angle: float = -22.5) -> tuple[float, float]:
    """Solar zenith and azimuth (degrees) at ``hour_angle`` (about 10:30 local solar time)."""
    decl = math.radians(23.44 * math.sin(2 * math.pi * (284 + doy) / 365.0))
    phi, h = math.radians(lat), math.radians(hour_angle)
    cos_z = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(h)
    zenith = math.degrees(math.acos(max(-1.0, min(1.0, cos_z))))
    az = math.degrees(math.atan2(math.sin(h), math.cos(h) * math.sin(phi) - math.tan(decl) * math.cos(phi))) + 180.0
    return zenith, az % 360.0


def plan_dates(sim: SimConfig, grid: Grid) -> list[DatePlan]:
    """The per-date draws for ``grid``'s region: cloud fraction, cirrus, orbit edge, sun, weather."""
    dates = acquisition_dates(sim)
    rng = np.random.default_rng([sim.seed, 0x5E2C10D])
    _, lat0, _, lat1 = grid.lonlat_bounds()
    lat = 0.5 * (lat0 + lat1)
    epoch = datetime(2015, 6, 23, tzinfo=UTC)  # Sentinel-2A launch: platform and orbit follow the date
    years = sorted({d.year for d in dates})
    shift = {y: float(np.random.default_rng([sim.seed, 0xFE7, y]).normal(0.0, 5.0)) for y in years}
    m = sim.cloud_cover_mean
    mean_cloudy = min(0.95, m / 0.7)
    plans = []
    for i, when in enumerate(dates):
        days = (when - epoch).days
        clear = rng.uniform() < 0.3 or m == 0.0
        k = 4.0
        frac = float(rng.beta(max(k * mean_cloudy, 1e-3), max(k * (1 - mean_cloudy), 1e-3)))
        cirrus = bool(rng.uniform() < 0.3)
        edge = rng.uniform() < 0.25
        u, side, tilt = rng.uniform(0.2, 0.8), int(rng.choice([-1, 1])), rng.normal(SWATH_TILT_DEG, 1.5)
        weather = float(rng.normal(0.0, 2.5))
        swath = None
        if edge:
            xmin, ymin, xmax, ymax = grid.bounds
            swath = (xmin + u * (xmax - xmin), 0.5 * (ymin + ymax), math.tan(math.radians(tilt)), side)
        zenith, azimuth = _sun(lat, when.timetuple().tm_yday)
        plans.append(
            DatePlan(
                index=i,
                when=when,
                platform="sentinel-2a" if (days // 5) % 2 == 0 else "sentinel-2b",
                relative_orbit=1 + (days * 43) % 143,
                cloud_fraction=0.0 if clear else min(frac, 0.98),
                cirrus=cirrus and not clear,
                swath=swath,
                sun_zenith=zenith,
                sun_azimuth=azimuth,
                weather=weather,
                phenology_shift=shift[when.year],
            )
        )
    if len(plans) >= 3 and all(p.cloud_fraction > 0 for p in plans) and m < 1.0:
        # Some clear dates, always: the least cloudy one becomes clear.
        j = min(range(len(plans)), key=lambda q: plans[q].cloud_fraction)
        plans[j] = replace(plans[j], cloud_fraction=0.0, cirrus=False)
    return plans


# --- the ground -------------------------------------------------------------------------------------------------
def _spectrum(name: str) -> np.ndarray:
    return np.asarray(_SPECTRA[name], dtype="float32")


def _class_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(canopy (10, 10), background (10, 10), phenology (10, 6)) indexed by land-cover code (row 0 unused)."""
    canopy = np.zeros((10, len(BANDS)), dtype="float32")
    background = np.zeros((10, len(BANDS)), dtype="float32")
    pheno = np.zeros((10, 6), dtype="float32")
    for code, (can, bg, ph) in _CLASSES.items():
        canopy[code] = _spectrum(can)
        background[code] = sum(w * _spectrum(n) for n, w in bg.items())
        pheno[code] = ph
    return canopy, background, pheno


_CANOPY, _BACKGROUND, _PHENO = _class_tables()


@dataclass
class _Scene:
    """The static ground of one window at one resolution."""

    lc: np.ndarray
    elevation: np.ndarray
    temperature: np.ndarray
    amplitude: np.ndarray  # seasonal temperature amplitude (degC) from BIO4
    gx: np.ndarray
    gy: np.ndarray
    parcel: np.ndarray
    brightness: np.ndarray  # multiplies the background (soil colour by geology; water turbidity)
    texture: np.ndarray  # multiplies the canopy (stand density)
    road: np.ndarray  # asphalt fraction of the pixel
    mow: np.ndarray  # doy of the first cut of meadows (0: pasture, not mown)
    x: np.ndarray
    y: np.ndarray
    resolution: float


def _scene(
    env: Environment, sub: Grid, year: int | None = None, surface: dict[str, np.ndarray] | None = None
) -> _Scene:
    """The ground of window ``sub`` with the land cover of ``year`` (default: the first year); ``surface`` is
    ``env.surface(sub.x, sub.y)`` when the caller has it already (the other layers do not change with the year)."""
    s = env.surface(sub.x, sub.y) if surface is None else surface
    if year is not None and env.changes:
        s = {**s, "land_cover": env.year_land_cover(s["land_cover"], sub.x, sub.y, year)[0]}
    seed = env.seed
    lc = s["land_cover"]
    geology = np.clip((s["soil_ph"] - 4.0) / 4.5, 0.0, 1.0)
    texture_field = RandomField(_seed(seed, 0x7E47), 150.0, n_waves=32)(sub.x, sub.y)
    brightness = (0.75 + 0.5 * geology + 0.06 * texture_field).astype("float32")
    texture = (1.0 + 0.07 * texture_field).astype("float32")
    road = np.clip(1.0 - s["road_distance"] / (0.5 * sub.resolution + 3.5), 0.0, 1.0) * 0.7
    road[lc == 8] = 0.0
    meadow = (lc == 3) & (s["parcel"] < 0.6) & (s["elevation"] < 1400)
    mow = np.where(meadow, 150.0 + 30.0 * hash_uniform(seed, 0x30A, (s["parcel"] * 2**30).astype("int64")), 0.0)
    return _Scene(
        lc=lc,
        elevation=s["elevation"],
        temperature=s["temperature"],
        amplitude=(s["seasonality"] / 100.0 * math.sqrt(2.0)).astype("float32"),
        gx=s["elev_dx"],
        gy=s["elev_dy"],
        parcel=s["parcel"],
        brightness=brightness,
        texture=texture,
        road=road.astype("float32"),
        mow=mow.astype("float32"),
        x=sub.x,
        y=sub.y,
        resolution=sub.resolution,
    )


def _sig(z: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype("float32")


def green_fraction(scene: _Scene, plan: DatePlan, seed: int) -> np.ndarray:
    """Green vegetation cover (0-1) of each pixel on the plan's date."""
    t = np.float32(plan.doy)
    p = _PHENO[scene.lc]  # (h, w, 6)
    base, amp, g, s, rg, rs = (p[..., i] for i in range(6))
    aut = np.zeros_like(base)
    crop = scene.lc == 2
    if crop.any():  # crop type rotates by parcel and year
        u = hash_uniform(seed, 0xC209, plan.when.year, (scene.parcel[crop] * 2**30).astype("int64"))
        edges = np.cumsum([c[0] for c in _CROPS])
        kind = np.searchsorted(edges, u, side="right").clip(0, len(_CROPS) - 1)
        table = np.asarray(_CROPS, dtype="float32")
        g, s = g.copy(), s.copy()
        g[crop], s[crop], aut[crop] = table[kind, 1], table[kind, 2], table[kind, 3]
    lift = np.clip(scene.elevation - 300.0, 0.0, None)
    g = g + 0.035 * lift + plan.phenology_shift
    s = s - 0.02 * lift
    fc = base + amp * _sig((t - g) / rg) * _sig((s - t) / rs) + aut * (_sig((t - 285.0) / 8.0) + _sig((g - t) / rg))
    mown = scene.mow > 0
    if mown.any():
        m = scene.mow[mown]
        fc[mown] *= 1.0 - 0.55 * _sig((t - m) / 1.5) * _sig((m + 25.0 - t) / 5.0)
    return np.clip(fc * scene.texture, 0.0, 1.0).astype("float32")


def _illumination(scene: _Scene, plan: DatePlan) -> tuple[np.ndarray, np.ndarray]:
    """(brightness factor of the terrain facing the sun, cosine of the local incidence angle)."""
    z, az = math.radians(plan.sun_zenith), math.radians(plan.sun_azimuth)
    sx, sy = math.sin(z) * math.sin(az), math.sin(z) * math.cos(az)
    cos_i = (math.cos(z) - scene.gx * sx - scene.gy * sy) / np.sqrt(1.0 + scene.gx**2 + scene.gy**2)
    factor = np.clip(1.0 + 0.6 * (cos_i / max(math.cos(z), 0.1) - 1.0), 0.25, 1.5)
    return factor.astype("float32"), cos_i.astype("float32")


def _snow(scene: _Scene, plan: DatePlan, seed: int) -> np.ndarray:
    """Snow fraction: the date's temperature (mean + seasonal cycle + weather) below freezing."""
    cycle = np.float32(math.cos(2 * math.pi * (plan.doy - 200) / 365.25))
    weather = RandomField(_seed(seed, 0x5A0, plan.index), 15_000.0, n_waves=16)(scene.x, scene.y)
    t_day = scene.temperature + scene.amplitude * cycle + plan.weather + 1.5 * weather
    snow = np.clip((0.5 - t_day) / 3.0, 0.0, 1.0)
    snow[scene.lc == 8] = 0.0
    snow[(scene.lc == 4) | (scene.lc == 5)] *= 0.5  # canopy hides snow on the ground
    return snow.astype("float32")


# --- the sky ------------------------------------------------------------------------------------------------------
def _seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([int(seed), *keys]).generate_state(1)[0])


def _cloud_field(seed: int, plan: DatePlan) -> tuple[RandomField, RandomField]:
    return (
        RandomField(_seed(seed, 0xC10D, plan.index), 1_800.0, n_waves=48),
        RandomField(_seed(seed, 0xC10E, plan.index), 400.0, n_waves=32),
    )


def _opacity(fields: tuple[RandomField, RandomField], plan: DatePlan, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Thick-cloud opacity 0-1 on the grid of (x, y): the field above the date's quantile, soft at the edges."""
    if plan.cloud_fraction <= 0:
        return np.zeros((len(y), len(x)), dtype="float32")
    big, small = fields
    c = (0.85 * big(x, y) + 0.5 * small(x, y)) / np.float32(math.hypot(0.85, 0.5))
    threshold = float(ndtri(1.0 - plan.cloud_fraction))
    return np.clip((c - threshold) / 0.6, 0.0, 1.0).astype("float32")


@dataclass
class _Sky:
    cloud: np.ndarray
    shadow: np.ndarray
    cirrus: np.ndarray
    valid: np.ndarray


def _sky(scene: _Scene, plan: DatePlan, seed: int) -> _Sky:
    x, y = scene.x, scene.y
    fields = _cloud_field(seed, plan)
    cloud = _opacity(fields, plan, x, y)
    shadow = _opacity(fields, plan, x + SHADOW_OFFSET[0], y + SHADOW_OFFSET[1])
    if plan.cirrus:
        ci = RandomField(_seed(seed, 0xC1A, plan.index), 6_000.0, n_waves=32)(x, y)
        cirrus = (0.25 * np.clip((ci - 0.3) / 0.8, 0.0, 1.0)).astype("float32")
    else:
        cirrus = np.zeros_like(cloud)
    valid = np.ones(cloud.shape, dtype=bool)
    if plan.swath is not None:
        x_ref, y_ref, tilt, side = plan.swath
        # Decided per 20 m cell (its centre), so a 10 m pixel is missing exactly when its 20 m pixel and SCL are.
        px, py = mesh(np.floor(x / 20.0) * 20.0 + 10.0, np.floor(y / 20.0) * 20.0 + 10.0)
        edge = x_ref + tilt * (py - y_ref)
        valid = np.broadcast_to((px - edge) * side < 0, cloud.shape).copy()
    return _Sky(cloud, shadow, cirrus, valid)


# --- rendering ------------------------------------------------------------------------------------------------------
def _render(scene: _Scene, plan: DatePlan, seed: int, bands: tuple[str, ...], with_scl: bool):
    """Reflectance per band (float32, before encoding) and, if asked, the SCL classes, for one window and date."""
    fc = green_fraction(scene, plan, seed)
    snow = _snow(scene, plan, seed)
    light, cos_i = _illumination(scene, plan)
    sky = _sky(scene, plan, seed)
    shade = (1.0 - 0.7 * sky.shadow * (1.0 - sky.cloud)) * light
    cloud_brightness = 0.75 + 0.25 * sky.cloud
    out = {}
    for band in (*bands, *(("B04", "B8A") if with_scl else ())):
        if band in out:
            continue
        b = BANDS.index(band)
        ground = fc * _CANOPY[scene.lc, b] * scene.texture + (1.0 - fc) * _BACKGROUND[scene.lc, b] * scene.brightness
        ground += scene.road * (_SPECTRA["asphalt"][b] - ground)
        ground += snow * (_SPECTRA["snow"][b] - ground)
        surface = ground * shade
        surface += sky.cirrus * (_SPECTRA["cirrus"][b] - surface)
        surface += sky.cloud * (_SPECTRA["cloud"][b] * cloud_brightness - surface)
        out[band] = surface.astype("float32")
    scl = _classify(scene, out, snow, cos_i, sky) if with_scl else None
    return {k: v for k, v in out.items() if k in bands}, sky.valid, scl


def _classify(scene: _Scene, refl: dict[str, np.ndarray], snow, cos_i, sky: _Sky) -> np.ndarray:
    red, nir = refl["B04"], refl["B8A"]
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    scl = np.full(scene.lc.shape, 5, dtype="uint8")
    scl[ndvi > 0.4] = 4
    scl[scene.lc == 8] = 6
    scl[cos_i < 0.08] = 2
    scl[snow > 0.5] = 11
    scl[(sky.shadow > 0.3) & (sky.cloud <= 0.25)] = 3
    scl[(sky.cloud > 0.1) & (sky.cloud <= 0.25)] = 7
    scl[(sky.cirrus > 0.05) & (sky.cloud <= 0.25)] = 10
    scl[(sky.cloud > 0.25) & (sky.cloud <= 0.6)] = 8
    scl[sky.cloud > 0.6] = 9
    scl[~sky.valid] = NODATA
    return scl


def encode(reflectance: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """L2A digital numbers: reflectance * 10000 + 1000 as uint16 (1..65535), 0 where not ``valid``."""
    dn = np.clip(np.rint(reflectance * 10_000.0 + 1_000.0), 1, 65_535).astype("uint16")
    dn[~valid] = NODATA
    return dn


# --- windows and files ------------------------------------------------------------------------------------------
def _grids(grid: Grid, sim: SimConfig) -> tuple[Grid, Grid]:
    if abs(grid.resolution - 10.0) > 1e-9:
        raise Sentinel2Error(f"write_sentinel2 needs the region at 10 m (sim.s2_resolution), got {grid.resolution} m")
    try:
        return grid, grid.at_resolution(20.0)
    except GridError as exc:
        raise Sentinel2Error(f"the region must also tile at 20 m for the 20 m bands and SCL: {exc}") from None


def _windows(fine: Grid, coarse: Grid, chunk: int) -> Iterator[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """(10 m slices, 20 m slices) of matching windows of about ``chunk`` 10 m pixels."""
    for tile in coarse.tiles(max(1, chunk // 2)):
        ys, xs = tile.slices
        yield (slice(2 * ys.start, 2 * ys.stop), slice(2 * xs.start, 2 * xs.stop)), (ys, xs)


def _asset_path(out_dir: Path, plan: DatePlan, key: str) -> Path:
    return out_dir / plan.item_id / f"{key}.tif"


def _render_dates(sim: SimConfig, grid: Grid, env: Environment, out_dir: Path, plans: list[DatePlan], progress: bool):
    """Render ``plans`` window by window into COGs; returns {date index: SCL class counts}."""
    fine, coarse = _grids(grid, sim)
    fine_bands = tuple(b for b, (res, _, _) in S2_BANDS.items() if res == 10.0)
    coarse_bands = tuple(b for b in BANDS if b not in fine_bands)
    writers: dict[tuple[int, str], CogWriter] = {}
    for plan in plans:
        for key in (*BANDS, "SCL"):
            target = fine if key in fine_bands else coarse
            writers[(plan.index, key)] = CogWriter(
                _asset_path(out_dir, plan, key),
                width=target.width,
                height=target.height,
                transform=target.transform,
                crs=target.epsg,
                dtype="uint8" if key == "SCL" else "uint16",
                nodata=NODATA,
                overview_resampling="nearest" if key == "SCL" else "average",
                band_name=key,
            )
    counts = {p.index: np.zeros(len(SCL_CLASSES), dtype="int64") for p in plans}
    windows = list(_windows(fine, coarse, sim.chunk))
    # GDAL keeps dirty blocks of the tiled files in its cache (5 % of RAM by default): bound it, so memory follows
    # the window, not the number of open files.
    rasterio.env.set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_BYTES)
    bar = tqdm(total=len(windows) * len(plans), desc="sentinel-2 windows x dates", disable=not progress)
    try:
        for fine_win, coarse_win in windows:
            sub10, sub20 = fine.subgrid(*fine_win), coarse.subgrid(*coarse_win)
            ground10, ground20 = env.surface(sub10.x, sub10.y), env.surface(sub20.x, sub20.y)
            scenes: dict[int, tuple[_Scene, _Scene]] = {}
            for plan in plans:
                # each date sees the land cover of its calendar year
                year = plan.when.year
                if year not in scenes:
                    scenes[year] = (_scene(env, sub10, year, ground10), _scene(env, sub20, year, ground20))
                scene10, scene20 = scenes[year]
                refl, valid, _ = _render(scene10, plan, env.seed, fine_bands, with_scl=False)
                for band, r in refl.items():
                    writers[(plan.index, band)].write(encode(r, valid), fine_win)
                refl, valid, scl = _render(scene20, plan, env.seed, coarse_bands, with_scl=True)
                for band, r in refl.items():
                    writers[(plan.index, band)].write(encode(r, valid), coarse_win)
                writers[(plan.index, "SCL")].write(scl, coarse_win)
                counts[plan.index] += np.bincount(scl.ravel(), minlength=len(SCL_CLASSES))[: len(SCL_CLASSES)]
                bar.update()
        for w in writers.values():
            w.close()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()
    return counts


def _mgrs_like(grid: Grid) -> str:
    """A stable, MGRS-looking tile id: real UTM zone and latitude band, square letters from the region's corner."""
    lon0, lat0, lon1, lat1 = grid.lonlat_bounds()
    lon, lat = 0.5 * (lon0 + lon1), 0.5 * (lat0 + lat1)
    zone = int((lon + 180) // 6) + 1
    band = "CDEFGHJKLMNPQRSTUVWXX"[int((lat + 80) // 8)]
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    u = hash_uniform(0, int(grid.left), int(grid.top), np.arange(2))
    return f"{zone:02d}{band}{letters[int(u[0] * 24)]}{letters[int(u[1] * 20)]}"


def _item(plan: DatePlan, out_dir: Path, counts: np.ndarray, tile: str, collection_id: str) -> pystac.Item:
    valid = int(counts[1:].sum())
    pct = {code: 100.0 * int(counts[code]) / max(valid, 1) for code in SCL_CLASSES if code}
    cloud = sum(pct[c] for c in CLOUD_SCL)
    props = {
        "platform": plan.platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": round(cloud, 4),
        "s2:mgrs_tile": tile,
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": "05.10",
        "s2:nodata_pixel_percentage": round(100.0 * int(counts[0]) / max(int(counts.sum()), 1), 4),
        "s2:cloud_shadow_percentage": round(pct[3], 4),
        "s2:vegetation_percentage": round(pct[4], 4),
        "s2:not_vegetated_percentage": round(pct[5], 4),
        "s2:water_percentage": round(pct[6], 4),
        "s2:snow_ice_percentage": round(pct[11], 4),
        "s2:thin_cirrus_percentage": round(pct[10], 4),
        "sat:relative_orbit": plan.relative_orbit,
        "view:sun_azimuth": round(plan.sun_azimuth, 3),
        "view:sun_elevation": round(90.0 - plan.sun_zenith, 3),
        "geoplantnet:virtual": True,
    }
    specs = [
        AssetSpec(b, str(_asset_path(out_dir, plan, b).resolve()), common, wl, scale=SCALE, offset=OFFSET)
        for b, (_, wl, common) in S2_BANDS.items()
    ]
    specs.append(AssetSpec("SCL", str(_asset_path(out_dir, plan, "SCL").resolve())))
    item = item_from_cogs(f"{plan.item_id}_T{tile}", plan.when, specs, collection=collection_id, properties=props)
    item.assets["SCL"].extra_fields["classification:classes"] = [
        {"value": k, "name": v} for k, v in SCL_CLASSES.items()
    ]
    return item


def write_sentinel2(
    sim: SimConfig,
    grid: Grid,
    env: Environment,
    out_dir: Path,
    *,
    collection_id: str = "virtual-sentinel-2-l2a",
    progress: bool = False,
    workers: int = 1,
) -> list[pystac.Item]:
    """Write the time series as COGs (one per band per date; 10 m bands on ``grid``, 20 m bands and SCL on
    ``grid.at_resolution(20)``, EPSG:3035) plus ``collection.json`` and ``items.ndjson``; returns the items.

    Memory is bounded by ``sim.chunk`` (one window of every band of the dates being rendered), not by the region.
    ``workers`` > 1 renders the dates in that many spawned processes (the calling script needs an
    ``if __name__ == "__main__":`` guard, as for any spawned multiprocessing); the output is the same bytes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _grids(grid, sim)
    plans = plan_dates(sim, grid)
    workers = max(1, min(int(workers), len(plans), os.cpu_count() or 1))
    if workers == 1:
        counts = _render_dates(sim, grid, env, out_dir, plans, progress)
    else:
        counts = {}
        groups = [plans[w::workers] for w in range(workers)]
        # Spawned processes: the work is many small numpy calls, so threads serialise on the GIL, and a forked child
        # can deadlock on locks GDAL's thread pool held at fork time. Spawn needs a __main__ guard in scripts.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_render_dates, sim, grid, env, out_dir, g, False) for g in groups]
            for fut in tqdm(futures, desc="sentinel-2 workers", disable=not progress):
                counts.update(fut.result())
    tile = _mgrs_like(grid)
    items = [_item(p, out_dir, counts[p.index], tile, collection_id) for p in plans]
    description = "virtual Sentinel-2 L2A surface reflectance (baseline 05.10 encoding: DN = 10000 * rho + 1000)"
    write_collection(collection_for(collection_id, items, description), items, out_dir)
    return items
