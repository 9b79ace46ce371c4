"""Virtual habitats with EUNIS-like codes, each defined by the assemblage it holds.

Level 1 follows EUNIS 2021 (R grasslands, S heath/scrub, T forests, Q wetlands, C inland waters, U rocky, V man-made
vegetated, J constructed); level 2 are real EUNIS 2021 groups ("R1 Dry grasslands"); level 3 ("R1A") are drawn for
the region: each sits at a point of the region's environment on one land-cover class and owns a diagnostic species
group (species that do best there relative to elsewhere). A plot's habitat follows the spirit of the EUNIS-ESy expert
system: the habitat whose diagnostic group has the highest summed cover; no group reaching :data:`MIN_DIAGNOSTIC_COVER`
or a tie between unrelated habitats falls back to the level-1 code of the land cover.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit

from geoplantnet.sim.species import IUCN_THREATENED, N_LAND_COVER, NICHE_VARIABLES, SpeciesPool

LEVEL1 = {
    "C": "Inland surface waters",
    "J": "Constructed, industrial and other artificial habitats",
    "Q": "Wetlands",
    "R": "Grasslands and lands dominated by forbs, mosses or lichens",
    "S": "Heathland, scrub and tundra",
    "T": "Forest and other wooded land",
    "U": "Inland habitats with no or little soil and mostly with sparse vegetation",
    "V": "Vegetated man-made habitats",
}
# Land-cover class (environment.LAND_COVER_CLASSES) -> level-1 code, and the level-2 groups each class holds.
LAND_COVER_LEVEL1 = {1: "J", 2: "V", 3: "R", 4: "T", 5: "T", 6: "S", 7: "Q", 8: "C", 9: "U"}
LEVEL2: dict[str, tuple[str, tuple[int, ...]]] = {
    "C1": ("Surface standing waters", (8,)),
    "C2": ("Surface running waters", (8,)),
    "J1": ("Buildings of cities, towns and villages", (1,)),
    "J4": ("Transport networks and other constructed hard-surfaced areas", (1,)),
    "Q1": ("Raised and blanket bogs", (7,)),
    "Q2": ("Valley mires, poor fens and transition mires", (7,)),
    "Q5": ("Helophyte beds", (7,)),
    "R1": ("Dry grasslands", (3,)),
    "R2": ("Mesic grasslands", (3,)),
    "R3": ("Seasonally wet and wet grasslands", (3,)),
    "R4": ("Alpine and subalpine grasslands", (3,)),
    "S3": ("Temperate and mediterranean montane scrub", (6,)),
    "S4": ("Temperate shrub heathland", (6,)),
    "T1": ("Broadleaved deciduous forest", (4,)),
    "T3": ("Coniferous forest", (5,)),
    "U2": ("Screes", (9,)),
    "U3": ("Inland cliffs, rock pavements and outcrops", (9,)),
    "V1": ("Arable land and market gardens", (2,)),
    "V3": ("Artificial grasslands and herb-dominated habitats", (2,)),
}
# How much a land-cover class adds to a habitat's threat score: wetlands and waters are the most threatened habitats
# of the European Red List, built and arable land (J, V) is not assessed.
THREAT_WEIGHT = {3: 1.0, 4: 0.5, 5: 0.3, 6: 1.0, 7: 2.0, 8: 1.5, 9: 0.5}
# Categories by rank of the threat score (0 = most threatened): the first share of the assessed habitats gets CR...
THREAT_SHARES = (("CR", 0.05), ("EN", 0.15), ("VU", 0.35), ("NT", 0.55), ("LC", 1.0))
MIN_DIAGNOSTIC_COVER = 1.0  # % summed cover a diagnostic group needs before a plot counts as that habitat


class HabitatError(ValueError):
    """Bad input to the habitat rules (unknown species, mismatched lengths, impossible settings)."""


def mean_cover_if_present(p: np.ndarray) -> np.ndarray:
    """Mean cover (%) of a species where it is present: common where it thrives (larger for higher p)."""
    return 2.0 + 48.0 * np.asarray(p, dtype="float32")


def expected_cover(p: np.ndarray) -> np.ndarray:
    """Expected cover (%) of a species with occurrence probability ``p`` (absent counts as 0)."""
    p = np.asarray(p, dtype="float32")
    return p * mean_cover_if_present(p)


def _describe(z: np.ndarray) -> str:
    """Words for a standardised (temperature, precipitation, soil_ph, elevation) point, for level-3 names."""
    ph = "acidic" if z[2] < -0.5 else "base-rich" if z[2] > 0.5 else "mesotrophic"
    elev = "montane" if z[3] > 0.7 else "lowland" if z[3] < -0.7 else "colline"
    wet = ", humid" if z[1] > 0.8 else ", dry" if z[1] < -0.8 else ""
    return f"{ph}, {elev}{wet}"


def _farthest_points(rng: np.random.Generator, points: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` well-spread points (greedy farthest-point sampling from a random start)."""
    chosen = [int(rng.integers(points.shape[0]))]
    dist = np.linalg.norm(points - points[chosen[0]], axis=1)
    for _ in range(1, k):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return np.asarray(chosen)


@dataclass(frozen=True, eq=False)
class HabitatSet:
    """The habitat hierarchy, the level-3 habitats' diagnostic groups, and the assignment rule."""

    codes: tuple[str, ...]  # every code, levels 1-3, sorted (the habitat raster indexes this)
    names: tuple[str, ...]
    parents: tuple[str, ...]  # "" at level 1
    land_cover: tuple[int, ...]  # the class a level-3 habitat sits on (0 above level 3)
    centroid: np.ndarray  # (n_codes, V) standardised niche conditions of level-3 habitats (nan above)
    diagnostic: Mapping[str, tuple[str, ...]]  # level-3 code -> diagnostic species ids, best first
    species_ids: tuple[str, ...]
    species_land_cover: np.ndarray  # (S,) each species' preferred class, the last-resort fallback

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def generate(
        cls, seed: int, n_habitats: int, pool: SpeciesPool, env_sample: Mapping[str, np.ndarray]
    ) -> HabitatSet:
        """Draw ``n_habitats`` level-3 habitats over the region's land-cover classes, with diagnostic species groups."""
        if n_habitats < 1:
            raise HabitatError(f"n_habitats must be >= 1, got {n_habitats}")
        rng = np.random.default_rng([seed, 0x4AB17A7])
        z = np.stack(pool.scaling.standardise(env_sample), axis=1)
        lc = np.asarray(env_sample["land_cover"]).astype("int64")
        leaves = _allocate(n_habitats, lc)
        codes, names, parents, covers, cents = [], [], [], [], []
        for klass, count in leaves.items():
            pts = z[lc == klass] if np.any(lc == klass) else z
            picks = pts[_farthest_points(rng, pts, count)]
            options = [c for c, (_, classes) in LEVEL2.items() if klass in classes]
            used: dict[str, int] = {}
            for j, centre in enumerate(picks):
                l2 = options[j % len(options)]
                letter = chr(ord("A") + used.get(l2, 0))
                used[l2] = used.get(l2, 0) + 1
                codes.append(f"{l2}{letter}")
                name = f"{LEVEL2[l2][0]}, {_describe(centre)}"
                names.append(name if name not in names else f"{name} ({letter})")
                parents.append(l2)
                covers.append(klass)
                cents.append(centre)
        diagnostic = _diagnostic_groups(rng, pool, np.asarray(cents), covers, codes)
        rows = {code: (LEVEL1[code], "", 0) for code in LEVEL1}
        rows.update({p: (LEVEL2[p][0], p[0], 0) for p in parents})
        rows.update({c: (n, p, k) for c, n, p, k in zip(codes, names, parents, covers, strict=True)})
        ordered = sorted(rows)
        centroid = np.full((len(ordered), z.shape[1]), np.nan)
        for c, centre in zip(codes, cents, strict=True):
            centroid[ordered.index(c)] = centre
        return cls(
            codes=tuple(ordered),
            names=tuple(rows[c][0] for c in ordered),
            parents=tuple(rows[c][1] for c in ordered),
            land_cover=tuple(rows[c][2] for c in ordered),
            centroid=centroid,
            diagnostic=diagnostic,
            species_ids=pool.ids,
            species_land_cover=np.argmax(pool.land_cover_pref, axis=1) + 1,
        )

    # --- structure ----------------------------------------------------------------------------------------------
    @cached_property
    def index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.codes)}

    @cached_property
    def leaves(self) -> tuple[str, ...]:
        return tuple(c for c in self.codes if c in self.diagnostic)

    @cached_property
    def _species_index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.species_ids)}

    @cached_property
    def membership(self) -> np.ndarray:
        """(leaves, species) 0/1 matrix of diagnostic groups."""
        m = np.zeros((len(self.leaves), len(self.species_ids)), dtype="float32")
        for h, code in enumerate(self.leaves):
            m[h, [self._species_index[s] for s in self.diagnostic[code]]] = 1.0
        return m

    def level(self, code: str) -> int:
        return len(code) if len(code) <= 3 else 3

    def level1(self, code: str) -> str:
        return code[0]

    def fallback(self, land_cover: int) -> str:
        """The level-1 code of a land-cover class (unknown classes count as man-made vegetation)."""
        return LAND_COVER_LEVEL1.get(int(land_cover), "V")

    # --- the rule -----------------------------------------------------------------------------------------------
    def assign_habitat(self, species_ids: Sequence[str], covers: Sequence[float], land_cover: int | None = None) -> str:
        """The habitat of a plot: the level-3 habitat whose diagnostic group has the highest summed cover.

        No group reaching :data:`MIN_DIAGNOSTIC_COVER`, or a tie between habitats of different level-1 groups, gives
        the level-1 code of ``land_cover`` (without it, of the dominant species' preferred land cover); a tie within
        one level-1 group gives that group's code.
        """
        if len(species_ids) != len(covers):
            raise HabitatError(f"{len(species_ids)} species but {len(covers)} covers")
        try:
            cols = [self._species_index[s] for s in species_ids]
        except KeyError as exc:
            raise HabitatError(f"species {exc.args[0]!r} is not in the habitat set's species pool") from None
        vec = np.zeros(len(self.species_ids), dtype="float64")
        np.add.at(vec, cols, np.asarray(covers, dtype="float64"))
        scores = self.membership.astype("float64") @ vec
        best = scores.max() if scores.size else 0.0
        if best >= MIN_DIAGNOSTIC_COVER:
            winners = [self.leaves[i] for i in np.flatnonzero(np.isclose(scores, best))]
            if len(winners) == 1:
                return winners[0]
            if len({w[0] for w in winners}) == 1:
                return winners[0][0]
        if land_cover is None:
            if not cols:
                return self.fallback(0)
            dominant = cols[int(np.argmax(covers))]
            land_cover = int(self.species_land_cover[dominant])
        return self.fallback(land_cover)

    def assign_expected(self, p: np.ndarray, land_cover: np.ndarray) -> np.ndarray:
        """Habitat raster (int16 indices into :attr:`codes`) of the expected assemblage, p of shape (species, ...)."""
        if p.shape[0] != len(self.species_ids) or p.shape[1:] != np.shape(land_cover):
            raise HabitatError(
                f"p {p.shape} does not match {len(self.species_ids)} species x land cover {land_cover.shape}"
            )
        flat = expected_cover(p.reshape(p.shape[0], -1))
        scores = self.membership @ flat  # (leaves, pixels)
        best = np.argmax(scores, axis=0)
        leaf_index = np.array([self.index[c] for c in self.leaves], dtype="int16")
        lc = np.asarray(land_cover).reshape(-1).astype("int64")
        fallback_index = np.array([self.index[self.fallback(k)] for k in range(N_LAND_COVER + 1)], dtype="int16")
        fall = fallback_index[np.clip(lc, 0, N_LAND_COVER)]
        out = np.where(scores.max(axis=0) >= MIN_DIAGNOSTIC_COVER, leaf_index[best], fall)
        return out.reshape(np.shape(land_cover)).astype("int16")

    # --- tables -------------------------------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """One row per code: level, parent, name, land cover, diagnostic species (``;``-joined ids), centroid (z)."""
        return pd.DataFrame(
            {
                "index": np.arange(len(self.codes)),
                "code": list(self.codes),
                "level": [self.level(c) for c in self.codes],
                "parent": list(self.parents),
                "name": list(self.names),
                "land_cover": list(self.land_cover),
                "n_diagnostic": [len(self.diagnostic.get(c, ())) for c in self.codes],
                "diagnostic_species": [";".join(self.diagnostic.get(c, ())) for c in self.codes],
                **{f"centroid_{v}": self.centroid[:, i] for i, v in enumerate(NICHE_VARIABLES)},
            }
        )

    @classmethod
    def from_table(cls, df: pd.DataFrame, pool: SpeciesPool) -> HabitatSet:
        """Rebuild the set (and so the assignment rule) from :meth:`table` and the species pool it was drawn for."""
        try:
            df = df.sort_values("code")
            diagnostic = {
                r.code: tuple(str(r.diagnostic_species).split(";")) for r in df.itertuples() if r.n_diagnostic > 0
            }
            centroid = df[[f"centroid_{v}" for v in NICHE_VARIABLES]].to_numpy(dtype="float64")
            parents = tuple("" if pd.isna(p) else str(p) for p in df["parent"])
            habitats = cls(
                codes=tuple(df["code"]),
                names=tuple(df["name"]),
                parents=parents,
                land_cover=tuple(int(k) for k in df["land_cover"]),
                centroid=centroid,
                diagnostic=diagnostic,
                species_ids=pool.ids,
                species_land_cover=np.argmax(pool.land_cover_pref, axis=1) + 1,
            )
        except (KeyError, AttributeError) as exc:
            raise HabitatError(f"habitat table lacks column {exc.args[0]!r}") from None
        unknown = {s for g in diagnostic.values() for s in g} - set(pool.ids)
        if unknown:
            raise HabitatError(f"habitat table names species not in the pool: {sorted(unknown)[:5]}")
        return habitats

    def red_list(self, pool: SpeciesPool) -> dict[str, str]:
        """A Red List category per code, deterministic: level-3 habitats ranked by threat score (land-cover weight +
        rarity of the diagnostic species, -log10 of their mean prevalence), J/V ones ``NE``; a level-2 code takes the
        worst of its habitats; level-1 codes get none (they test the fallback and the report of missing codes)."""
        prevalence = dict(zip(pool.ids, pool.prevalence, strict=True))
        scores = {
            c: THREAT_WEIGHT[k] - np.log10(np.mean([prevalence[s] for s in self.diagnostic[c]]))
            for c, k in zip(self.codes, self.land_cover, strict=True)
            if c in self.diagnostic and k in THREAT_WEIGHT
        }
        ranked = sorted(scores, key=lambda c: (-scores[c], c))
        out = {c: "NE" for c in self.leaves if c not in scores}
        for r, code in enumerate(ranked):
            out[code] = next(cat for cat, share in THREAT_SHARES if r / len(ranked) < share)
        order = [cat for cat, _ in THREAT_SHARES] + ["NE"]
        for code, parent in zip(self.codes, self.parents, strict=True):
            if code in out and len(parent) == 2:
                out[parent] = min(out.get(parent, "NE"), out[code], key=order.index)
        return out

    def status_table(self, pool: SpeciesPool) -> pd.DataFrame:
        """code, red_list_category (``""`` at level 1), threatened (VU, EN, CR) for every code."""
        cats = self.red_list(pool)
        category = [cats.get(c, "") for c in self.codes]
        threatened = [c in IUCN_THREATENED for c in category]
        return pd.DataFrame({"code": list(self.codes), "red_list_category": category, "threatened": threatened})

    def write_status(self, path: str | Path, pool: SpeciesPool) -> Path:
        """Write :meth:`status_table` as CSV."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.status_table(pool).to_csv(path, index=False)
        return path

    def write_table(self, path: str | Path) -> Path:
        """Write :meth:`table` as CSV or Parquet (by suffix)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".csv":
            self.table().to_csv(path, index=False)
        elif path.suffix == ".parquet":
            self.table().to_parquet(path, index=False)
        else:
            raise HabitatError(f"{path}: habitat table must end in .csv or .parquet")
        return path


def _allocate(n_habitats: int, land_cover: np.ndarray) -> dict[int, int]:
    """How many level-3 habitats each land-cover class gets: every present class one, the rest by sqrt(area)."""
    classes, counts = np.unique(land_cover[(land_cover >= 1) & (land_cover <= N_LAND_COVER)], return_counts=True)
    if classes.size == 0:
        classes, counts = np.array([3]), np.array([1])
    order = np.argsort(-counts)
    classes, counts = classes[order], counts[order]
    alloc = dict.fromkeys(classes[:n_habitats].tolist(), 1)
    weights = np.sqrt(counts[: len(alloc)].astype("float64"))
    for _ in range(n_habitats - len(alloc)):
        share = np.array([alloc[int(c)] for c in classes[: len(alloc)]]) / weights
        alloc[int(classes[int(np.argmin(share))])] += 1
    return {int(k): v for k, v in alloc.items()}


def _diagnostic_groups(
    rng: np.random.Generator, pool: SpeciesPool, centroids: np.ndarray, classes: list[int], codes: list[str]
) -> dict[str, tuple[str, ...]]:
    """Disjoint diagnostic groups, drafted in rounds: each habitat takes its most faithful species still free.

    Candidates for habitat h prefer h's land-cover class above all others and are reasonably common at h's
    conditions (p >= 0.05); fidelity = log p(s at h) / prevalence(s), so the group is specific to h rather than
    common everywhere (a group of generalists would win the summed-cover rule all over the map). The environment
    alone decides (no spatial field), as for an ideal, well-sampled plot.
    """
    env = {"land_cover": np.asarray(classes)}
    for v, name in enumerate(NICHE_VARIABLES):
        env[name] = pool.scaling.mean[v] + pool.scaling.std[v] * centroids[:, v]
    p = expit(pool.logit(env, np.zeros(len(classes)), np.zeros(len(classes)), spatial=False)).T  # (H, S)
    with np.errstate(divide="ignore"):
        fidelity = np.log(p) - np.log(pool.prevalence)[None, :]
    primary = np.argmax(pool.land_cover_pref, axis=1) + 1
    on_class = primary[None, :] == np.asarray(classes)[:, None]
    eligible = np.where((p >= 0.05) & on_class, fidelity, -np.inf)
    n_h, n_s = p.shape
    size = int(np.clip(n_s // n_h, 1, 8))
    taken = np.zeros(n_s, dtype=bool)
    groups: list[list[int]] = [[] for _ in range(n_h)]
    for round_ in range(size):
        for h in rng.permutation(n_h):
            score = np.where(taken, -np.inf, eligible[h])
            if round_ == 0 and not np.isfinite(score).any():  # every habitat gets at least one species
                score = np.where(taken, -np.inf, np.where(on_class[h], fidelity[h] + 100.0, fidelity[h]))
                if not np.isfinite(score).any():
                    score = fidelity[h]
            if np.isfinite(score).any():
                s = int(np.argmax(score))
                groups[h].append(s)
                taken[s] = True
    return {code: tuple(pool.ids[s] for s in grp) for code, grp in zip(codes, groups, strict=True)}
