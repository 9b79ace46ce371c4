"""Ablation of the biodiversity-value U-Net beside its random-forest peer, on the polygon folds of ``value``.

The polygons, their spatial folds, the feature stack and the inner validation split are the job's
(:func:`~geoplantnet.validation.value.load_labels`, :func:`~geoplantnet.validation.value.inner_split`). Per variant
and outer fold, the U-Net and the forest are fitted twice: on the inner part of the training polygons, scored on the
inner validation polygons (a spatial fifth of the training polygons: what a choice may use), and on all training
polygons, scored on the held-out fold (printed for the record, never to choose). The variant the ablation chooses is
the U-Net with the best mean inner-validation AUC. With the virtual region, each variant's final model (every
polygon) is also scored against the true value score outside the training polygons (Spearman and Pearson r of the
50 m cell means), for the record too.

- ``probability``: the probability of high (class-weighted BCE), today's model without a score column;
- ``score``: the polygons' condition score (``value.score_column``, class-weighted squared error; the forest a
  regression forest), the map linear in its units;
- ``score+depth1``: one pooling level (receptive radius 10 pixels instead of 26);
- ``score+patience``: early stopping on the inner split's own validation fifth.

    .venv/bin/python benchmarks/value_ablation.py [--config pipelines/default.yaml] [--variants a,b]
        [--set value.k=v ...] [--out outputs/benchmarks/value-ablation.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from geoplantnet.core.config import RunConfig, ValueConfig, load_config
from geoplantnet.core.grid import Tile
from geoplantnet.evaluation.value import training_cells
from geoplantnet.inference.value import read_features, run_features
from geoplantnet.products.value import value_grid
from geoplantnet.runs.context import RunContext
from geoplantnet.runs.inputs import run_inputs, virtual_value_polygons, virtual_value_score
from geoplantnet.samples.value_labels import Labels
from geoplantnet.validation.value import (
    ValueTraining,
    auc_accuracy,
    fit,
    fit_forest,
    inner_split,
    load_labels,
    sample_pixels,
)

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, dict[str, Any]] = {
    "probability": {"score_column": None},
    "score": {},
    "score+depth1": {"depth": 1},
    "score+patience": {"patience": 10},
}


def load(cfg: RunConfig) -> dict[str, Any]:
    """The job's labels (read with the score column, when the configuration names one) and the feature stack of
    their window; with the virtual region also the truth and the whole grid's stack."""
    ctx = RunContext(cfg, progress=False)
    grid = value_grid(cfg.grid, cfg.value)
    inputs = run_inputs(cfg, observations=False, progress=False)
    source = cfg.value.polygons or virtual_value_polygons(cfg)
    labels = load_labels(cfg.value, source, grid)
    sources = ctx.sources(inputs)
    bands, variables, one_hot, names = run_features(sources, grid)
    window = Tile(0, 0, labels.window[0], labels.window[2], 0, 0, "training-window")
    data = {
        "labels": labels,
        "stack": read_features(sources, grid, window, labels.window, bands, variables),
        "names": names,
        "one_hot": one_hot,
    }
    if cfg.inputs.virtual:
        whole = Tile(0, 0, 0, 0, 0, 0, "grid")
        data["grid_stack"] = read_features(sources, grid, whole, (0, grid.height, 0, grid.width), bands, variables)
        data["truth"] = virtual_value_score(cfg).values
        data["map_grid"] = cfg.grid.grid()
    return data


def _fit_and_score(
    training: ValueTraining, data: dict[str, Any], label: np.ndarray, test: np.ndarray, pixels: tuple
) -> dict[str, float | None]:
    """The U-Net and the forest fitted on ``label``'s polygons, both scored (AUC) on the sampled pixels ``test``."""
    labels: Labels = data["labels"]
    rows, cols, y, score = pixels
    net, _ = fit(training, data["stack"], label, labels, data["names"], data["one_hot"])
    unet = auc_accuracy(y[test], net.predict(data["stack"])[0][rows[test], cols[test]])["auc"]
    train = label[rows, cols] >= 0
    x = data["stack"][:, rows, cols].T
    if len(np.unique(y[train])) < 2:  # one class to learn: no forest (as the job's folds)
        return {"unet": unet, "forest": None}
    forest = fit_forest(training.settings, x[train], y[train], None if score is None else score[train])
    prob = forest.predict_proba(x[test])[:, 1] if score is None else net.spec.score_value(forest.predict(x[test]))
    return {"unet": unet, "forest": auc_accuracy(y[test], prob)["auc"]}


def _truth(training: ValueTraining, data: dict[str, Any]) -> dict[str, float]:
    """The final model (every polygon) against the true value score, outside the training polygons (50 m)."""
    from scipy.stats import pearsonr, spearmanr

    labels: Labels = data["labels"]
    net, _ = fit(training, data["stack"], labels.rasters.label, labels, data["names"], data["one_hot"])
    map_grid = data["map_grid"]
    ratio = round(map_grid.resolution / training.settings.resolution)
    pred = net.predict(data["grid_stack"])[0]
    cells = pred.reshape(map_grid.height, ratio, map_grid.width, ratio).mean(axis=(1, 3))
    truth = data["truth"]
    ok = np.isfinite(truth) & np.isfinite(cells) & ~training_cells(labels, map_grid, ratio)
    return {
        "spearman_out": round(float(spearmanr(truth[ok], cells[ok]).statistic), 4),
        "pearson_out": round(float(pearsonr(truth[ok], cells[ok]).statistic), 4),
    }


def run_variant(name: str, settings: ValueConfig, data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per outer fold: inner-validation and test-fold AUC of the U-Net and the forest."""
    labels: Labels = data["labels"]
    r = labels.rasters
    training = ValueTraining(settings, "cpu", f"ablation:{name}")
    rows, cols = sample_pixels(r, settings.pixels_per_polygon, settings.seed)
    pixel_polygon = r.polygon[rows, cols]
    score = None if settings.score_column is None else r.score[rows, cols].astype(np.float64)
    pixels = (rows, cols, r.label[rows, cols].astype(np.int64), score)
    out = []
    for k in range(settings.folds):
        t0 = time.perf_counter()
        held = labels.polygons["polygon_id"][labels.polygons["fold"] == k].to_numpy()
        train_label = np.where(np.isin(r.polygon, held), -1, r.label).astype(np.int8)
        fit_label, val_label = inner_split(labels, train_label, settings)
        if val_label is None:
            continue
        inner = _fit_and_score(training, data, fit_label, val_label[rows, cols] >= 0, pixels)
        # the inner fit's own early stopping (patience) needs a split of its own: inner_split of fit_label
        outer = _fit_and_score(training, data, train_label, np.isin(pixel_polygon, held), pixels)
        out.append(
            {
                "variant": name,
                "fold": k,
                "inner_unet": inner["unet"],
                "inner_forest": inner["forest"],
                "test_unet": outer["unet"],
                "test_forest": outer["forest"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(
            f"{name:<16} {k:>4}  {_f(inner['unet'])}  {_f(inner['forest'])}  {_f(outer['unet'])}  "
            f"{_f(outer['forest'])}  {out[-1]['seconds']:7.1f}",
            flush=True,
        )
    return out


def _f(v: float | None) -> str:
    return f"{v:9.3f}" if v is not None else f"{'-':>9}"


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r[key] is not None]
    return round(float(np.mean(vals)), 4) if vals else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "pipelines" / "default.yaml"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--set", action="append", default=[], help="a setting, key=value (e.g. value.epochs=20)")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks" / "value-ablation.json"))
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    if cfg.value.score_column is None:
        ap.error("the score variants need polygons with a score: set value.score_column")
    data = load(cfg)
    print(f"{len(data['labels'].polygons)} polygons, {cfg.value.folds} folds")
    print(f"{'variant':<16} fold  val U-Net val forest test U-Net test forest seconds")
    rows, means = [], {}
    for name in args.variants.split(","):
        settings = cfg.value.model_copy(update=VARIANTS[name])
        got = run_variant(name, settings, data)
        rows += got
        keys = ("inner_unet", "inner_forest", "test_unet", "test_forest")
        means[name] = {k: _mean(got, k) for k in keys}
        means[name]["test_wins"] = sum(
            r["test_unet"] > r["test_forest"] for r in got if None not in (r["test_unet"], r["test_forest"])
        )
        if "truth" in data:
            means[name].update(_truth(ValueTraining(settings, "cpu", f"ablation:{name}"), data))
    print(f"\nmeans\n{'variant':<16} val U-Net val forest test U-Net test forest wins  spearman_out pearson_out")
    for name, m in means.items():
        print(
            f"{name:<16} {_f(m['inner_unet'])}  {_f(m['inner_forest'])}  {_f(m['test_unet'])}  "
            f"{_f(m['test_forest'])}  {m['test_wins']:>4}  {_f(m.get('spearman_out'))}  {_f(m.get('pearson_out'))}"
        )
    scored = {n: m["inner_unet"] for n, m in means.items() if m["inner_unet"] is not None}
    chosen = max(scored, key=lambda n: scored[n]) if scored else None
    print(f"\nchosen on the inner validation polygons: {chosen}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "means": means, "chosen": chosen}
    out.write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
