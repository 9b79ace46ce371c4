"""Ablation of the stacked habitat classifier (kind ``stack``) against its peers, on the folds of ``habitats``.

The folds and the inner validation split are the job's (:func:`~geoplantnet.validation.habitat_folds.assign_folds`,
:func:`~geoplantnet.validation.habitat_folds.inner_split`). Each variant changes one idea of the stack; every choice
inside a variant (C, weights, decoding) is made on the inner validation plots, and the variant the ablation would
choose is the one with the best mean inner-validation score (top-1 + macro-F1 of the decoded stack on those plots).
The test fold's scores are printed beside it for the record, never to choose.

- ``logistic_refit`` / ``tfidf_refit`` / ``knn_cosine``: one member alone (C chosen, refitted on train + validation);
- ``average``: the four members weighted by validation log-loss, no decoding;
- ``average+hierarchy``: + the EUNIS-parent terms; ``average+tau``: + the logit adjustment;
- ``stack``: everything (the shipped default).

Peers as the job fits them (training part of the split only): ``logistic`` and ``knn_jaccard``.

    .venv/bin/python benchmarks/habitat_ablation.py [--config pipelines/glc24-habitats.yaml] [--variants a,b]
        [--set habitats.k=v ...] [--out outputs/benchmarks/habitat-ablation.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from geoplantnet.core.config import HabitatStackConfig, load_config
from geoplantnet.jobs.habitats import load_habitat_data
from geoplantnet.models.habitat_peers import PEERS, JaccardNeighbours
from geoplantnet.models.habitat_stack import HabitatStack
from geoplantnet.training.habitats import habitat_classes
from geoplantnet.validation.habitat_folds import assign_folds, inner_split
from geoplantnet.validation.habitats import habitat_scores

ROOT = Path(__file__).resolve().parents[1]
NO_DECODING = {"parent_weights": [0.0], "tau": [0.0]}
VARIANTS: dict[str, dict[str, Any]] = {
    "logistic_refit": {"members": ["logistic"], **NO_DECODING},
    "tfidf_refit": {"members": ["logistic_tfidf"], **NO_DECODING},
    "knn_cosine": {"members": ["knn_cosine"], **NO_DECODING},
    "average": NO_DECODING,
    "average+hierarchy": {"tau": [0.0]},
    "average+tau": {"parent_weights": [0.0]},
    "stack": {},
}
PEER_NAMES = ("logistic", "knn_jaccard")
# variants that differ from the stack only in the decoding grid: the stack's members and weights (the same fit), the
# decoding chosen within their grid from the stack's validation scores of every decoding (the same choice, cheaper)
DECODING_ONLY = ("average", "average+hierarchy", "average+tau")


def redecoded(stack: HabitatStack, cfg: HabitatStackConfig) -> HabitatStack:
    """``stack`` with the first best decoding (validation top-1 + macro-F1) of ``cfg``'s grid."""
    allowed = {(a, b, t) for a in cfg.parent_weights for b in cfg.parent_weights for t in cfg.tau}
    scores = [(float(v), (a, b, t)) for a, b, t, v in stack.choice["decoding_scores"] if (a, b, t) in allowed]
    best = max(v for v, _ in scores)
    a, b, t = next(k for v, k in scores if v >= best - 1e-12)
    choice = {**stack.choice, "validation_top1_plus_macro_f1": round(best, 4)}
    return dataclasses.replace(stack, cfg=cfg, decoding={"a": a, "b": b, "tau": t}, choice=choice)


COLUMNS = ("top1", "macro_f1", "top1_level2", "top1_level1")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "pipelines" / "glc24-habitats.yaml"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--set", action="append", default=[], help="a habitats setting, key=value")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks" / "habitat-ablation.json"))
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    h = cfg.habitats
    data = load_habitat_data(cfg)
    lab = data.labelled
    folds, _ = assign_folds(lab, h)
    names = args.variants.split(",")
    rows: list[dict[str, Any]] = []
    print(f"{'model':<20} fold  inner-val  L3 top1  L3 mF1  L2 top1  L1 top1  seconds")
    for k in range(h.folds):
        test = folds == k
        fit, val = inner_split(lab, ~test, h)
        pick = lambda m: [lab.sentences[i] for i in np.flatnonzero(m)]  # noqa: E731
        truth = lab.habitat[test]
        classes = habitat_classes(lab.habitat[fit], h)
        use = fit & np.isin(lab.habitat, classes)
        models: dict[str, Any] = {}
        for peer in PEER_NAMES:
            models[peer] = JaccardNeighbours(classes, h.seed, h.knn) if peer == "knn_jaccard" else PEERS[peer](classes)
        for name in sorted(names, key=lambda n: n != "stack"):  # the stack first: the DECODING_ONLY variants reuse it
            stack_cfg = HabitatStackConfig(**{**h.stack.model_dump(), **VARIANTS[name]})
            models[name] = HabitatStack(cfg=stack_cfg, min_plots=h.min_plots, seed=h.seed)
        for name, model in models.items():
            t0 = time.perf_counter()
            if name in PEER_NAMES:
                model.fit(pick(use), lab.habitat[use], pick(val), lab.habitat[val])
            elif name in DECODING_ONLY and "stack" in models:
                model = models[name] = redecoded(models["stack"], model.cfg)
            else:
                model.fit(pick(fit), lab.habitat[fit], pick(val), lab.habitat[val])
            scores = habitat_scores(truth, model.predict_proba(pick(test)), model.classes, h.level)
            inner = getattr(model, "choice", {}).get("validation_top1_plus_macro_f1", float("nan"))
            row = {"model": name, "fold": k, "inner_val": inner, "seconds": time.perf_counter() - t0, **scores}
            row |= {"weights": getattr(model, "weights", {}), "decoding": getattr(model, "decoding", {})}
            rows.append(row)
            print(
                f"{name:<20} {k:>4}  {inner:9.3f}  "
                + "  ".join(f"{row[c]:7.3f}" for c in COLUMNS)
                + f"  {row['seconds']:7.1f}",
                flush=True,
            )
    print(f"\nmean over {h.folds} folds\n{'model':<20} inner-val  L3 top1  L3 mF1  L2 top1  L1 top1")
    means = {}
    for name in (*PEER_NAMES, *names):
        mine = [r for r in rows if r["model"] == name]
        means[name] = {c: float(np.mean([r[c] for r in mine])) for c in ("inner_val", *COLUMNS)}
        m = means[name]
        print(f"{name:<20} {m['inner_val']:9.3f}  " + "  ".join(f"{m[c]:7.3f}" for c in COLUMNS))
    chosen = max(names, key=lambda n: means[n]["inner_val"])
    print(f"\nchosen on the inner validation plots: {chosen}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "means": means, "chosen": chosen}, indent=1, default=str))
    return rows


if __name__ == "__main__":
    main()
