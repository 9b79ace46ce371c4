"""In-silico impact assessment (``geoplantnet impact``) and offset ranking (``geoplantnet offsets``).

A scenario (:mod:`geoplantnet.products.scenarios`) edits the models' inputs inside a footprint and its buffer; only the
map tiles whose predictions can change (the footprint, its buffer and the models' receptive field) are predicted
again, before and after, on the cluster. Every tile runs the map's species model, the habitat classifier and the
indicator computation exactly as the fused indicators mode does (:class:`geoplantnet.jobs.indicators.FusedPredictor`,
the same calibration), and the value model at 10 m when there is one. The change's uncertainty comes from
Monte-Carlo dropout draws of the species and value networks, paired before/after (the same dropout masks on both
landscapes), so it is the spread of the *change* under the models' own uncertainty, not of the two levels.

On the virtual region the same scenario is applied to the generator's truth (:func:`geoplantnet.runs.inputs.
virtual_scenario_truth`) and the report gives predicted versus true change.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely

from geoplantnet.core.config import RunConfig, redact, redact_text
from geoplantnet.core.errors import ConfigError, GeoplantnetError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.inference.dense import decode
from geoplantnet.jobs.habitat_map import ClassifierFolder
from geoplantnet.jobs.indicators import (
    FusedPredictor,
    FusedSetup,
    FusedTileJob,
    fused_setup,
    indicator_inputs,
    plan_fused_indicators,
    tile_seed,
    under_root,
)
from geoplantnet.jobs.mapping import MapSources, ModelFile, ensure_model, read_model
from geoplantnet.jobs.value import ValueModelFile, cell_stats, default_value_model, plan_value_predictor
from geoplantnet.products.indicators import IndicatorModel, indicator_blocks
from geoplantnet.products.scenarios import (
    Scenario,
    ScenarioError,
    Zone,
    dominant_class,
    edit_composite,
    edit_environment,
    learn_signature,
    load_scenario,
    one_hot_layers,
    resolve_class,
    zone,
)
from geoplantnet.samples.vectors import read_polygons
from geoplantnet.storage.outputs import claim_folder, finish_folder, place, place_json
from geoplantnet.storage.store import exists, is_local, join, storage_options_for

if TYPE_CHECKING:
    from distributed import Client

REPORT_FILES = ("summary.json", "report.md", "maps.png", "impact.gpkg")
OFFSET_FILES = ("summary.json", "report.md", "offsets.csv", "offsets.gpkg")
ZONES = ("footprint", "buffer", "surroundings")  # zone codes 1, 2, 3 of a pixel (0: not part of the assessment)
CONTEXT_STEPS = (1, 3, 9)  # context_m multiples searched for the new class's pixels
COUNTS = ("richness", "threatened", "invasive", "protected")  # groups summed per Monte-Carlo draw when present


class ImpactError(GeoplantnetError):
    """An impact assessment or offset ranking that cannot run as asked (one line, exit 2)."""


# -- the edited inputs


@dataclass(frozen=True)
class ScenarioEdit:
    """One scenario on one footprint, as the tile tasks apply it."""

    geometry: Any  # shapely, the grid's CRS
    scenario: Scenario
    code: int  # the footprint's new land-cover class
    signature: Mapping[str, np.ndarray]  # composite channel -> (season,) typical values of the new class

    def where(self, window: Grid, *, buffer: bool = True) -> Zone:
        s = self.scenario
        return zone(self.geometry, window, s.buffer_m if buffer else 0.0, s.edge_strength)


@dataclass(frozen=True)
class ScenarioSources(MapSources):
    """The run's sources with a scenario applied to every window read: any model reading through them (species,
    value) sees the changed landscape."""

    edit: ScenarioEdit | None = None

    def composite(self, window: Grid, bands: Sequence[str]) -> np.ndarray:
        values = super().composite(window, bands)
        if self.edit is None:
            return values
        where = self.edit.where(window)
        if not where.touched:
            return values
        missing = [b for b in bands if b not in self.edit.signature]
        if missing:
            raise ImpactError(f"the scenario learned no typical values for the channels {missing}")
        signature = np.stack([self.edit.signature[b] for b in bands], axis=1)  # (season, band)
        return edit_composite(values, where, signature)

    def environment(self, window: Grid, names: Sequence[str], *, check: bool = True) -> np.ndarray:
        values = super().environment(window, names, check=check)
        if self.edit is None:
            return values
        where = self.edit.where(window, buffer=False)
        return edit_environment(values, list(names), where, self.edit.scenario.variable, self.edit.code)


def with_edit(sources: MapSources, edit: ScenarioEdit) -> ScenarioSources:
    """``sources`` reading the landscape ``edit`` makes."""
    fields = {name: getattr(sources, name) for name in MapSources.__dataclass_fields__}
    return ScenarioSources(**fields, edit=edit)


def land_cover_classes(sources: MapSources, variable: str) -> dict[int, str]:
    """The classes (code -> name) the land-cover layer's items declare (empty when they declare none)."""
    import pystac

    from geoplantnet.sources.predictors import class_names

    items = [pystac.Item.from_dict(dict(raw)) for raw in sources.env_items or () if variable in raw.get("assets", {})]
    return class_names(items, variable)


def learn_edit(
    sources: MapSources, cube_grid: Grid, geometry: Any, scenario: Scenario, env_names: Sequence[str]
) -> ScenarioEdit:
    """The scenario made concrete around ``geometry``: its class code and the class's typical composite, learned on
    the cube grid within ``context_m`` of the footprint (clipped to the region). A rare class (a few towns in a
    rural region) is looked for in a context three and nine times as wide before the scenario is refused."""
    code = scenario_code(scenario, land_cover_classes(sources, scenario.variable), env_names)
    bands = sources.band_names()
    where = f"scenario {scenario.name}"
    for widen in CONTEXT_STEPS:
        context = context_window(cube_grid, geometry, scenario.context_m * widen)
        env = sources.environment(context, list(env_names))
        land_cover, _ = dominant_class(env, list(env_names), scenario.variable)
        if (land_cover == code).sum() >= scenario.min_context_pixels or widen == CONTEXT_STEPS[-1]:
            break
    composite = sources.composite(context, bands)
    typical = learn_signature(composite, land_cover, code, min_pixels=scenario.min_context_pixels, where=where)
    return ScenarioEdit(geometry, scenario, code, {b: typical[:, i] for i, b in enumerate(bands)})


def scenario_code(scenario: Scenario, classes: Mapping[int, str], env_names: Sequence[str]) -> int:
    """The land-cover code the scenario gives the footprint: a class the layer declares (``classes``), and one the
    species model takes as an input layer (``env_names``: its variables)."""
    code = resolve_class(scenario, dict(classes))
    if code not in one_hot_layers(list(env_names), scenario.variable):
        raise ScenarioError(f"scenario {scenario.name}: the models take no '{scenario.variable}_{code}' layer")
    return code


def model_variables(spec: Any, model_url: str) -> tuple[str, ...]:
    """The environmental variables the species model takes (its file must name them: the scenario edits one)."""
    if spec.variables is None:
        raise ImpactError(f"the species model {redact({'u': model_url})['u']} records no variable names")
    return tuple(spec.variables)


def context_window(grid: Grid, geometry: Any, margin_m: float) -> Grid:
    """The part of ``grid`` within ``margin_m`` of the geometry's bounding box."""
    x0, y0, x1, y1 = geometry.bounds
    rows = np.flatnonzero((grid.y >= y0 - margin_m) & (grid.y <= y1 + margin_m))
    cols = np.flatnonzero((grid.x >= x0 - margin_m) & (grid.x <= x1 + margin_m))
    if not rows.size or not cols.size:
        raise ScenarioError(f"the footprint {tuple(round(v) for v in geometry.bounds)} lies outside the region")
    return grid.subgrid(slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))


# -- one tile, before and after


@dataclass(frozen=True)
class ImpactTileJob:
    """Everything an impact tile task needs besides its tile."""

    before: FusedPredictor
    after: FusedPredictor
    indicators: IndicatorModel
    map_grid: Grid
    geometry: Any
    buffer_m: float
    draws: int
    seed: int
    value_before: Any | None = None  # jobs.value.ValuePredictor on the run's sources
    value_after: Any | None = None  # the same on the scenario's sources
    value_factor: int = 1  # value pixels per map pixel side


def _zones(job: ImpactTileJob, tile: Tile) -> np.ndarray:
    where = zone(job.geometry, job.map_grid.subgrid(*tile.slices), job.buffer_m, 1.0)
    out = np.full(where.inside.shape, 3, dtype="int8")
    out[where.edge > 0] = 2
    out[where.inside] = 1
    return out


def _zone_sums(values: np.ndarray, zones: np.ndarray) -> np.ndarray:
    """(..., 3) sums of ``values`` (..., y, x) over each zone (NaN as 0)."""
    v = np.nan_to_num(values, nan=0.0)
    return np.stack([v[..., zones == z].sum(axis=-1) for z in (1, 2, 3)], axis=-1)


def _calibrated(p: np.ndarray, model: IndicatorModel) -> np.ndarray:
    return model.calibration.apply(p, axis=0) if model.calibration is not None else p


def _group_counts(p: np.ndarray, model: IndicatorModel) -> dict[str, np.ndarray]:
    """Expected counts (y, x) of the indicator groups from calibrated probabilities (species, y, x)."""
    return {g: p[np.asarray(mask)].sum(axis=0) for g, mask in model.groups.items() if g in COUNTS}


def _fine(tile: Tile, factor: int) -> Tile:
    """The tile on the value grid (``factor`` value pixels per map pixel side, the same origin)."""
    return Tile(tile.row, tile.col, tile.y0 * factor, tile.x0 * factor, tile.height * factor, tile.width * factor,
                tile.id)  # fmt: skip


def coarsen(values: np.ndarray, factor: int) -> np.ndarray:
    """The 50 m cell means of 10 m values: the value job's aggregate rule (:func:`jobs.value.cell_stats`)."""
    return cell_stats(values, factor)[0].astype("float32")


def impact_tile(job: ImpactTileJob, tile: Tile) -> dict[str, Any]:
    """A tile before and after the scenario: indicator blocks, top habitat class, per-species expected cover per
    zone, and per Monte-Carlo draw the zones' summed counts and value (runs on a worker)."""
    t0 = time.perf_counter()
    zones = _zones(job, tile)
    out: dict[str, Any] = {"tile": tile.id, "y0": tile.y0, "x0": tile.x0, "zones": zones}
    model = job.indicators
    for state, fused, value in (("before", job.before, job.value_before), ("after", job.after, job.value_after)):
        inputs = fused.species.read(tile)  # once: the draws run the network again on the same windows
        p, top, top_p, _ = fused.classify(*fused.species.forward(inputs))
        blocks = indicator_blocks(p, model, habitat_top=top, habitat_top_probability=top_p, seed=tile_seed(tile))
        out[state] = {
            "blocks": blocks,
            "habitat": top[0] if top is not None else None,
            "species_cover": _zone_sums(_calibrated(p, model), zones),  # (S, 3) expected pixels
        }
        draws = []
        for k in range(job.draws):
            codes, _ = fused.species.forward(inputs, dropout_seed=job.seed + k)
            counts = _group_counts(_calibrated(decode(codes), model), model)
            draws.append({g: _zone_sums(v, zones) for g, v in counts.items()})
            draws[-1]["richness_pixels"] = counts["richness"]
        out[state]["draws"] = {g: np.stack([d[g] for d in draws]) for g in draws[0]} if draws else {}
        if value is not None:
            fine = _fine(tile, job.value_factor)
            features = value.read(fine)  # once for the map's values and the draws
            out[state]["value"] = coarsen(value.predict_window(features, fine)[0], job.value_factor)
            if job.draws:
                sampled = value.predict_window(features, fine, draws=job.draws, seed=job.seed)
                out[state]["value_draws"] = coarsen(sampled, job.value_factor)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


# -- the driver


@dataclass(frozen=True)
class ImpactPlan:
    """What every assessment of a run shares: the fused predictor and indicator model (calibrated once), the value
    predictor, the grids and the models' reach."""

    cfg: RunConfig
    sources: MapSources
    fused: FusedPredictor
    indicators: IndicatorModel
    map_grid: Grid
    cube_grid: Grid
    tile: int
    reach_m: float  # how far beyond an edited pixel a model's prediction can change (its receptive field)
    env_names: tuple[str, ...]
    species: tuple[str, ...]
    species_names: tuple[str, ...]
    classes: tuple[str, ...] | None
    value: Any | None
    draws: int
    seed: int
    versions: dict[str, str]
    notes: list[str] = field(default_factory=list)


def _species_reach(spec: Any, map_grid: Grid, cube_grid: Grid) -> float:
    reach = 0.0
    for modality, res in (("patch", cube_grid.resolution), ("env", map_grid.resolution)):
        if modality in getattr(spec, "modalities", {}):
            reach = max(reach, max(spec.halo(modality)) * res)
    return reach + map_grid.resolution


def plan_impact(
    client: Client,
    cfg: RunConfig,
    setup: FusedSetup,
    value: Any | None,
) -> ImpactPlan:
    """The species model, classifier and indicator calibration as ``indicators --from-model`` plans them (``setup``:
    :func:`~geoplantnet.jobs.indicators.fused_setup`, checked before the cluster started), and the value predictor
    (:func:`~geoplantnet.jobs.value.plan_value_predictor`) when there is a value model."""
    from geoplantnet.models.mc_dropout import has_dropout

    sources = setup.fused.species.sources
    # the plan's output store is never written (nor read): named under store.root, where the run's storage options
    # apply (a local name with them set is refused as credentials meant for elsewhere)
    iplan = plan_fused_indicators(client, cfg, setup, join(cfg.store.root, ".impact-plan.zarr"))
    job = iplan.job
    if not isinstance(job, FusedTileJob):  # pragma: no cover - plan_fused_indicators always makes one
        raise TypeError(type(job))
    model_ref, spec = setup.fused.species.model, setup.spec
    species_model, _, _ = read_model(model_ref.url)
    notes = []
    if not has_dropout(species_model):
        notes.append("the species model has no dropout: its Monte-Carlo draws are all equal (no species spread)")
    map_grid, cube_grid = cfg.grid.grid(), cfg.grid.grid(cfg.cube.resolution)
    reach = _species_reach(spec, map_grid, cube_grid)
    if value is not None:
        reach = max(reach, value_reach_m(value))
    else:
        notes.append("no value model (run `geoplantnet value` first): biodiversity value is not assessed")
    versions = dict(job.model.versions)
    if value is not None:
        versions["value_model"] = f"value-unet/{value.model.sha256[:12]}"
    return ImpactPlan(
        cfg=cfg,
        sources=sources,
        fused=job.fused,
        indicators=job.model,
        map_grid=map_grid,
        cube_grid=cube_grid,
        tile=cfg.map.tile,
        reach_m=reach,
        env_names=model_variables(spec, model_ref.url),
        species=iplan.species,
        species_names=tuple(str(n) for n in (spec.species_name or spec.species)),
        classes=job.model.habitats.codes if job.model.habitats is not None else None,
        value=value,
        draws=cfg.impact.draws,
        seed=cfg.impact.seed,
        versions=versions,
        notes=notes,
    )


def draws_of(plan: ImpactPlan) -> dict[str, Any]:
    """What makes two runs' draws the same thinned networks: the value model's content, the seed and the count."""
    return {
        "value_model": plan.value.model.sha256 if plan.value is not None else None,
        "seed": plan.seed,
        "draws": plan.draws,
    }


def value_factor(plan: ImpactPlan) -> int:
    """Value pixels per map pixel side (5: 10 m in 50 m)."""
    if plan.value is None:
        return 1
    ratio = plan.map_grid.resolution / plan.value.grid.resolution
    if abs(ratio - round(ratio)) > 1e-9:
        raise ImpactError(f"the value grid ({plan.value.grid.resolution} m) does not divide the map's cells")
    return round(ratio)


def value_reach_m(value: Any) -> float:
    """How far the value network sees beyond a pixel (metres)."""
    return float(value.halo) * float(value.grid.resolution)


@dataclass
class Assessment:
    """One scenario on one footprint, assembled over its affected tiles on the window ``grid`` of the map grid."""

    edit: ScenarioEdit
    grid: Grid
    zones: np.ndarray  # (y, x) 1 footprint, 2 buffer, 3 surroundings, 0 outside the affected tiles
    before: dict[str, np.ndarray]  # indicator variables (y, x) (+ "habitat", "value")
    after: dict[str, np.ndarray]
    species_cover: dict[str, np.ndarray]  # state -> (S, 3) expected pixels per zone
    draws: dict[str, dict[str, np.ndarray]]  # state -> group -> (K, 3) sums per zone; "richness_pixels" (K, y, x)
    value_draws: dict[str, np.ndarray]  # state -> (K, y, x)
    tiles: int
    seconds: float


def affected_tiles(plan: ImpactPlan, geometry: Any, buffer_m: float) -> list[Tile]:
    """The map tiles whose predictions the scenario can change: within the buffer plus the models' reach."""
    reach = shapely.buffer(geometry, buffer_m + plan.reach_m)
    out = []
    for tile in plan.map_grid.tiles(plan.tile):
        if shapely.intersects(shapely.box(*plan.map_grid.subgrid(*tile.slices).bounds), reach):
            out.append(tile)
    return out


def assess_many(client: Client, plan: ImpactPlan, edits: Sequence[ScenarioEdit], progress: bool) -> list[Assessment]:
    """Every edit's affected tiles predicted before and after, all on the cluster at once."""
    from distributed import as_completed
    from tqdm import tqdm

    t0 = time.perf_counter()
    jobs, tiles = [], []
    for edit in edits:
        after_sources = with_edit(plan.sources, edit)
        after = replace(plan.fused, species=replace(plan.fused.species, sources=after_sources))
        jobs.append(
            ImpactTileJob(
                before=plan.fused,
                after=after,
                indicators=plan.indicators,
                map_grid=plan.map_grid,
                geometry=edit.geometry,
                buffer_m=edit.scenario.buffer_m,
                draws=plan.draws,
                seed=plan.seed,
                value_before=plan.value,
                value_after=replace(plan.value, sources=after_sources) if plan.value is not None else None,
                value_factor=value_factor(plan),
            )
        )
        tiles.append(affected_tiles(plan, edit.geometry, edit.scenario.buffer_m))
    resources = plan.fused.resources(client)
    futures = {}
    for i, (job, these) in enumerate(zip(jobs, tiles, strict=True)):
        scattered = client.scatter(job, broadcast=False)
        for tile in these:
            futures[client.submit(impact_tile, scattered, tile, resources=resources, pure=False)] = i
    results: list[list[dict[str, Any]]] = [[] for _ in edits]
    bar = tqdm(total=len(futures), desc="impact tiles", disable=not progress)
    for future in as_completed(futures):
        results[futures[future]].append(future.result())
        bar.update()
    bar.close()
    seconds = time.perf_counter() - t0
    return [_assemble(plan, edit, rows, seconds) for edit, rows in zip(edits, results, strict=True)]


def _assemble(plan: ImpactPlan, edit: ScenarioEdit, rows: list[dict[str, Any]], seconds: float) -> Assessment:
    if not rows:
        raise ScenarioError(f"scenario {edit.scenario.name}: the footprint touches no tile of the region")
    y0 = min(r["y0"] for r in rows)
    x0 = min(r["x0"] for r in rows)
    y1 = max(r["y0"] + r["zones"].shape[0] for r in rows)
    x1 = max(r["x0"] + r["zones"].shape[1] for r in rows)
    window = plan.map_grid.subgrid(slice(y0, y1), slice(x0, x1))
    zones = np.zeros(window.shape, dtype="int8")
    states: dict[str, dict[str, np.ndarray]] = {"before": {}, "after": {}}
    cover = {s: np.zeros((len(plan.species), 3)) for s in states}
    draws: dict[str, dict[str, np.ndarray]] = {s: {} for s in states}
    value_draws: dict[str, np.ndarray] = {}
    k = plan.draws
    for r in rows:
        ys = slice(r["y0"] - y0, r["y0"] - y0 + r["zones"].shape[0])
        xs = slice(r["x0"] - x0, r["x0"] - x0 + r["zones"].shape[1])
        zones[ys, xs] = r["zones"]
        for state, grids in states.items():
            part = r[state]
            layers = {**part["blocks"], "habitat": part["habitat"], "value": part.get("value")}
            for name, block in layers.items():
                if block is None:
                    continue
                if name not in grids:
                    fill = np.nan if np.issubdtype(block.dtype, np.floating) else -1
                    grids[name] = np.full(window.shape, fill, dtype=block.dtype)
                grids[name][ys, xs] = block
            cover[state] += part["species_cover"]
            for group, values in part["draws"].items():
                if group == "richness_pixels":
                    target = draws[state].setdefault(group, np.full((k, *window.shape), np.nan, "float32"))
                    target[:, ys, xs] = values
                else:
                    draws[state][group] = draws[state].get(group, 0) + values
            if "value_draws" in part:
                target = value_draws.setdefault(state, np.full((k, *window.shape), np.nan, "float32"))
                target[:, ys, xs] = part["value_draws"]
    return Assessment(edit, window, zones, states["before"], states["after"], cover, draws, value_draws, len(rows),
                      round(seconds, 1))  # fmt: skip


# -- what changed


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.nanquantile(values, [(1 - level) / 2, (1 + level) / 2]) if np.isfinite(values).any() else (np.nan,) * 2
    return float(lo), float(hi)


def _mean(values: np.ndarray, mask: np.ndarray) -> float:
    v = values[mask]
    v = v[np.isfinite(v)] if np.issubdtype(v.dtype, np.floating) else v
    return float(v.mean()) if v.size else float("nan")


def _r(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def summarise(plan: ImpactPlan, a: Assessment) -> dict[str, Any]:
    """The change in every indicator, species, habitat and value inside and around the footprint, with Monte-Carlo
    intervals (at ``indicators.level``) of the counts' and value's change."""
    level = plan.cfg.indicators.level
    pixel_ha = plan.map_grid.resolution**2 / 1e4
    masks = {name: a.zones == z for z, name in enumerate(ZONES, start=1)}
    out: dict[str, Any] = {
        "zones": {
            n: {"pixels": int(m.sum()), "area_ha": round(float(m.sum()) * pixel_ha, 2)} for n, m in masks.items()
        },
        "indicators": {},
    }
    for name, before in a.before.items():
        if name == "habitat":
            continue
        after = a.after[name]
        if not np.issubdtype(before.dtype, np.floating):  # flags: the share of pixels
            before, after = (np.where(x >= 0, x.astype("float32"), np.nan) for x in (before, after))
        out["indicators"][name] = {
            zone_name: {
                "before": _mean(before, m),
                "after": _mean(after, m),
                "change": _mean(after - before, m),
            }
            for zone_name, m in masks.items()
        }
    out["change_intervals"] = {
        group: {name: {"lower": lo, "upper": hi} for name, (lo, hi) in zones.items()}
        for group, zones in summarise_intervals(plan, a).items()
    }
    if "value" in a.before:
        out["value"] = _value_summary(plan, a, masks, pixel_ha, level)
    out["species"] = _species_summary(plan, a, pixel_ha)
    if plan.classes is not None and "habitat" in a.before:
        out["habitats"] = _habitat_summary(plan, a, masks, pixel_ha)
    return out


def _value_summary(
    plan: ImpactPlan, a: Assessment, masks: Mapping[str, np.ndarray], pixel_ha: float, level: float
) -> dict[str, Any]:
    """Mean value per zone and value-hectares (the sum of value x area, a habitat-hectare-like quantity)."""
    before, after = a.before["value"], a.after["value"]
    out: dict[str, Any] = {}
    for name, m in masks.items():
        change_ha = float(np.nansum((after - before)[m]) * pixel_ha)
        row = {
            "before": _mean(before, m),
            "after": _mean(after, m),
            "change": _mean(after - before, m),
            "value_ha_before": float(np.nansum(before[m]) * pixel_ha),
            "value_ha_change": change_ha,
        }
        if a.value_draws:
            draws = np.nansum((a.value_draws["after"] - a.value_draws["before"])[:, m], axis=1) * pixel_ha
            row["value_ha_change_lower"], row["value_ha_change_upper"] = _interval(draws, level)
            row["value_ha_change_draws"] = [round(float(d), 4) for d in draws]
        out[name] = row
    return out


def _species_summary(plan: ImpactPlan, a: Assessment, pixel_ha: float, top: int = 10) -> dict[str, Any]:
    """Expected occupied area (sum of calibrated probability x pixel area) in the footprint and buffer, before and
    after, and the species that lose or gain the most."""
    before = a.species_cover["before"][:, :2].sum(axis=1) * pixel_ha
    after = a.species_cover["after"][:, :2].sum(axis=1) * pixel_ha
    change = after - before
    order = np.argsort(change)

    def rows(idx: np.ndarray) -> list[dict[str, Any]]:
        return [
            {
                "species": plan.species[i],
                "name": plan.species_names[i],
                "area_ha_before": round(float(before[i]), 3),
                "area_ha_after": round(float(after[i]), 3),
                "change_ha": round(float(change[i]), 3),
            }
            for i in idx
        ]

    halved = int(((before > 0) & (after < 0.5 * before)).sum())
    return {
        "losses": rows(order[:top]),
        "gains": rows(order[::-1][:top]),
        "species_losing_half": halved,
        "expected_species_area_change_ha": round(float(change.sum()), 3),
    }


def _habitat_summary(plan: ImpactPlan, a: Assessment, masks: Mapping[str, np.ndarray], pixel_ha: float) -> dict:
    """Habitat area (top class) before and after in the footprint and buffer, and the transitions."""
    classes = plan.classes or ()
    near = masks["footprint"] | masks["buffer"]
    before, after = a.before["habitat"][near], a.after["habitat"][near]
    pairs: dict[tuple[int, int], int] = {}
    for b, c in zip(before.tolist(), after.tolist(), strict=True):
        pairs[(b, c)] = pairs.get((b, c), 0) + 1

    def code(i: int) -> str:
        return classes[i] if 0 <= i < len(classes) else "no data"

    transitions = [
        {"before": code(b), "after": code(c), "area_ha": round(n * pixel_ha, 2)}
        for (b, c), n in sorted(pairs.items(), key=lambda kv: -kv[1])
        if b != c
    ]
    changed = float((before != after).mean()) if before.size else float("nan")
    return {"changed_share": changed, "transitions": transitions[:15]}


def evaluate_truth(plan: ImpactPlan, a: Assessment) -> dict[str, Any]:
    """The generator's truth under the same scenario on the same window: true versus predicted change of richness,
    threatened species, habitats and value (the truth's value score: richness + 4 x threatened), per zone and per
    pixel. Edge effects are the scenario's assumption only: the generator's species do not see them."""
    from geoplantnet.runs.inputs import virtual_scenario_truth

    before, after, codes = virtual_scenario_truth(plan.cfg, a.grid, a.zones == 1, a.edit.code)
    masks = {name: a.zones == z for z, name in enumerate(ZONES, start=1)}
    near = masks["footprint"] | masks["buffer"]
    out: dict[str, Any] = {"zones": {}}
    pred = {g: a.after.get(f"{g}_expected") - a.before.get(f"{g}_expected") for g in ("richness", "threatened")
            if f"{g}_expected" in a.before}  # fmt: skip
    true = {"richness": after.richness - before.richness, "threatened": after.threatened - before.threatened}
    intervals = summarise_intervals(plan, a)
    for name, m in masks.items():
        row: dict[str, Any] = {}
        for g, d in pred.items():
            row[f"{g}_change_predicted"] = _mean(d, m)
            row[f"{g}_change_true"] = _mean(true[g], m)
            lo, hi = intervals.get(g, {}).get(name, (np.nan, np.nan))
            row[f"{g}_true_in_interval"] = bool(lo <= row[f"{g}_change_true"] <= hi) if np.isfinite(lo) else None
        row["value_score_change_true"] = _mean(after.value_score - before.value_score, m)
        if "value" in a.before:
            row["value_change_predicted"] = _mean(a.after["value"] - a.before["value"], m)
        out["zones"][name] = row
    out["pixel_r"] = {g: _r(d[near], true[g][near]) for g, d in pred.items()}
    if "value" in a.before:
        d_value = (a.after["value"] - a.before["value"])[near]
        out["pixel_r"]["value_vs_value_score"] = _r(d_value, (after.value_score - before.value_score)[near])
    true_changed = (after.habitat != before.habitat)[masks["footprint"]]
    out["true_habitat_changed_share_footprint"] = float(true_changed.mean()) if true_changed.size else float("nan")
    if plan.classes is not None and "habitat" in a.before:
        hab = (a.after["habitat"] != a.before["habitat"])[masks["footprint"]]
        out["predicted_habitat_changed_share_footprint"] = float(hab.mean()) if hab.size else float("nan")
    out["true_habitat_codes"] = len(codes)
    out["note"] = "edge effects are the scenario's assumption; the generator's species respond to land cover only"
    return out


def summarise_intervals(plan: ImpactPlan, a: Assessment) -> dict[str, dict[str, tuple[float, float]]]:
    """Per group and zone, the Monte-Carlo interval of the mean per-pixel change of the expected count (over the
    pixels with data, as the point change is: the draws have the map's data mask)."""
    level = plan.cfg.indicators.level
    finite = np.isfinite(a.before["richness_expected"])
    sizes = np.maximum([((a.zones == z) & finite).sum() for z in (1, 2, 3)], 1)
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for group, before in a.draws["before"].items():
        if group == "richness_pixels":
            continue
        change = (a.draws["after"][group] - before) / sizes
        out[group] = {name: _interval(change[:, i], level) for i, name in enumerate(ZONES)}
    return out


# -- reports


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def impact_markdown(summary: Mapping[str, Any]) -> str:
    """The impact report for people (planners, reviewers)."""
    s = summary["scenario"]
    lines = [f"# Impact assessment: {s['name']}", ""]
    if s.get("description"):
        lines += [s["description"], ""]
    lines += [
        f"- footprint `{summary['footprint']}`: {summary['zones']['footprint']['area_ha']} ha becomes land cover "
        f"**{s['land_cover_name']}** (class {s['land_cover']}); edge effects over {s['buffer_m']} m "
        f"(strength {s['edge_strength']}, an assumption of the scenario)",
        f"- the new cover's imagery: the median of {s['land_cover_name']} pixels within {s['context_m']} m",
        f"- re-predicted: {summary['tiles']} tiles ({summary['seconds']} s); uncertainty: {summary['draws']} paired "
        f"Monte-Carlo dropout draws, intervals at {summary['level']:.0%}",
        f"- models: {', '.join(f'{k} `{v}`' for k, v in summary['versions'].items())}",
        "",
        "## Zones",
        "",
        "| zone | area (ha) | pixels |",
        "|---|---|---|",
    ]
    lines += [f"| {z} | {v['area_ha']} | {v['pixels']} |" for z, v in summary["zones"].items()]
    lines += ["", "## Indicators (mean per pixel)", ""]
    lines += ["| indicator | zone | before | after | change | interval of the change |", "|---|---|---|---|---|---|"]
    intervals = summary.get("change_intervals", {})
    for name, zones in summary["indicators"].items():
        if name.endswith(("_lower", "_upper")):  # the levels' intervals are in summary.json
            continue
        group = name.removesuffix("_expected")
        for zone_name in ("footprint", "buffer"):
            row = zones[zone_name]
            iv = intervals.get(group, {}).get(zone_name) if name.endswith("_expected") else None
            shown = f"[{_fmt(iv['lower'])}, {_fmt(iv['upper'])}]" if iv else ""
            lines.append(
                f"| {name} | {zone_name} | {_fmt(row['before'])} | {_fmt(row['after'])} | {_fmt(row['change'])} | "
                f"{shown} |"
            )
    if "value" in summary:
        lines += ["", "## Biodiversity value", ""]
        lines += ["| zone | before | after | change | value-ha change | interval |", "|---|---|---|---|---|---|"]
        for zone_name, row in summary["value"].items():
            iv = (
                f"[{_fmt(row.get('value_ha_change_lower'))}, {_fmt(row.get('value_ha_change_upper'))}]"
                if "value_ha_change_lower" in row
                else ""
            )
            lines.append(
                f"| {zone_name} | {_fmt(row['before'], 3)} | {_fmt(row['after'], 3)} | {_fmt(row['change'], 3)} | "
                f"{_fmt(row['value_ha_change'])} | {iv} |"
            )
        lines += ["", "Value-hectares: the sum of value (0-1) x area, like habitat hectares."]
    sp = summary["species"]
    lines += ["", "## Species (expected occupied area in the footprint and buffer)", ""]
    lines += [
        f"{sp['species_losing_half']} species lose at least half of their expected area; the summed change is "
        f"{sp['expected_species_area_change_ha']} species-ha.",
        "",
        "| species | before (ha) | after (ha) | change (ha) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['name']} | {r['area_ha_before']} | {r['area_ha_after']} | {r['change_ha']} |" for r in sp["losses"]
    ]
    if "habitats" in summary:
        h = summary["habitats"]
        lines += ["", "## Habitats (top class, footprint and buffer)", ""]
        lines += [f"{_fmt(100 * h['changed_share'], 1)} % of the area changes class.", ""]
        lines += ["| before | after | area (ha) |", "|---|---|---|"]
        lines += [f"| {t['before']} | {t['after']} | {t['area_ha']} |" for t in h["transitions"]]
    if "evaluation" in summary:
        ev = summary["evaluation"]
        lines += ["", "## Against the virtual region's truth (same scenario applied to the generator)", ""]
        lines += [
            "| zone | richness change predicted | true | true in interval | threatened predicted | true | "
            "value change predicted | true value-score change |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for zone_name, row in ev["zones"].items():
            lines.append(
                f"| {zone_name} | {_fmt(row.get('richness_change_predicted'))} | "
                f"{_fmt(row.get('richness_change_true'))} | {row.get('richness_true_in_interval')} | "
                f"{_fmt(row.get('threatened_change_predicted'))} | {_fmt(row.get('threatened_change_true'))} | "
                f"{_fmt(row.get('value_change_predicted'), 3)} | {_fmt(row.get('value_score_change_true'))} |"
            )
        shown = ", ".join(f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in ev["pixel_r"].items())
        lines += ["", f"Per-pixel correlation of predicted and true change (footprint and buffer): {shown}."]
        lines += [f"Note: {ev['note']}."]
    if summary.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


def plot_impact(plan: ImpactPlan, a: Assessment, path: Path) -> None:
    """Before / after / difference maps of richness and value (or threatened species), the footprint outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("richness_expected", "expected richness")]
    rows.append(("value", "biodiversity value") if "value" in a.before else ("threatened_expected", "threatened"))
    rows = [r for r in rows if r[0] in a.before]
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 3.8 * len(rows)), squeeze=False, layout="constrained")
    x0, y0, x1, y1 = a.grid.bounds
    extent = (x0, x1, y0, y1)
    outline = [np.asarray(p.exterior.coords) for p in getattr(a.edit.geometry, "geoms", [a.edit.geometry])
               if hasattr(p, "exterior")]  # fmt: skip
    for r, (name, label) in enumerate(rows):
        before, after = a.before[name], a.after[name]
        vmin, vmax = np.nanmin([before, after]), np.nanmax([before, after])
        diff = after - before
        lim = float(np.nanmax(np.abs(diff))) or 1.0
        panels = [
            (before, f"{label}: before", "viridis", vmin, vmax),
            (after, f"{label}: after", "viridis", vmin, vmax),
        ]
        panels.append((diff, f"{label}: change", "RdBu", -lim, lim))
        for c, (values, title, cmap, lo, hi) in enumerate(panels):
            ax = axes[r, c]
            im = ax.imshow(values, extent=extent, cmap=cmap, vmin=lo, vmax=hi)
            for ring in outline:
                ax.plot(ring[:, 0], ring[:, 1], color="black", lw=1)
            ax.set_title(title, fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"Impact of '{a.edit.scenario.name}'", fontsize=11)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def write_geopackage(plan: ImpactPlan, a: Assessment, summary: Mapping[str, Any], path: Path) -> None:
    """The affected area: the footprint, the zones with their mean changes, and every assessed 50 m cell with its
    before / after / change values (and the change's Monte-Carlo spread)."""
    import geopandas as gpd
    import pandas as pd

    crs = plan.map_grid.crs
    s = a.edit.scenario
    footprint = gpd.GeoDataFrame(
        {"scenario": [s.name], "land_cover": [a.edit.code], "buffer_m": [s.buffer_m]},
        geometry=[a.edit.geometry],
        crs=crs,
    )
    ring = shapely.difference(shapely.buffer(a.edit.geometry, s.buffer_m), a.edit.geometry)
    around = shapely.difference(shapely.box(*a.grid.bounds), shapely.buffer(a.edit.geometry, s.buffer_m))
    records = []
    for name, geom in zip(ZONES, (a.edit.geometry, ring, around), strict=True):
        row: dict[str, Any] = {"zone": name, "area_ha": summary["zones"][name]["area_ha"]}
        for ind in ("richness_expected", "threatened_expected", "invasive_expected", "shannon", "ecosystem_health"):
            if ind in summary["indicators"]:
                row[f"{ind}_change"] = summary["indicators"][ind][name]["change"]
        if "value" in summary:
            row["value_change"] = summary["value"][name]["change"]
            row["value_ha_change"] = summary["value"][name]["value_ha_change"]
        records.append({**row, "geometry": geom})
    zones = gpd.GeoDataFrame(records, geometry="geometry", crs=crs)
    rows, cols = np.nonzero(a.zones > 0)
    res = plan.map_grid.resolution
    xs, ys = a.grid.x[cols], a.grid.y[rows]
    table: dict[str, Any] = {"zone": np.asarray(ZONES)[a.zones[rows, cols] - 1]}
    for name in ("richness_expected", "threatened_expected", "invasive_expected", "value"):
        if name in a.before:
            b, f = a.before[name][rows, cols], a.after[name][rows, cols]
            table[f"{name}_before"], table[f"{name}_after"], table[f"{name}_change"] = b, f, f - b
    if "richness_pixels" in a.draws["before"]:
        d = a.draws["after"]["richness_pixels"] - a.draws["before"]["richness_pixels"]
        table["richness_change_sd"] = np.nanstd(d[:, rows, cols], axis=0)
    if a.value_draws:
        d = a.value_draws["after"] - a.value_draws["before"]
        table["value_change_sd"] = np.nanstd(d[:, rows, cols], axis=0)
    if plan.classes is not None and "habitat" in a.before:
        names = np.asarray([*plan.classes, "no data"])
        table["habitat_before"] = names[a.before["habitat"][rows, cols]]
        table["habitat_after"] = names[a.after["habitat"][rows, cols]]
    cells = gpd.GeoDataFrame(
        pd.DataFrame(table), geometry=shapely.box(xs - res / 2, ys - res / 2, xs + res / 2, ys + res / 2), crs=crs
    )
    footprint.to_file(path, layer="footprint", driver="GPKG")
    zones.to_file(path, layer="zones", driver="GPKG", mode="a")
    cells.to_file(path, layer="cells", driver="GPKG", mode="a")


# -- the commands


@dataclass(frozen=True)
class Models:
    """The models an assessment runs: species (a file), habitat classifier (a folder or None), value (or None)."""

    species: str | None
    habitats: str | None
    value: str | None


def resolve_models(cfg: RunConfig, model: str | None, habitat_model: str | None, value_model: str | None) -> Models:
    """The configured or default models: ``map.model`` (else the one ``map`` trains and caches), the classifier under
    ``<store.root>/habitats/model`` and the value model under ``<store.root>/value`` when they exist."""
    species = model or cfg.map.model
    if species is None and not cfg.inputs.virtual and cfg.inputs.observations is None:
        raise ConfigError("impact needs a species model for your inputs: pass --model FILE (or map.model)")
    value = value_model or cfg.impact.value_model
    if value is None:
        default = default_value_model(cfg)
        value = default if exists(default, storage_options_for(default, cfg.store)) else None
    return Models(species, habitat_model or under_root(cfg, "habitats/model"), value)


def report_folder(cfg: RunConfig, out: str | None, default: str, files: Sequence[str], what: str, overwrite: bool):
    """The report folder (``out`` or ``<store.root>/<default>``), checked before any work (storage/outputs): an
    earlier report of this kind is replaced only with ``overwrite``; a folder geoplantnet did not write is refused.
    It is claimed (the earlier report removed) only when the new one is written."""
    if out is None and not is_local(cfg.store.root):
        raise ConfigError("reports are written to a local folder and store.root is remote: pass --out DIR")
    folder = Path(out) if out is not None else Path(cfg.store.root) / default
    claim_folder(folder, what, files, overwrite=overwrite, check_only=True)
    return folder


@contextmanager
def planned(cfg: RunConfig, sc: Scenario, models: Models, progress: bool) -> Iterator[tuple[Client, ImpactPlan, Any]]:
    """What an impact assessment and an offset ranking share: the models and the user's files read and checked,
    the scenario's class against the land-cover layer's declared classes and the species model's inputs, all before
    the virtual region is generated or a cluster starts; then the run's inputs, the cluster and the plan."""
    from geoplantnet.runs.inputs import plan_inputs
    from geoplantnet.runtime.cluster import connect

    species = ModelFile.read(models.species) if models.species is not None else None
    classifier = ClassifierFolder.read(models.habitats) if models.habitats is not None else None
    value_file = ValueModelFile.read(models.value, cfg.store) if models.value is not None else None
    inputs = plan_inputs(cfg, observations=species is None)
    classes = inputs.classes(sc.variable)
    if species is not None:
        scenario_code(sc, classes, model_variables(species.spec, species.url))
    else:
        resolve_class(sc, classes)
    tables = indicator_inputs(cfg, progress=progress)
    run = inputs.load(progress=progress)
    if not run.s2_items:
        raise ImpactError("an impact assessment edits the Sentinel-2 composites: the run has no Sentinel-2 items")
    sources = MapSources.from_items(cfg, run.s2_items, run.env_items)
    value = plan_value_predictor(cfg, value_file, sources) if value_file is not None else None
    setup = fused_setup(cfg, species, sources, classifier, tables) if species is not None else None
    with connect(cfg.cluster) as client:
        if setup is None:
            setup = fused_setup(cfg, ensure_model(cfg, run, client)[0], sources, classifier, tables)
        yield client, plan_impact(client, cfg, setup, value), run


def scenario_summary(edit: ScenarioEdit, classes: Mapping[int, str]) -> dict[str, Any]:
    s = edit.scenario
    return {
        **s.model_dump(),
        "land_cover": edit.code,
        "land_cover_name": classes.get(edit.code, str(edit.code)),
        "typical_composite": {b: [round(float(v), 4) for v in vals] for b, vals in edit.signature.items()},
    }


def run_impact(
    cfg: RunConfig,
    footprint: str,
    scenario: str,
    *,
    model: str | None = None,
    habitat_model: str | None = None,
    value_model: str | None = None,
    out: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = False,
) -> dict[str, Any]:
    """``geoplantnet impact``: the scenario in ``scenario`` applied inside ``footprint`` (any vector format and CRS),
    the affected tiles predicted before and after, and the report folder written (``report.md``, ``summary.json``,
    ``maps.png``, ``impact.gpkg``). With ``evaluate`` (virtual region) the generator's truth under the same scenario
    is compared."""
    if evaluate and not cfg.inputs.virtual:
        raise ConfigError("--evaluate compares with the virtual region's truth; inputs.* are set")
    t0 = time.perf_counter()
    sc = load_scenario(scenario)
    geometry = shapely.union_all(read_polygons(footprint, cfg.grid.epsg, "footprint").geometry.values)
    region = shapely.box(*cfg.grid.grid().bounds)
    if not shapely.intersects(geometry, region):
        raise ScenarioError(f"footprint {footprint}: it does not overlap the region {cfg.grid.grid().bounds}")
    models = resolve_models(cfg, model, habitat_model, value_model)
    folder = report_folder(cfg, out, f"impact/{sc.name}", REPORT_FILES, "impact report", overwrite)
    with planned(cfg, sc, models, progress) as (client, plan, run):
        edit = learn_edit(plan.sources, plan.cube_grid, geometry, sc, plan.env_names)
        (assessment,) = assess_many(client, plan, [edit], progress)
    summary = {
        "scenario": scenario_summary(edit, land_cover_classes(plan.sources, sc.variable)),
        "footprint": redact({"u": str(footprint)})["u"],
        "tiles": assessment.tiles,
        "reach_m": plan.reach_m,
        "footprint_area_ha": round(float(shapely.intersection(geometry, region).area) / 1e4, 3),
        "draws": plan.draws,
        "draws_of": draws_of(plan),
        "level": cfg.indicators.level,
        "versions": plan.versions,
        **summarise(plan, assessment),
        "notes": plan.notes + [redact_text(n) for n in run.notes],
    }
    if not summary["zones"]["footprint"]["pixels"]:
        summary["notes"].append(
            f"the footprint holds no {plan.map_grid.resolution:g} m map cell centre: the species and indicator tables "
            "show its edge and surroundings only (the value map sees it at 10 m)"
        )
    if evaluate:
        summary["evaluation"] = evaluate_truth(plan, assessment)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    claim_folder(folder, "impact report", REPORT_FILES, overwrite=overwrite)
    place(folder, "report.md", lambda p: p.write_text(impact_markdown(summary)))
    place(folder, "maps.png", lambda p: plot_impact(plan, assessment, p))
    place(folder, "impact.gpkg", lambda p: write_geopackage(plan, assessment, summary, p))
    place_json(folder, "summary.json", summary)
    finish_folder(folder)
    return {**summary, "report": str(folder)}


# -- offsets


def site_ids(frame: Any, id_column: str | None, where: str) -> list[str]:
    """The candidate sites' ids: ``id_column``, else an ``id`` or ``name`` column, else their row numbers."""
    if id_column is not None and id_column not in frame.columns:
        raise ScenarioError(f"candidate sites {where}: no column '{id_column}' (columns: {list(frame.columns)[:12]})")
    column = id_column or next((c for c in ("id", "site", "name") if c in frame.columns), None)
    ids = [str(v) for v in frame[column]] if column else [f"site {i + 1}" for i in range(len(frame))]
    if len(set(ids)) != len(ids):
        raise ScenarioError(f"candidate sites {where}: the ids in '{column}' are not unique")
    return ids


def _total_value_change(value: Mapping[str, Any]) -> tuple[float, np.ndarray | None]:
    """The value-hectare change over all zones and its draws (None without draws)."""
    total = float(sum(row["value_ha_change"] for row in value.values()))
    draws = [np.asarray(row["value_ha_change_draws"]) for row in value.values() if "value_ha_change_draws" in row]
    return total, (np.sum(draws, axis=0) if draws else None)


def read_impact(path: str) -> dict[str, Any]:
    """An impact report's summary (its folder or its ``summary.json``), which must assess biodiversity value."""
    import json

    p = Path(path)
    p = p / "summary.json" if p.is_dir() else p
    if not p.is_file():
        raise ScenarioError(f"impact report {path}: no summary.json (run `geoplantnet impact` first)")
    try:
        summary = json.loads(p.read_text())
    except ValueError as exc:
        raise ScenarioError(f"impact report {p}: not JSON ({exc})") from None
    if "value" not in summary:
        raise ScenarioError(f"impact report {p}: it assessed no biodiversity value (no value model was used)")
    return summary


def compensation(
    gain: np.ndarray | None, loss: np.ndarray | None, ratio: float, confidence: float, *, paired: bool = False
) -> tuple[float | None, str | None]:
    """(P(gain >= ratio x loss), verdict): "yes" at ``confidence``, "no" when the opposite holds at that confidence,
    else "uncertain"; None without draws. ``paired``: draw k of both is the same thinned network (same value model,
    seeds and draw count), so draw k is compared with draw k; otherwise every pair of draws."""
    if gain is None or loss is None or not len(gain) or not len(loss):
        return None, None
    if paired and len(gain) == len(loss):
        p = float((gain >= ratio * loss).mean())
    else:
        p = float((gain[:, None] >= ratio * loss[None, :]).mean())
    verdict = "yes" if p >= confidence else ("no" if p <= 1 - confidence else "uncertain")
    return p, verdict


def run_offsets(
    cfg: RunConfig,
    sites: str,
    scenario: str,
    *,
    impact: str | None = None,
    id_column: str | None = None,
    model: str | None = None,
    habitat_model: str | None = None,
    value_model: str | None = None,
    out: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    evaluate: bool = False,
) -> dict[str, Any]:
    """``geoplantnet offsets``: every candidate site assessed under the restoration ``scenario`` as an impact is
    (its own footprint), ranked by the biodiversity value it would gain (value-hectares, with Monte-Carlo
    intervals); with ``impact`` (a report), whether each site, and the best sites together, compensate its value
    loss at ``impact.offset_ratio`` (no net loss)."""
    if evaluate and not cfg.inputs.virtual:
        raise ConfigError("--evaluate compares with the virtual region's truth; inputs.* are set")
    t0 = time.perf_counter()
    sc = load_scenario(scenario)
    frame = read_polygons(sites, cfg.grid.epsg, "candidate sites")
    ids = site_ids(frame, id_column, sites)
    region = shapely.box(*cfg.grid.grid().bounds)
    outside = [i for i, g in zip(ids, frame.geometry, strict=True) if not shapely.intersects(g, region)]
    if outside:
        raise ScenarioError(f"candidate sites {sites}: {outside[:5]} lie outside the region")
    geoms = frame.geometry.values
    for i in range(len(geoms)):
        for j in range(i + 1, len(geoms)):
            if shapely.intersection(geoms[i], geoms[j]).area > 0:
                raise ScenarioError(
                    f"candidate sites {sites}: {ids[i]} and {ids[j]} overlap (their gains would count twice)"
                )
    impact_summary = read_impact(impact) if impact is not None else None
    models = resolve_models(cfg, model, habitat_model, value_model)
    if models.value is None:
        raise ConfigError(
            "offsets rank sites by biodiversity value: run `geoplantnet value` first or pass --value-model"
        )
    folder = report_folder(cfg, out, f"offsets/{sc.name}", OFFSET_FILES, "offset ranking", overwrite)
    with planned(cfg, sc, models, progress) as (client, plan, _):
        # one typical composite for all sites, learned around all of them (one read rather than one per site)
        shared = learn_edit(plan.sources, plan.cube_grid, shapely.union_all(frame.geometry.values), sc, plan.env_names)
        edits = [replace(shared, geometry=g) for g in frame.geometry.values]
        assessments = assess_many(client, plan, edits, progress)
    loss = None
    if impact_summary is not None:
        change, draws = _total_value_change(impact_summary["value"])
        same = {k: impact_summary.get("draws_of", {}).get(k) for k in ("value_model", "seed", "draws")}
        paired = same == draws_of(plan)
        loss = {"value_ha": -change, "draws": None if draws is None else -draws, "paired": paired}
    ratio, confidence = cfg.impact.offset_ratio, cfg.impact.confidence
    rows = []
    for site, a in zip(ids, assessments, strict=True):
        s = summarise(plan, a)
        gain, draws = _total_value_change(s["value"])
        row: dict[str, Any] = {
            "site": site,
            "area_ha": s["zones"]["footprint"]["area_ha"],
            "value_ha_gain": round(gain, 4),
            "value_ha_gain_lower": _interval(draws, cfg.indicators.level)[0] if draws is not None else None,
            "value_ha_gain_upper": _interval(draws, cfg.indicators.level)[1] if draws is not None else None,
            "richness_change_site": s["indicators"].get("richness_expected", {}).get("footprint", {}).get("change"),
            "threatened_change_site": s["indicators"].get("threatened_expected", {}).get("footprint", {}).get("change"),
            "value_ha_gain_draws": None if draws is None else [round(float(d), 4) for d in draws],
            "_draws": draws,
        }
        if loss is not None:
            row["p_no_net_loss"], row["compensates"] = compensation(
                draws, loss["draws"], ratio, confidence, paired=loss["paired"]
            )
            if row["compensates"] is None:
                row["compensates"] = "yes" if gain >= ratio * loss["value_ha"] else "no"
        if evaluate:
            ev = evaluate_truth(plan, a)
            true = [ev["zones"][z]["value_score_change_true"] * s["zones"][z]["area_ha"] for z in ZONES]
            row["true_value_score_gain"] = float(np.nansum(true))
        rows.append(row)
    rows.sort(key=lambda r: -r["value_ha_gain"])
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    summary: dict[str, Any] = {
        "scenario": scenario_summary(shared, land_cover_classes(plan.sources, sc.variable)),
        "sites": redact({"u": str(sites)})["u"],
        "draws": plan.draws,
        "level": cfg.indicators.level,
        "versions": plan.versions,
        "ranking": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        "notes": plan.notes,
    }
    if loss is not None:
        summary["impact"] = {
            "report": redact({"u": str(impact)})["u"],
            "value_ha_loss": loss["value_ha"],
            "ratio": ratio,
            "confidence": confidence,
            "draws_paired": loss["paired"],
            "portfolio": portfolio(rows, loss, ratio, confidence),
        }
    if evaluate:
        chosen = summary["impact"]["portfolio"]["sites"] if loss is not None else []
        summary["evaluation"] = offsets_evaluation(rows, impact_summary, ratio, chosen)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    claim_folder(folder, "offset ranking", OFFSET_FILES, overwrite=overwrite)
    write_offsets(folder, summary, frame, ids)
    return {**summary, "report": str(folder)}


def portfolio(rows: list[dict[str, Any]], loss: Mapping[str, Any], ratio: float, confidence: float) -> dict:
    """The fewest best-ranked sites with a positive gain whose summed gain compensates the loss (draw by draw), or
    all of them falling short."""
    if loss["value_ha"] <= 0:
        return {"sites": [], "value_ha_gain": 0.0, "compensates": "no loss to offset"}
    chosen: list[str] = []
    total, draws = 0.0, None
    for row in (r for r in rows if r["value_ha_gain"] > 0):
        chosen.append(row["site"])
        total += row["value_ha_gain"]
        if row["_draws"] is not None:
            draws = row["_draws"] if draws is None else draws + row["_draws"]
        p, verdict = compensation(draws, loss["draws"], ratio, confidence, paired=loss["paired"])
        if (verdict or ("yes" if total >= ratio * loss["value_ha"] else "no")) == "yes":
            return {"sites": chosen, "value_ha_gain": round(total, 4), "p_no_net_loss": p, "compensates": "yes"}
    return {"sites": chosen, "value_ha_gain": round(total, 4), "compensates": "no: the candidates fall short"}


def offsets_evaluation(
    rows: list[dict[str, Any]], impact: Mapping[str, Any] | None, ratio: float, portfolio_sites: Sequence[str]
) -> dict[str, Any]:
    """The predicted ranking against the truth's (the generator's value-score gain under the same restoration) and,
    when the impact report was scored against the truth too, the truth's own no-net-loss verdict for the sites the
    prediction chose (value-score x hectares on both sides)."""
    from scipy.stats import spearmanr

    pred = np.array([r["value_ha_gain"] for r in rows])
    true = np.array([r["true_value_score_gain"] for r in rows])
    rho = float(spearmanr(pred, true).statistic) if len(rows) >= 3 else float("nan")
    out: dict[str, Any] = {
        "spearman_rank": rho,
        "true_best_site": rows[int(np.argmax(true))]["site"],
        "predicted_best_site": rows[0]["site"],
    }
    if impact is not None and "evaluation" in impact:
        zones = impact["evaluation"]["zones"]
        loss = -sum(zones[z]["value_score_change_true"] * impact["zones"][z]["area_ha"] for z in ZONES)
        gain = sum(r["true_value_score_gain"] for r in rows if r["site"] in portfolio_sites)
        out["true_value_score_loss"] = loss
        out["true_value_score_gain_of_chosen_sites"] = gain
        out["true_compensates"] = "no loss to offset" if loss <= 0 else ("yes" if gain >= ratio * loss else "no")
    return out


def offsets_markdown(summary: Mapping[str, Any]) -> str:
    """The offset ranking for people."""
    s = summary["scenario"]
    lines = [f"# Offset sites under '{s['name']}'", ""]
    lines += [
        f"Each candidate becomes **{s['land_cover_name']}** (class {s['land_cover']}), edge effects over "
        f"{s['buffer_m']} m; gains are value-hectares (value 0-1 x area) with {summary['level']:.0%} Monte-Carlo "
        f"intervals ({summary['draws']} paired dropout draws).",
        "",
    ]
    head = "| rank | site | area (ha) | value-ha gain | interval | richness change | threatened change |"
    extra = " P(no net loss) | compensates |" if "impact" in summary else ""
    lines += [head + extra, "|---" * (7 + (2 if extra else 0)) + "|"]
    for r in summary["ranking"]:
        line = (
            f"| {r['rank']} | {r['site']} | {r['area_ha']} | {_fmt(r['value_ha_gain'])} | "
            f"[{_fmt(r['value_ha_gain_lower'])}, {_fmt(r['value_ha_gain_upper'])}] | "
            f"{_fmt(r['richness_change_site'])} | {_fmt(r['threatened_change_site'])} |"
        )
        if extra:
            line += f" {_fmt(r.get('p_no_net_loss'))} | {r.get('compensates')} |"
        lines.append(line)
    if "impact" in summary:
        imp = summary["impact"]
        lines += [
            "",
            f"The impact `{imp['report']}` loses {_fmt(imp['value_ha_loss'])} value-ha; no net loss needs a gain of "
            f"{imp['ratio']} x that with probability {imp['confidence']}.",
            f"Best sites together: {', '.join(imp['portfolio']['sites'])} -> {imp['portfolio']['compensates']}.",
        ]
    if "evaluation" in summary:
        ev = summary["evaluation"]
        lines += [
            "",
            f"Against the truth: Spearman rank correlation of predicted gain and true value-score gain "
            f"{_fmt(ev['spearman_rank'])}; best site predicted {ev['predicted_best_site']}, "
            f"truly {ev['true_best_site']}.",
        ]
        if "true_compensates" in ev:
            lines += [
                f"The truth's verdict for those sites: they gain {_fmt(ev['true_value_score_gain_of_chosen_sites'])} "
                f"value-score-ha against a true loss of {_fmt(ev['true_value_score_loss'])} -> "
                f"{ev['true_compensates']}.",
            ]
    if summary.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


def write_offsets(folder: Path, summary: Mapping[str, Any], frame: Any, ids: list[str]) -> None:
    """``offsets.csv``, ``offsets.gpkg`` (the sites with their ranking), ``report.md`` and, last, ``summary.json``."""
    import geopandas as gpd
    import pandas as pd

    table = pd.DataFrame(summary["ranking"]).drop(columns=["value_ha_gain_draws"])
    # the ranking's columns and the geometry only: a site's own columns may share names with them
    shapes = gpd.GeoDataFrame({"site": ids}, geometry=frame.geometry.values, crs=frame.crs)
    sites = shapes.merge(table, on="site", how="left").sort_values("rank")
    place(folder, "offsets.csv", lambda p: table.to_csv(p, index=False))
    place(folder, "offsets.gpkg", lambda p: sites.to_file(p, layer="sites", driver="GPKG"))
    place(folder, "report.md", lambda p: p.write_text(offsets_markdown(summary)))
    place_json(folder, "summary.json", summary)
    finish_folder(folder)
