"""Landscape scenarios for in-silico impact assessment: what a project (or a restoration) does to a model's inputs.

A scenario (a small YAML file, :class:`Scenario`) names the land cover a footprint gets, and how far its edge effects
reach. It is applied to the *inputs* of the models, never to their outputs, so every model (species, habitats through
the species, value) answers the same question: what would it predict on the changed landscape?

- **Inside the footprint** (pixel centres inside the polygons) the land-cover layer becomes the new class, and every
  Sentinel-2 composite channel (bands and indices, each season) becomes the new class's *typical value*: the median
  over the pixels of that class near the footprint (:func:`learn_signature`), learned from the region itself rather
  than from a spectral library, so it carries the region's phenology, sensor and compositing.
- **In the buffer** (0 < distance <= ``buffer_m``) the land cover is kept and the composite moves towards the new class
  by ``edge_strength x (1 - distance / buffer_m)``: dust, trampling, drainage and light at a new edge, fading with
  distance. That is an assumption of the scenario, stated in every report, not something the models learned; its
  default is 0 (no edge effect), the only value data without observed edge effects support (the virtual region's
  generator has none). The buffer still changes where the species network's receptive field sees the footprint.
- **Missing data is kept missing, and data kept data**: a season that is NaN (cloud) before stays NaN after, and a
  season the new class has no typical value for keeps its values, so the models' data masks are the same before and
  after and a change is always the land's, never a difference in data gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.features
import shapely
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geoplantnet.core.errors import ConfigError, InputError
from geoplantnet.core.grid import Grid


class ScenarioError(InputError):
    """A scenario or footprint file that cannot be used (one line, exit 2)."""


class Scenario(BaseModel):
    """What a project or a restoration does to the landscape (``scenario.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="short name (letters, digits, . _ -): the report folder"
    )
    land_cover: int | str = Field(description="the class the footprint becomes: a code or a declared class name")
    buffer_m: float = Field(100.0, ge=0, description="edge-effect distance around the footprint (metres)")
    edge_strength: float = Field(
        0.0,
        ge=0,
        le=1,
        description="at the footprint edge, the share of the way its imagery moves to the new cover: an assumption "
        "(dust, drainage, light) no model learned; 0, the default, assumes no edge effect beyond what the models "
        "read of the changed footprint itself",
    )
    context_m: float = Field(2000.0, gt=0, description="typical values are learned within this distance")
    min_context_pixels: int = Field(25, ge=1, description="fewest pixels of the new class to learn its values from")
    variable: str = Field("land_cover", description="the categorical land-cover layer of the environment")
    description: str = ""


def load_scenario(path: str | Path) -> Scenario:
    """Read and check a scenario YAML file; a bad file gives one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"scenario {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ScenarioError(f"scenario {path}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"scenario {path}: expected a mapping of settings, got {type(raw).__name__}")
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "scenario"
        raise ScenarioError(f"scenario {path}: {where}: {err['msg']}") from None


def resolve_class(scenario: Scenario, classes: dict[int, str]) -> int:
    """The land-cover code a scenario names (a code or a class name of the layer's declared classes)."""
    if isinstance(scenario.land_cover, int) or str(scenario.land_cover).isdigit():
        code = int(scenario.land_cover)
        if classes and code not in classes:
            raise ConfigError(
                f"scenario {scenario.name}: land_cover {code} is not a class of the layer {_listed(classes)}"
            )
        return code
    wanted = str(scenario.land_cover).strip().lower().replace("-", "_").replace(" ", "_")
    for code, name in classes.items():
        if name.lower().replace("-", "_").replace(" ", "_") == wanted:
            return int(code)
    raise ConfigError(f"scenario {scenario.name}: land_cover '{scenario.land_cover}' is not a class {_listed(classes)}")


def _listed(classes: dict[int, str]) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in sorted(classes.items())) + ")"


@dataclass(frozen=True)
class Zone:
    """Where a scenario acts on one window: ``inside`` the footprint (bool, y x) and the buffer's ``edge`` weight
    (float32, y x; 0 inside the footprint and beyond the buffer)."""

    inside: np.ndarray
    edge: np.ndarray
    distance: np.ndarray  # metres from the footprint (0 inside; inf beyond the buffer's reach)

    @property
    def touched(self) -> bool:
        return bool(self.inside.any() or (self.edge > 0).any())


def zone(geometry: Any, window: Grid, buffer_m: float, strength: float) -> Zone:
    """The footprint ``geometry`` (grid CRS) on ``window``: pixel centres inside it, and each buffer pixel's edge
    weight ``strength x (1 - d / buffer_m)`` (d: distance of its centre to the footprint)."""
    shape = window.shape
    inside = rasterio.features.geometry_mask(
        [geometry], out_shape=shape, transform=window.transform, invert=True, all_touched=False
    )
    distance = np.full(shape, np.inf, dtype="float32")
    distance[inside] = 0.0
    edge = np.zeros(shape, dtype="float32")
    if buffer_m > 0:
        # only the rows and columns the buffer can reach: distances are computed for those centres alone
        x0, y0, x1, y1 = shapely.buffer(geometry, buffer_m + window.resolution).bounds
        cols = np.flatnonzero((window.x >= x0) & (window.x <= x1))
        rows = np.flatnonzero((window.y >= y0) & (window.y <= y1))
        if cols.size and rows.size:
            xx, yy = np.meshgrid(window.x[cols], window.y[rows])
            d = shapely.distance(shapely.points(xx, yy), geometry).astype("float32")
            box = np.ix_(rows, cols)
            near = (d > 0) & (d <= buffer_m) & ~inside[box]
            block = distance[box]
            block[near] = d[near]
            distance[box] = block
            w = np.where(near, strength * (1.0 - d / buffer_m), 0.0).astype("float32")
            edge[box] = w
    return Zone(inside, edge, distance)


def learn_signature(
    composite: np.ndarray, land_cover: np.ndarray, target: int, *, min_pixels: int, where: str
) -> np.ndarray:
    """The typical composite (season, band) of class ``target``: per channel the median over its pixels with data.
    A season no pixel of the class has data for stays NaN (it is NaN in the edited inputs too)."""
    pixels = land_cover == target
    n = int(pixels.sum())
    if n < min_pixels:
        raise ScenarioError(
            f"{where}: only {n} pixels of land-cover class {target} to learn its typical imagery from "
            f"(min_context_pixels {min_pixels}); raise the scenario's context_m"
        )
    values = composite[:, :, pixels]  # (season, band, n)
    with np.errstate(all="ignore"):
        out = np.nanmedian(np.where(np.isfinite(values), values, np.nan), axis=-1) if values.size else values
    return np.asarray(out, dtype="float32")


def dominant_class(env: np.ndarray, names: list[str], variable: str) -> tuple[np.ndarray, dict[int, int]]:
    """The class code (y, x) of a one-hot categorical ``variable`` (layers ``{variable}_{code}``, as
    :func:`geoplantnet.sources.predictors.model_stack` gives them; -1 where no layer is set) and its layer index per
    code."""
    layers = one_hot_layers(names, variable)
    if not layers:
        raise ScenarioError(f"the environment has no '{variable}' layers (one-hot '{variable}_<code>'): {names[:12]}")
    codes = np.array(sorted(layers))
    stack = np.stack([np.nan_to_num(env[layers[c]], nan=0.0) for c in codes])
    out = np.where(stack.max(axis=0) > 0.5, codes[np.argmax(stack, axis=0)], -1)
    return out.astype("int16"), layers


def one_hot_layers(names: list[str], variable: str) -> dict[int, int]:
    """Class code -> index in ``names`` of the one-hot layers ``{variable}_{code}``."""
    prefix = f"{variable}_"
    return {
        int(n[len(prefix) :]): i for i, n in enumerate(names) if n.startswith(prefix) and n[len(prefix) :].isdigit()
    }


def edit_composite(values: np.ndarray, where: Zone, signature: np.ndarray) -> np.ndarray:
    """The composite (season, band, y, x) after the scenario: the footprint takes the new class's typical values,
    the buffer moves towards them by its edge weight; NaN (no data) stays NaN and data stays data (a channel without
    a typical value keeps its values), so the data mask is the same before and after."""
    out = values.copy()
    target = signature[:, :, None]
    if where.inside.any():
        inner = out[:, :, where.inside]
        typical = np.broadcast_to(target, inner.shape)
        # no data stays no data, and data stays data: a season the class has no typical value for keeps its values
        out[:, :, where.inside] = np.where(np.isnan(inner) | np.isnan(typical), inner, typical)
    ring = where.edge > 0
    if ring.any():
        w = where.edge[ring]
        outer = out[:, :, ring]
        moved = outer + w * (np.where(np.isnan(target), outer, target) - outer)
        out[:, :, ring] = moved
    return out


def edit_environment(values: np.ndarray, names: list[str], where: Zone, variable: str, code: int) -> np.ndarray:
    """The environment (var, y, x) after the scenario: inside the footprint the one-hot ``variable`` layers say
    ``code`` (pixels with no data stay NaN); continuous layers (terrain, climate, soil) are unchanged."""
    out = values.copy()
    layers = one_hot_layers(names, variable)
    if not layers or not where.inside.any():
        return out
    if code not in layers:
        raise ScenarioError(f"the class {code} has no '{variable}_{code}' layer in the model's inputs")
    for c, i in layers.items():
        layer = out[i]
        layer[where.inside] = np.where(np.isnan(layer[where.inside]), np.nan, 1.0 if c == code else 0.0)
    return out
