"""Virtual species on real WorldClim layers: presence-only training records, presence-absence surveys, and the truth.

The generator follows the virtualspecies R package (Leroy et al. 2016, Ecography 39: 599-607,
doi:10.1111/ecog.01388): each species has an environmental suitability from 2-4 of the 9 standardised
bioclim layers of ``../shared/data/real/predicts_bradypus_bioclim/bio.tif`` (0.5 deg, South America): either a
Gaussian niche (a random centre taken from a real land cell, widths log-uniform) or a logistic of a linear combination;
suitability becomes a probability of presence by virtualspecies' logistic conversion ``1 / (1 + exp((alpha - s) /
beta))``, here of the suitability's rank over land ``s``, with ``alpha`` found so that the mean probability over land
is the species' prevalence (targets spread log-uniformly from rare, 2%, to common, 50%) and ``beta`` 0.3-1 times it.
Presence-only records are drawn from one realised presence map per species, weighted by an observer-effort surface
decaying from a few "cities" (records cluster, as real ones do); the 600 surveys sit at uniformly drawn land cells
(cell centres), presence ~ Bernoulli(p).

The runner generates the set in ``--out``, runs ``geoplantnet sdm -c pipelines/bradypus.yaml`` on it (one run per
``--variant``, each with its own ``--set`` overrides), then ``geoplantnet predict`` with each model file at the
surveys, and prints per model: sdm's spatial-block mean AUC, survey AUC (mean over species with both classes),
mean Spearman correlation with the true probabilities, and seconds; the table also goes to ``results.json``::

    .venv/bin/python benchmarks/virtual_species.py --out outputs/benchmarks/vsp [--species 40] [--set k=v ...] \\
        [--variant shipped: --variant dm:train.po_loss=deepmaxent,train.background=target_group]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from scipy.stats import rankdata, spearmanr
from sklearn.metrics import roc_auc_score

from geoplantnet.testing.cli import Result, cli_sets, run_cli

ROOT = Path(__file__).resolve().parents[1]
BIO = ROOT.parent / "shared" / "data" / "real" / "predicts_bradypus_bioclim" / "bio.tif"
CONFIG = ROOT / "pipelines" / "bradypus.yaml"


@dataclass
class Layers:
    """The land cells of a multi-band raster: standardised values, raw values and cell centres."""

    names: list[str]
    raw: np.ndarray  # (cells, var) as in the file
    z: np.ndarray  # (cells, var) standardised over land
    lon: np.ndarray
    lat: np.ndarray
    res: float


def read_layers(path: Path = BIO) -> Layers:
    """Land cells (every band finite) of ``path`` (EPSG:4326) with their values and centres."""
    with rasterio.open(path) as src:
        data = src.read().astype("float64")
        names = [d or f"band{i + 1}" for i, d in enumerate(src.descriptions)]
        rows, cols = np.nonzero(np.isfinite(data).all(axis=0))
        lon, lat = rasterio.transform.xy(src.transform, rows, cols)
        res = abs(src.transform.a)
    raw = data[:, rows, cols].T
    z = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    return Layers(names, raw, z, np.asarray(lon), np.asarray(lat), res)


@dataclass
class VirtualSet:
    """A generated set: the truth over land and what a user would hold (records, surveys)."""

    species: pd.DataFrame  # one row per species: name, shape, layers, prevalence, records
    prob: np.ndarray  # (land cells, species) true probability of presence
    observations: pd.DataFrame  # species, lon, lat (presence-only records)
    surveys: pd.DataFrame  # id, lon, lat, then 1/0 per species
    truth: pd.DataFrame  # id, then the true probability per species
    record_cells: np.ndarray  # land cell of each record
    survey_cells: np.ndarray


def _suitability(z: np.ndarray, rng: np.random.Generator, gaussian: bool) -> tuple[np.ndarray, list[int]]:
    layers = sorted(rng.choice(z.shape[1], size=int(rng.integers(2, 5)), replace=False).tolist())
    zk = z[:, layers]
    if gaussian:  # a niche centred on conditions that exist somewhere
        centre = zk[rng.integers(len(zk))]
        width = np.exp(rng.uniform(np.log(0.4), np.log(2.0), len(layers)))
        return np.exp(-0.5 * (((zk - centre) / width) ** 2).sum(axis=1)), layers
    coef = rng.uniform(0.5, 2.0, len(layers)) * rng.choice([-1.0, 1.0], len(layers))
    return 1.0 / (1.0 + np.exp(-(zk @ coef))), layers


def _probability(suit: np.ndarray, prevalence: float, beta: float) -> np.ndarray:
    """virtualspecies' logistic conversion, ``alpha`` by bisection so that the mean probability is ``prevalence``."""
    lo, hi = -1.0, 2.0  # mean probability falls as alpha rises
    for _ in range(60):
        alpha = (lo + hi) / 2
        p = 1.0 / (1.0 + np.exp((alpha - suit) / beta))
        lo, hi = (alpha, hi) if p.mean() > prevalence else (lo, alpha)
    return p


def generate(
    layers: Layers,
    n_species: int = 40,
    n_records: int = 2600,
    n_surveys: int = 600,
    n_cities: int = 6,
    seed: int = 0,
) -> VirtualSet:
    """``n_species`` virtual species on ``layers``, about ``n_records`` biased presence-only records in all and
    ``n_surveys`` presence-absence surveys; the same ``seed`` gives the same set."""
    rng = np.random.default_rng(seed)
    n_cells = len(layers.z)
    targets = rng.permutation(np.exp(np.linspace(np.log(0.02), np.log(0.5), n_species)))
    names = [f"vsp{s + 1:02d}" for s in range(n_species)]
    prob = np.empty((n_cells, n_species))
    rows = []
    for s in range(n_species):
        gaussian = s % 2 == 0
        suit, used = _suitability(layers.z, rng, gaussian)
        # on the suitability's rank over land, with a slope proportional to the prevalence, a rare species keeps a
        # sharp niche (best cells at p 0.6-0.95) rather than a low plateau where a logistic response saturates
        rank = rankdata(suit) / len(suit)
        prob[:, s] = _probability(rank, targets[s], beta=float(rng.uniform(0.3, 1.0) * targets[s]))
        rows.append(
            {
                "species": names[s],
                "shape": "gaussian" if gaussian else "logistic",
                "layers": [layers.names[i] for i in used],
                "prevalence": float(prob[:, s].mean()),
            }
        )
    # observer effort: exponential decay (about 300 km) from a few cities, a small floor elsewhere
    cities = rng.choice(n_cells, n_cities, replace=False)
    dx = (layers.lon[:, None] - layers.lon[cities]) * np.cos(np.radians(layers.lat[:, None]))
    dist = np.hypot(dx, layers.lat[:, None] - layers.lat[cities])
    effort = 0.02 + np.exp(-dist / 3.0).sum(axis=1)
    share = np.sqrt(prob.mean(axis=0))  # common species get more records, less than in proportion
    counts = np.maximum(5, np.round(n_records * share / share.sum())).astype(int)
    record_cells, record_species = [], []
    for s in range(n_species):
        weight = (rng.random(n_cells) < prob[:, s]) * effort  # one realised presence map per species
        cells = rng.choice(n_cells, counts[s], p=weight / weight.sum())
        record_cells.append(cells)
        record_species += [names[s]] * counts[s]
        rows[s]["records"] = int(counts[s])
    cells = np.concatenate(record_cells)
    jitter = rng.uniform(-0.45, 0.45, (2, len(cells))) * layers.res  # anywhere inside the cell
    observations = pd.DataFrame(
        {"species": record_species, "lon": layers.lon[cells] + jitter[0], "lat": layers.lat[cells] + jitter[1]}
    ).round(5)
    sites = np.sort(rng.choice(n_cells, n_surveys, replace=False))
    points = pd.DataFrame(
        {"id": [f"s{i:04d}" for i in range(n_surveys)], "lon": layers.lon[sites], "lat": layers.lat[sites]}
    )
    present = (rng.random((n_surveys, n_species)) < prob[sites]).astype(int)
    surveys = pd.concat([points, pd.DataFrame(present, columns=names)], axis=1)
    truth = pd.concat([points[["id"]], pd.DataFrame(prob[sites], columns=names)], axis=1)
    return VirtualSet(pd.DataFrame(rows), prob, observations, surveys, truth, cells, sites)


def write_set(vs: VirtualSet, folder: Path) -> dict[str, Path]:
    """The set's files in ``folder``: observations (``sdm --observations``), surveys (``predict --points``, plus
    1/0 per species), truth (true probability per survey and species) and the species table."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {k: folder / f"{k}.csv" for k in ("observations", "surveys", "truth", "species")}
    vs.observations.to_csv(paths["observations"], index=False)
    vs.surveys.to_csv(paths["surveys"], index=False)
    vs.truth.to_csv(paths["truth"], index=False)
    vs.species.assign(layers=vs.species["layers"].str.join("+")).to_csv(paths["species"], index=False)
    return paths


def score(pred: pd.DataFrame, surveys: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """Survey AUC (mean over species with both classes among predicted sites) and mean Spearman correlation with
    the true probabilities; points without a prediction (NaN) are counted and left out."""
    aucs, rhos = [], []
    ok = pred.notna().all(axis=1).to_numpy()
    for name in pred.columns:
        y, p, t = surveys[name].to_numpy()[ok], pred[name].to_numpy()[ok], truth[name].to_numpy()[ok]
        if 0 < y.sum() < len(y):
            aucs.append(roc_auc_score(y, p))
        if np.ptp(p) > 0:
            rhos.append(spearmanr(p, t).statistic)
    return {
        "survey_auc": float(np.mean(aucs)),
        "spearman": float(np.mean(rhos)),
        "n_auc": len(aucs),
        "no_data": int((~ok).sum()),
    }


def _cli(command: str, *args: str | Path, sets: list[str]) -> Result:
    """``geoplantnet COMMAND`` in this process on the example's configuration and the layers."""
    return run_cli(command, "-q", "-c", CONFIG, "--rasters", BIO, *args, "--overwrite", *cli_sets(sets), cwd=ROOT)


def _predict(model: str, paths: dict[str, Path], out: Path, sets: list[str], species: list[str]) -> pd.DataFrame:
    csv = out / f"predict-{Path(model).stem}.csv"
    done = _cli("predict", "--model", model, "--points", paths["surveys"], "--out", csv, sets=sets)
    if done.returncode != 0:
        raise RuntimeError(f"predict {model} failed:\n{done.stderr[-3000:]}")
    pred = pd.read_csv(csv)
    columns = [c for c in pred.columns if c not in ("id", "lon", "lat", "moved_m")]
    return pred[columns].set_axis(_species_names(model, columns), axis=1)[species]


def _species_names(model: str, columns: list[str]) -> list[str]:
    """The model's species names in the order of ``columns`` (its species ids)."""
    if model.endswith(".peer"):
        from geoplantnet.models.peers import read_peer_spec

        spec = read_peer_spec(model)
    else:
        from geoplantnet.inference.species import read_model

        spec = read_model(model)[1]
    names = dict(zip(spec.species, spec.species_name or spec.species, strict=True))
    return [names[c] for c in columns]


def _cv_seconds(report: Path) -> dict[str, float]:
    """Each model's cross-validation wall time, from the report's notes (summary.json has the whole run's only)."""
    match = re.search(r"wall time per model \(all folds\): (\{.*\})", report.read_text())
    return json.loads(match.group(1)) if match else {}


def run_variant(name: str, sets: list[str], paths: dict[str, Path], out: Path) -> list[dict]:
    """One ``sdm`` run on the set with ``sets`` overrides, then each of its models scored at the surveys."""
    folder = out / name
    sets = [*sets, f"workdir={out / 'work'}"]
    t = time.perf_counter()
    done = _cli("sdm", "--observations", paths["observations"], "--out", folder / "sdm", sets=sets)
    if done.returncode != 0:
        raise RuntimeError(f"sdm ({name}) failed:\n{done.stderr[-3000:]}")
    sdm_seconds = time.perf_counter() - t
    summary = json.loads((folder / "sdm" / "summary.json").read_text())
    surveys, truth = pd.read_csv(paths["surveys"]), pd.read_csv(paths["truth"])
    species = [c for c in truth.columns if c != "id"]
    cv_s = _cv_seconds(Path(summary["report"]))
    rows = []
    for model, path in summary["model_files"].items():
        t = time.perf_counter()
        pred = _predict(path, paths, folder, sets, species)
        rows.append(
            {
                "variant": name,
                "model": model,
                "sdm_auc": summary["models"][model]["auc"],
                # the choice among recipes: records against the other species' record sites, training folds only
                "sdm_auc_tg": summary["models"][model].get("auc_tg"),
                **score(pred, surveys, truth),
                "cv_s": cv_s.get(model),
                "sdm_s": round(sdm_seconds, 1),
                "predict_s": round(time.perf_counter() - t, 1),
            }
        )
    return rows


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name:key=value,key=value`` -> (name, overrides); a comma inside a value (a list) stays in it."""
    name, _, rest = text.partition(":")
    return name, [s for s in re.split(r",(?=[\w.]+=)", rest) if s]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the set, the runs and results.json")
    parser.add_argument("--species", type=int, default=40)
    parser.add_argument("--records", type=int, default=2600, help="presence-only records in all (about)")
    parser.add_argument("--surveys", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for every variant's sdm and predict (repeatable)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="one sdm run with these overrides on top of --set (repeatable; default: shipped:)",
    )
    args = parser.parse_args(argv)
    vs = generate(read_layers(), args.species, args.records, args.surveys, seed=args.seed)
    paths = write_set(vs, args.out / "set")
    prev = vs.species["prevalence"]
    print(
        f"{args.species} species, {len(vs.observations)} records, {len(vs.surveys)} surveys, "
        f"prevalence {prev.min():.3f}-{prev.max():.3f}: {paths['observations'].parent}",
        flush=True,
    )
    rows = []
    for text in args.variant or ["shipped:"]:
        name, sets = parse_variant(text)
        rows += run_variant(name, [*args.sets, *sets], paths, args.out)
        print(pd.DataFrame(rows).to_string(index=False, float_format="%.3f"), flush=True)
    result = {
        "argv": sys.argv[1:] if argv is None else argv,
        "species": args.species,
        "records": len(vs.observations),
        "surveys": args.surveys,
        "seed": args.seed,
        "sets": args.sets,
        "variants": args.variant,
        "rows": rows,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(args.out / "results.json")
    return rows


if __name__ == "__main__":
    main()
