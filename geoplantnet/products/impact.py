"""The impact product: one scenario on one footprint (or many: offsets' candidate sites), predicted before and after.

A scenario (:mod:`geoplantnet.products.scenarios`) edits the models' inputs inside a footprint and its buffer
(:class:`ScenarioSources`: every window read is edited, so every model sees the changed landscape); only the map
tiles whose predictions can change (the footprint, its buffer and the models' receptive field) are predicted again,
before and after (:func:`impact_tile`, on the workers). Every tile runs the map's species model, the habitat
classifier and the indicator computation exactly as the fused indicators mode does (the same calibration), and the
value model at 10 m when there is one. The change's uncertainty comes from Monte-Carlo dropout draws of the species
and value networks, paired before/after (the same dropout masks on both landscapes), so it is the spread of the
*change* under the models' own uncertainty, not of the two levels.

The driver side is :class:`ImpactPlan` (what every assessment of a run shares), :func:`impact_jobs` (the tile tasks of
some edits, for :func:`geoplantnet.runs.tiles.stream_tiles`) and :func:`assemble` (the tiles' results as one
:class:`Assessment` per edit); :mod:`geoplantnet.products.impact_summary` says what changed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import shapely

from geoplantnet.core.config import ImpactConfig, redact
from geoplantnet.core.errors import GeoplantnetError
from geoplantnet.core.grid import Grid, Tile
from geoplantnet.inference.dense import decode
from geoplantnet.inference.fused import FusedPredictor
from geoplantnet.inference.reader import MapSources
from geoplantnet.inference.value import ValuePredictor
from geoplantnet.products.indicators import IndicatorModel, indicator_blocks
from geoplantnet.products.indicators.tiles import tile_seed
from geoplantnet.products.scenarios import (
    Scenario,
    ScenarioError,
    Zone,
    dominant_class,
    edit_composite,
    edit_environment,
    learn_signature,
    one_hot_layers,
    resolve_class,
    zone,
)
from geoplantnet.products.value import cell_stats
from geoplantnet.validation.conformal import StratumErrors

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
    edge_strength: float = 0.0  # the scenario's: where outside the footprint the species predictions may change
    value_before: ValuePredictor | None = None  # on the run's sources
    value_after: ValuePredictor | None = None  # the same on the scenario's sources
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
    """The 50 m cell means of 10 m values: the value aggregate's rule (`products.value.cell_stats`)."""
    return cell_stats(values, factor)[0].astype("float32")


def _held(job: ImpactTileJob, tile: Tile) -> np.ndarray:
    """The tile's pixels whose species predictions keep their values before (y, x): outside the footprint and
    beyond any edge effect the scenario assumes. The species network's receptive field sees the footprint from up
    to ``reach_m`` away, and it learned neighbourhoods, not effects: on the demo region that context alone took 6.8
    species from the 100 m around a sealed footprint where the generator takes none. An effect outside the
    footprint is the scenario's assumption (``edge_strength``), never the network's context."""
    where = zone(job.geometry, job.map_grid.subgrid(*tile.slices), job.buffer_m, job.edge_strength)
    return ~where.inside & ~(where.edge > 0)


STATES = ("before", "after")


def _paired_codes(job: ImpactTileJob, tile: Tile) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The species codes (species, y, x) of the tile before and after, the map's first, then each Monte-Carlo draw's
    (draw k: dropout seed ``seed + k`` of member ``k`` of an ensemble, the same in both states), one pair at a time
    so a tile never holds every draw's codes (species x draws can be large); the after state's held pixels
    (:func:`_held`) are taken from before."""
    held = _held(job, tile)
    fused = {"before": job.before, "after": job.after}
    inputs = {s: fused[s].species.read(tile) for s in STATES}  # once: the draws run the network on the same windows
    for draw in [{}, *({"dropout_seed": job.seed + k, "member": k} for k in range(job.draws))]:
        before, after = (fused[s].species.forward(inputs[s], **draw)[0] for s in STATES)
        after[:, held] = before[:, held]
        yield before, after


def impact_tile(job: ImpactTileJob, tile: Tile) -> dict[str, Any]:
    """A tile before and after the scenario: indicator blocks, top habitat class, per-species expected cover per
    zone, and per Monte-Carlo draw the zones' summed counts and value (runs on a worker)."""
    t0 = time.perf_counter()
    zones = _zones(job, tile)
    out: dict[str, Any] = {"tile": tile.id, "y0": tile.y0, "x0": tile.x0, "zones": zones}
    model = job.indicators
    pairs = _paired_codes(job, tile)
    draws: dict[str, list[dict[str, np.ndarray]]] = {s: [] for s in STATES}
    for state, fused, codes in zip(STATES, (job.before, job.after), next(pairs), strict=True):
        p, top, top_p, _ = fused.classify(codes, {"model_loads": 0})
        blocks = indicator_blocks(p, model, habitat_top=top, habitat_top_probability=top_p, seed=tile_seed(tile))
        out[state] = {
            "blocks": blocks,
            "habitat": top[0] if top is not None else None,
            "species_cover": _zone_sums(_calibrated(p, model), zones),  # (S, 3) expected pixels
        }
    for pair in pairs:
        for state, codes in zip(STATES, pair, strict=True):
            counts = _group_counts(_calibrated(decode(codes), model), model)
            draws[state].append({g: _zone_sums(v, zones) for g, v in counts.items()})
            draws[state][-1]["richness_pixels"] = counts["richness"]
    for state, value in zip(STATES, (job.value_before, job.value_after), strict=True):
        drawn = draws[state]
        out[state]["draws"] = {g: np.stack([d[g] for d in drawn]) for g in drawn[0]} if drawn else {}
        if value is not None:
            fine = _fine(tile, job.value_factor)
            features = value.read(fine)  # once for the map's values and the draws
            out[state]["value"] = coarsen(value.predict_window(features, fine)[0], job.value_factor)
            if job.draws:
                sampled = value.predict_window(features, fine, draws=job.draws, seed=job.seed)
                out[state]["value_draws"] = coarsen(sampled, job.value_factor)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    return out


@dataclass(frozen=True)
class EditTile(Tile):
    """One affected map tile of one edit of an assessment. ``id`` names the pair (the tasks of two edits sharing a
    map tile need distinct keys); :attr:`map_tile` is the map's own tile (its id seeds the indicators' draws)."""

    edit: int = 0
    map_id: str = ""

    @classmethod
    def of(cls, tile: Tile, edit: int, n_edits: int) -> EditTile:
        """``tile`` for edit ``edit`` of ``n_edits`` (one edit: the map tile's id)."""
        name = tile.id if n_edits == 1 else f"{tile.id}#{edit}"
        return cls(tile.row, tile.col, tile.y0, tile.x0, tile.height, tile.width, name, edit, tile.id)

    @property
    def map_tile(self) -> Tile:
        return Tile(self.row, self.col, self.y0, self.x0, self.height, self.width, self.map_id)


@dataclass(frozen=True)
class ImpactTiles:
    """The tile job of an assessment of several edits at once (offsets: one per candidate site)."""

    jobs: tuple[ImpactTileJob, ...]


def assessment_tile(job: ImpactTiles, tile: EditTile) -> dict[str, Any]:
    """:func:`impact_tile` of the tile's edit, tagged with the edit and the tile's pixels (runs on a worker)."""
    out = impact_tile(job.jobs[tile.edit], tile.map_tile)
    return {**out, "edit": tile.edit, "pixels": tile.height * tile.width}


# -- the plan


@dataclass(frozen=True)
class ImpactPlan:
    """What every assessment of a run shares: the fused predictor and indicator model (calibrated once), the value
    predictor, the grids and the models' reach."""

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
    value: ValuePredictor | None
    draws: int
    seed: int
    level: float  # the Monte-Carlo intervals' level (indicators.level)
    versions: dict[str, str]
    notes: list[str] = field(default_factory=list)
    # the count model's error per land-cover class, measured on the held-out surveys (None without surveys):
    # what the change's estimate corrects and its interval adds (:mod:`geoplantnet.products.impact_error`)
    errors: StratumErrors | None = None


def species_reach(spec: Any, map_grid: Grid, cube_grid: Grid) -> float:
    """How far the species model sees beyond a map pixel (metres): its largest halo, plus a pixel."""
    reach = 0.0
    for modality, res in (("patch", cube_grid.resolution), ("env", map_grid.resolution)):
        if modality in getattr(spec, "modalities", {}):
            reach = max(reach, max(spec.halo(modality)) * res)
    return reach + map_grid.resolution


def impact_plan(
    fused: FusedPredictor,
    indicators: IndicatorModel,
    species: Sequence[str],
    spec: Any,
    model_url: str,
    *,
    dropout: bool,
    value: ValuePredictor | None,
    map_grid: Grid,
    cube_grid: Grid,
    tile: int,
    settings: ImpactConfig,
    level: float,
    errors: StratumErrors | None = None,
) -> ImpactPlan:
    """The plan from the calibrated fused predictor and indicator model (``indicators --from-model``'s), the species
    model's spec (``dropout``: whether its network has dropout) and the value predictor, or None."""
    notes = []
    if not dropout:
        notes.append("the species model has no dropout: its Monte-Carlo draws are all equal (no species spread)")
    if errors is None:
        notes.append(
            "no surveys to measure the models' error: the count changes are the models' own, their intervals only "
            "the Monte-Carlo spread (which does not hold the truth: see the README)"
        )
    reach = species_reach(spec, map_grid, cube_grid)
    if value is not None:
        reach = max(reach, value_reach_m(value))
    else:
        notes.append("no value model (run `geoplantnet value` first): biodiversity value is not assessed")
    versions = dict(indicators.versions)
    if value is not None:
        versions["value_model"] = f"value-unet/{value.model.sha256[:12]}"
    return ImpactPlan(
        sources=fused.species.sources,
        fused=fused,
        indicators=indicators,
        map_grid=map_grid,
        cube_grid=cube_grid,
        tile=tile,
        reach_m=reach,
        env_names=model_variables(spec, model_url),
        species=tuple(species),
        species_names=tuple(str(n) for n in (spec.species_name or spec.species)),
        classes=indicators.habitats.codes if indicators.habitats is not None else None,
        value=value,
        draws=settings.draws,
        seed=settings.seed,
        level=level,
        versions=versions,
        notes=notes,
        errors=errors,
    )


def draws_of(plan: ImpactPlan) -> dict[str, Any]:
    """What makes two runs' draws the same thinned networks: the models' content, the seed and the count."""
    return {
        "value_model": plan.value.model.sha256 if plan.value is not None else None,
        "species_model": plan.versions.get("species_model"),
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


def value_reach_m(value: ValuePredictor) -> float:
    """How far the value network sees beyond a pixel (metres)."""
    return float(value.halo) * float(value.grid.resolution)


# -- the assessment


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


def impact_jobs(plan: ImpactPlan, edits: Sequence[ScenarioEdit]) -> tuple[ImpactTiles, list[EditTile]]:
    """The tile job of ``edits`` (each predicted before and after on its own edited sources) and every edit's
    affected tiles."""
    jobs, tiles = [], []
    for i, edit in enumerate(edits):
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
                edge_strength=edit.scenario.edge_strength,
                draws=plan.draws,
                seed=plan.seed,
                value_before=plan.value,
                value_after=replace(plan.value, sources=after_sources) if plan.value is not None else None,
                value_factor=value_factor(plan),
            )
        )
        affected = affected_tiles(plan, edit.geometry, edit.scenario.buffer_m)
        tiles += [EditTile.of(t, i, len(edits)) for t in affected]
    return ImpactTiles(tuple(jobs)), tiles


def assemble(
    plan: ImpactPlan, edits: Sequence[ScenarioEdit], results: Sequence[Mapping[str, Any]], seconds: float
) -> list[Assessment]:
    """The tiles' results (:func:`assessment_tile`, in any order) as one assessment per edit. The tiles are summed
    in grid order, not in the order they completed: the zones' draws are float32 sums whose before/after difference
    is small in the surroundings, where the completion order moved the intervals' bounds by up to ~1 % between two
    runs of the same inputs."""
    rows: list[list[Mapping[str, Any]]] = [[] for _ in edits]
    for r in sorted(results, key=lambda r: (r["y0"], r["x0"])):
        rows[r["edit"]].append(r)
    return [_assemble(plan, edit, these, seconds) for edit, these in zip(edits, rows, strict=True)]


def _assemble(plan: ImpactPlan, edit: ScenarioEdit, rows: Sequence[Mapping[str, Any]], seconds: float) -> Assessment:
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


def scenario_summary(edit: ScenarioEdit, classes: Mapping[int, str]) -> dict[str, Any]:
    """The scenario as a report shows it: its settings, the footprint's class and the typical composite learned."""
    s = edit.scenario
    return {
        **s.model_dump(),
        "land_cover": edit.code,
        "land_cover_name": classes.get(edit.code, str(edit.code)),
        "typical_composite": {b: [round(float(v), 4) for v in vals] for b, vals in edit.signature.items()},
    }
