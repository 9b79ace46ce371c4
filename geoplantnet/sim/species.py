"""The virtual species pool: niches, land-cover preferences, prevalences and spatial clustering, with a known truth.

Each species' true occurrence probability at a place is

    logit p = alpha + sum_v -0.5 * ((z_v - mu_v) / sigma_v(side))**2 + log(pref[land_cover]) + rho * field(x, y)

where ``z_v`` is an environmental variable standardised over the region, ``sigma_v`` differs on each side of the
optimum (skewed responses) and between species (specialists and generalists), and ``field`` is the species' own
:class:`~geoplantnet.sim.fields.RandomField`, so occurrences cluster in space beyond what the environment explains.
``alpha`` is calibrated so the region-wide mean probability equals the species' drawn prevalence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit

from geoplantnet.sim.fields import RandomField

NICHE_VARIABLES = ("temperature", "precipitation", "soil_ph", "elevation")
N_LAND_COVER = 9  # classes 1..9 of geoplantnet.sim.environment.LAND_COVER_CLASSES
IUCN_THREATENED = ("VU", "EN", "CR")
GROWTH_FORMS = ("tree", "shrub", "dwarf_shrub", "forb", "graminoid", "fern", "aquatic")
# Growth-form odds given a species' preferred land cover (urban, cropland, grassland, broadleaf, conifer, heath,
# wetland, water, rock): trees live in forests, aquatics in water, graminoids in grassland and wetland.
_FORM_ODDS = np.array(
    [
        [0.05, 0.10, 0.05, 0.60, 0.20, 0.00, 0.00],
        [0.00, 0.02, 0.00, 0.70, 0.28, 0.00, 0.00],
        [0.00, 0.03, 0.02, 0.55, 0.40, 0.00, 0.00],
        [0.25, 0.20, 0.02, 0.38, 0.08, 0.07, 0.00],
        [0.30, 0.12, 0.10, 0.28, 0.08, 0.12, 0.00],
        [0.02, 0.30, 0.35, 0.18, 0.15, 0.00, 0.00],
        [0.02, 0.08, 0.05, 0.30, 0.40, 0.05, 0.10],
        [0.00, 0.00, 0.00, 0.10, 0.15, 0.00, 0.75],
        [0.00, 0.05, 0.10, 0.55, 0.20, 0.10, 0.00],
    ]
)
_ONSETS = ("b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "ch", "ph", "th", "tr", "pl", "cr", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ia", "io")
_GENUS_ENDINGS = ("a", "us", "um", "ia", "is", "ella", "ago", "ium", "ops", "anthus")
_EPITHETS = (
    "alba", "montana", "vulgaris", "officinalis", "sylvestris", "palustris", "arvensis", "minor", "major", "nigra",
    "rubra", "lutea", "aquatica", "alpina", "pratensis", "repens", "hirsuta", "glabra", "ovata", "lanceolata",
    "europaea", "borealis", "nemorosa", "campestris", "rupestris", "saxatilis", "canescens", "tenuifolia",
    "latifolia", "angustifolia", "uliginosa", "sabulosa", "collina", "calcarea", "acidophila", "umbrosa",
    "graminea", "pumila", "elata", "verna",
)  # fmt: skip


# Plants of the EU list of invasive alien species of Union concern (Regulation (EU) 2016/1141 as amended 2022) with
# their growth form: the pool's invasive species take these names, so matching the real list finds exactly them.
EU_INVASIVE_PLANTS = (
    ("Ailanthus altissima", "tree"), ("Acacia saligna", "tree"), ("Prosopis juliflora", "tree"),
    ("Triadica sebifera", "tree"), ("Baccharis halimifolia", "shrub"), ("Hakea sericea", "shrub"),
    ("Impatiens glandulifera", "forb"), ("Heracleum mantegazzianum", "forb"), ("Asclepias syriaca", "forb"),
    ("Heracleum sosnowskyi", "forb"), ("Parthenium hysterophorus", "forb"), ("Gunnera tinctoria", "forb"),
    ("Persicaria perfoliata", "forb"), ("Humulus scandens", "forb"), ("Lysichiton americanus", "forb"),
    ("Andropogon virginicus", "graminoid"), ("Microstegium vimineum", "graminoid"), ("Ehrharta calycina", "graminoid"),
    ("Cortaderia jubata", "graminoid"), ("Elodea nuttallii", "aquatic"), ("Lagarosiphon major", "aquatic"),
    ("Ludwigia grandiflora", "aquatic"), ("Myriophyllum aquaticum", "aquatic"),
    ("Hydrocotyle ranunculoides", "aquatic"), ("Lygodium japonicum", "fern"),
)  # fmt: skip
PROTECTED_SHARE = 0.05  # the rarest species (a few %) carry a protected flag, as Habitats Directive species


class SpeciesError(ValueError):
    """Bad input to the species pool (missing environmental variable, unknown species, bad table)."""


def _logistic_calibration(base: np.ndarray, target: np.ndarray, iterations: int = 50) -> np.ndarray:
    """Per-species intercept ``alpha`` with mean(expit(alpha + base[s])) == target[s] (vectorised bisection)."""
    lo = np.full(base.shape[0], -40.0)
    hi = np.full(base.shape[0], 40.0)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        too_high = expit(mid[:, None] + base).mean(axis=1) > target
        hi = np.where(too_high, mid, hi)
        lo = np.where(too_high, lo, mid)
    return 0.5 * (lo + hi)


def _binomials(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` unique Latin-looking binomials built from syllables (genera shared by several species)."""
    genera: set[str] = set()
    while len(genera) < max(3, n // 3):
        syllables = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.integers(1, 3)))
        ending = str(rng.choice(_GENUS_ENDINGS))
        if syllables[-1] in "aeiou" and ending[0] in "aeiou":  # no "Triaa"
            syllables = syllables[:-1]
        genera.add((syllables + ending).capitalize())
    genus_list = sorted(genera)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = f"{rng.choice(genus_list)} {rng.choice(_EPITHETS)}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _invasive_names(names: list[str], invasive: np.ndarray, forms: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` with the invasive species renamed after real EU invasive plants, each of its own growth form when
    one is left (else the next unused); beyond :data:`EU_INVASIVE_PLANTS` the synthetic names stay. No draw from the
    random stream, so every other parameter of the pool stays as it was."""
    out = list(names)
    free = [(n, f) for n, f in EU_INVASIVE_PLANTS if n not in names]
    for s in np.flatnonzero(invasive):
        if not free:
            break
        pick = next((j for j, (_, f) in enumerate(free) if f == forms[s]), 0)
        out[s] = free.pop(pick)[0]
    return tuple(out)


@dataclass(frozen=True)
class EnvScaling:
    """Region-wide mean and standard deviation of each niche variable (species optima live in these units)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_sample(cls, env: Mapping[str, np.ndarray]) -> EnvScaling:
        _check_keys(env, NICHE_VARIABLES)
        means = tuple(float(np.nanmean(env[v])) for v in NICHE_VARIABLES)
        stds = tuple(max(float(np.nanstd(env[v])), 1e-6) for v in NICHE_VARIABLES)
        return cls(means, stds)

    def standardise(self, env: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [
            (np.asarray(env[v], dtype="float32") - np.float32(m)) / np.float32(s)
            for v, m, s in zip(NICHE_VARIABLES, self.mean, self.std, strict=True)
        ]


def _check_keys(env: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in env]
    if missing:
        raise SpeciesError(f"environment is missing variable(s) {missing}; have {sorted(env)}")


@dataclass(frozen=True, eq=False)
class SpeciesPool:
    """All species parameters as arrays (species first), so probabilities are computed without Python per pixel."""

    ids: tuple[str, ...]
    names: tuple[str, ...]
    scaling: EnvScaling
    optimum: np.ndarray  # (S, V) standardised units
    width_low: np.ndarray  # (S, V) niche half-width below the optimum (standardised units)
    width_high: np.ndarray  # (S, V) above the optimum
    land_cover_pref: np.ndarray  # (S, 9) in (0, 1], 1 for the preferred class
    alpha: np.ndarray  # (S,) calibrated intercept
    prevalence: np.ndarray  # (S,) target region-wide mean probability
    field_seed: np.ndarray  # (S,) seed of the species' spatial field
    field_length: np.ndarray  # (S,) its length scale (m)
    field_strength: np.ndarray  # (S,) logit units per field std
    growth_form: tuple[str, ...]
    invasive: np.ndarray  # (S,) bool
    iucn: tuple[str, ...]  # "LC", "NT", "VU", "EN", "CR"

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def generate(
        cls,
        seed: int,
        n_species: int,
        env_sample: Mapping[str, np.ndarray],
        x: np.ndarray,
        y: np.ndarray,
    ) -> SpeciesPool:
        """Draw ``n_species`` species whose niches fit the region sampled by ``env_sample`` at points (x, y).

        ``env_sample`` holds 1-D arrays of the niche variables and ``land_cover`` at random points of the region;
        optima are drawn among those conditions, so every species can live somewhere in the region.
        """
        if n_species < 1:
            raise SpeciesError(f"n_species must be >= 1, got {n_species}")
        _check_keys(env_sample, (*NICHE_VARIABLES, "land_cover"))
        rng = np.random.default_rng([seed, 0x5BEC1E5])
        scaling = EnvScaling.from_sample(env_sample)
        z = np.stack(scaling.standardise(env_sample), axis=1)  # (N, V)
        n_vars = len(NICHE_VARIABLES)
        # Optima at the conditions of random sample points (plus noise): niches sit where the region has habitat.
        anchor = rng.integers(0, z.shape[0], n_species)
        optimum = z[anchor] + rng.normal(0.0, 0.3, (n_species, n_vars))
        # Breadth spans specialists (~0.25 sd) to generalists (~4 sd); variables differ within a species.
        breadth = np.exp(rng.normal(np.log(0.9), 0.7, n_species))
        width = breadth[:, None] * np.exp(rng.normal(0.0, 0.3, (n_species, n_vars)))
        skew = rng.normal(0.0, 0.35, (n_species, n_vars))
        width_low, width_high = width * np.exp(-skew), width * np.exp(skew)
        lc = np.asarray(env_sample["land_cover"]).astype("int64")
        primary = np.clip(lc[anchor], 1, N_LAND_COVER) - 1
        pref = rng.uniform(0.01, 0.5, (n_species, N_LAND_COVER)) ** (1.0 + 1.0 / breadth[:, None])
        pref[np.arange(n_species), primary] = 1.0
        prevalence = np.exp(rng.uniform(np.log(0.005), np.log(0.45), n_species))
        field_seed = rng.integers(0, 2**31 - 1, n_species)
        field_length = np.exp(rng.uniform(np.log(150.0), np.log(3000.0), n_species))
        field_strength = rng.uniform(0.5, 1.5, n_species)
        form_odds = _FORM_ODDS[primary]
        forms = tuple(GROWTH_FORMS[rng.choice(len(GROWTH_FORMS), p=o / o.sum())] for o in form_odds)
        invasive, iucn = _flags(rng, prevalence, breadth, primary)
        pool = cls(
            ids=tuple(f"sp{i + 1:04d}" for i in range(n_species)),
            names=_invasive_names(_binomials(rng, n_species), invasive, forms),
            scaling=scaling,
            optimum=optimum,
            width_low=width_low,
            width_high=width_high,
            land_cover_pref=pref,
            alpha=np.zeros(n_species),
            prevalence=prevalence,
            field_seed=field_seed,
            field_length=field_length,
            field_strength=field_strength,
            growth_form=forms,
            invasive=invasive,
            iucn=iucn,
        )
        base = pool.logit(env_sample, x, y, intercept=False)
        object.__setattr__(pool, "alpha", _logistic_calibration(base.astype("float64"), prevalence))
        return pool

    # --- truth --------------------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.ids)

    @cached_property
    def fields(self) -> list[RandomField]:
        return [
            RandomField(int(s), float(length), n_waves=32)
            for s, length in zip(self.field_seed, self.field_length, strict=True)
        ]

    @cached_property
    def index(self) -> dict[str, int]:
        return {sid: i for i, sid in enumerate(self.ids)}

    @property
    def threatened(self) -> np.ndarray:
        return np.isin(np.asarray(self.iucn), IUCN_THREATENED)

    @property
    def protected(self) -> np.ndarray:
        """The rarest :data:`PROTECTED_SHARE` of the non-invasive species (at least one): a function of the drawn
        prevalences, so the pool's parameters and tables stay as they were."""
        rarity = np.where(self.invasive, -np.inf, -np.log(self.prevalence))
        out = np.zeros(self.n, dtype=bool)
        out[np.argsort(-rarity, kind="stable")[: max(1, round(PROTECTED_SHARE * self.n))]] = True
        return out & ~self.invasive

    def logit(
        self,
        env: Mapping[str, np.ndarray],
        x: np.ndarray,
        y: np.ndarray,
        *,
        intercept: bool = True,
        spatial: bool = True,
    ) -> np.ndarray:
        """Logit of the true occurrence probability, (species, *shape of the env arrays).

        2-D env arrays are a window whose 1-D pixel-centre coordinates are ``x`` (columns) and ``y`` (rows); 1-D env
        arrays are points at (x, y). ``spatial=False`` drops the species' clustering field (the environment alone).
        """
        _check_keys(env, (*NICHE_VARIABLES, "land_cover"))
        z = self.scaling.standardise(env)
        shape = z[0].shape
        lc = np.asarray(env["land_cover"]).astype("int64")
        if lc.shape != shape:
            raise SpeciesError(f"land_cover has shape {lc.shape}, niche variables {shape}")
        valid = (lc >= 1) & (lc <= N_LAND_COVER)
        lc_index = np.where(valid, lc - 1, 0)
        with np.errstate(divide="ignore"):
            log_pref = np.log(self.land_cover_pref).astype("float32")
        grid_mode = len(shape) == 2
        if grid_mode and (len(x), len(y)) != (shape[1], shape[0]):
            raise SpeciesError(f"window of shape {shape} needs len(y), len(x) = {shape}, got {len(y)}, {len(x)}")
        out = np.empty((self.n, *shape), dtype="float32")
        for s in range(self.n):
            acc = np.zeros(shape, dtype="float32")
            for v, zv in enumerate(z):
                d = zv - np.float32(self.optimum[s, v])
                w = np.where(d > 0, np.float32(self.width_high[s, v]), np.float32(self.width_low[s, v]))
                acc -= 0.5 * (d / w) ** 2
            acc += log_pref[s][lc_index]
            if spatial:
                field = self.fields[s](x, y) if grid_mode else self.fields[s].at_points(x, y)
                acc += np.float32(self.field_strength[s]) * np.asarray(field, dtype="float32")
            if intercept:
                acc += np.float32(self.alpha[s])
            out[s] = np.where(valid, acc, -np.inf)
        return out

    def probability(self, env: Mapping[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """True occurrence probabilities in [0, 1], float32 (species, *shape); see :meth:`logit` for the layout."""
        return expit(self.logit(env, x, y))

    # --- tables -------------------------------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """One row per species with every parameter (niche optima/widths in the variables' own units too)."""
        cols: dict[str, object] = {
            "species_id": list(self.ids),
            "species_name": list(self.names),
            "growth_form": list(self.growth_form),
            "prevalence": self.prevalence,
            "alpha": self.alpha,
            "invasive": self.invasive,
            "iucn_category": list(self.iucn),
            "threatened": self.threatened,
            "field_seed": self.field_seed,
            "field_length_m": self.field_length,
            "field_strength": self.field_strength,
        }
        for v, var in enumerate(NICHE_VARIABLES):
            mean, std = self.scaling.mean[v], self.scaling.std[v]
            cols[f"{var}_optimum"] = mean + std * self.optimum[:, v]
            cols[f"{var}_width_low"] = std * self.width_low[:, v]
            cols[f"{var}_width_high"] = std * self.width_high[:, v]
        for c in range(N_LAND_COVER):
            cols[f"land_cover_pref_{c + 1}"] = self.land_cover_pref[:, c]
        df = pd.DataFrame(cols)
        df.attrs["scaling"] = {"mean": list(self.scaling.mean), "std": list(self.scaling.std)}
        return df

    @classmethod
    def from_table(cls, df: pd.DataFrame, scaling: EnvScaling) -> SpeciesPool:
        """Rebuild a pool from :meth:`table` (and the region's scaling, stored in the table file's metadata)."""
        try:
            std = np.asarray(scaling.std)
            mean = np.asarray(scaling.mean)
            opt = np.stack([df[f"{v}_optimum"] for v in NICHE_VARIABLES], axis=1)
            low = np.stack([df[f"{v}_width_low"] for v in NICHE_VARIABLES], axis=1)
            high = np.stack([df[f"{v}_width_high"] for v in NICHE_VARIABLES], axis=1)
            return cls(
                ids=tuple(df["species_id"]),
                names=tuple(df["species_name"]),
                scaling=scaling,
                optimum=(opt - mean) / std,
                width_low=low / std,
                width_high=high / std,
                land_cover_pref=np.stack([df[f"land_cover_pref_{c + 1}"] for c in range(N_LAND_COVER)], axis=1),
                alpha=df["alpha"].to_numpy(),
                prevalence=df["prevalence"].to_numpy(),
                field_seed=df["field_seed"].to_numpy(),
                field_length=df["field_length_m"].to_numpy(),
                field_strength=df["field_strength"].to_numpy(),
                growth_form=tuple(df["growth_form"]),
                invasive=df["invasive"].to_numpy(dtype=bool),
                iucn=tuple(df["iucn_category"]),
            )
        except KeyError as exc:
            raise SpeciesError(f"species table lacks column {exc.args[0]!r}") from None

    def write_table(self, path: str | Path) -> Path:
        """Write :meth:`table` as CSV or Parquet (by suffix); Parquet keeps the scaling in its metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        df = self.table()
        if path.suffix == ".csv":
            df.to_csv(path, index=False)
        elif path.suffix == ".parquet":
            df.to_parquet(path, index=False)
        else:
            raise SpeciesError(f"{path}: species table must end in .csv or .parquet")
        return path

    def status_table(self) -> pd.DataFrame:
        """The species status as a user would give it: species_id, species_name, invasive, iucn_category, protected."""
        return pd.DataFrame(
            {
                "species_id": list(self.ids),
                "species_name": list(self.names),
                "invasive": self.invasive,
                "iucn_category": list(self.iucn),
                "protected": self.protected,
            }
        )

    def write_status(self, path: str | Path) -> Path:
        """Write :meth:`status_table` as CSV."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.status_table().to_csv(path, index=False)
        return path

    @classmethod
    def read_table(cls, path: str | Path) -> SpeciesPool:
        """Read a pool written by :meth:`write_table` as Parquet."""
        df = pd.read_parquet(path)
        meta = df.attrs.get("scaling")
        if not meta:
            raise SpeciesError(f"{path}: no region scaling in the Parquet metadata (was it written by write_table?)")
        return cls.from_table(df, EnvScaling(tuple(meta["mean"]), tuple(meta["std"])))


def _flags(
    rng: np.random.Generator, prevalence: np.ndarray, breadth: np.ndarray, primary: np.ndarray
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Invasive (a few %: common generalists) and IUCN categories (~10 % threatened: rare specialists)."""
    n = prevalence.size
    disturbed = np.isin(primary, (0, 1))  # urban, cropland
    invasive_score = np.log(prevalence) + np.log(breadth) + 1.5 * disturbed + rng.gumbel(0, 0.5, n)
    invasive = np.zeros(n, dtype=bool)
    invasive[np.argsort(-invasive_score)[: max(1, round(0.04 * n))]] = True
    rarity = -np.log(prevalence) - np.log(breadth) + rng.gumbel(0, 0.5, n)
    rarity[invasive] = -np.inf
    order = np.argsort(-rarity)
    iucn = np.full(n, "LC", dtype=object)
    n_threat = max(1, round(0.10 * n))
    iucn[order[:n_threat]] = rng.choice(IUCN_THREATENED, n_threat, p=[0.5, 0.35, 0.15])
    iucn[order[n_threat : n_threat + max(1, round(0.08 * n))]] = "NT"
    return invasive, tuple(str(c) for c in iucn)
