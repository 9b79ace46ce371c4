"""Ablation of the deep species model on the NCEAS benchmark (../shared/data/real/nceas_disdat): which ideas stay.

In one run per region, the pipeline's deep model (pipelines/nceas-<region>.yaml) and variants that each change one
idea go through ``geoplantnet sdm-table`` with ``table.cross_validate=true``: each is cross-validated on spatial
blocks of the training tables AND fitted on all of them and scored at the independent presence-absence sites. The
choice is made on the training folds only, on ``auc_tg`` (each species' records against the other species' record
sites of the held-out blocks: the presence-only score closest to a survey, :mod:`geoplantnet.validation.metrics`);
the test AUC is printed beside it for the record, never to choose.

- ``background``: the network also learns from the background points (``train.po_sites=records_and_background``);
- ``full_weighted``: the full weighted presence-only loss (Zbinden et al. 2024) instead of DeepMaxent;
- ``paper``: DeepMaxent's published NCEAS settings (batches of 250 sites, lr 2e-4, no weight decay, no dropout);
- ``ensemble_1``: a single network instead of the average of 5 (seeds x early-stopping blocks);
- ``share_group``: one network per biological group instead of one for all species;
- ``dropout_0.3`` / ``weight_decay_0.01`` / ``width_64``: more regularisation, a smaller network.

Prints, per variant, the cross-validation AUC against background and against the target group, the test AUC and the
seconds, marks the variant the training folds choose, and writes ``outputs/benchmarks/nceas-<region>-ablation.json``.

    .venv/bin/python benchmarks/nceas_ablation.py --region awt [--variants recipe,background,...] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from geoplantnet.core.config import load_config
from geoplantnet.jobs.tabular import run_table_sdm
from geoplantnet.runtime.cluster import connect

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, list[str]] = {
    "recipe": [],
    "background": ["train.po_sites=records_and_background"],
    "full_weighted": ["train.po_loss=full_weighted"],
    "paper": ["train.batch_size=250", "train.lr=0.0002", "train.weight_decay=0", "model.dropout=0"],
    "ensemble_1": ["train.ensemble=1"],
    "share_group": ["table.share=group"],
    "dropout_0.3": ["model.dropout=0.3"],
    "weight_decay_0.01": ["train.weight_decay=0.01"],
    "width_64": ["model.env_hidden=64", "model.fusion_hidden=64"],
}


def run_variant(region: str, name: str, sets: list[str], out: Path) -> dict[str, Any]:
    """One variant through sdm-table (cross-validation on the training tables + the independent test)."""
    overrides = [*VARIANTS[name], *sets, "table.cross_validate=true", "validation.models=[cnn]"]
    cfg = load_config(ROOT / "pipelines" / f"nceas-{region}.yaml", overrides)
    t = time.perf_counter()
    with connect(cfg.cluster) as client:
        summary = run_table_sdm(cfg, out / f"nceas-{region}-{name}", client)
    cv = [unit["models"]["cnn"] for unit in summary["cross_validation"].values()]
    return {
        "variant": name,
        "overrides": VARIANTS[name],
        # units are weighted by their species (one unit with share=region)
        "cv_auc": _weighted(cv, "auc", summary["units"]),
        "cv_auc_tg": _weighted(cv, "auc_tg", summary["units"]),
        "test_auc": summary["independent"]["models"]["cnn"]["auc"],
        "test_groups": summary["independent"]["models"]["cnn"].get("groups", {}),
        "seconds": round(time.perf_counter() - t, 1),
    }


def _weighted(results: list[dict[str, Any]], key: str, units: dict[str, int]) -> float:
    sizes = list(units.values())
    values = [float(r.get(key) or float("nan")) for r in results]
    return sum(v * n for v, n in zip(values, sizes, strict=True)) / sum(sizes)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", choices=["awt", "nsw"], default="awt")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="override for every variant")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = []
    print(f"{'variant':18s} {'CV AUC bg':>9s} {'CV AUC tg':>9s} {'test AUC':>9s} {'seconds':>8s}", flush=True)
    for name in args.variants.split(","):
        row = run_variant(args.region, name, args.sets, args.out)
        rows.append(row)
        print(
            f"{name:18s} {row['cv_auc']:9.4f} {row['cv_auc_tg']:9.4f} {row['test_auc']:9.4f} {row['seconds']:8.0f}",
            flush=True,
        )
    chosen = max(rows, key=lambda r: r["cv_auc_tg"])
    print(f"chosen on the training folds (CV AUC against the target group): {chosen['variant']}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"nceas-{args.region}-ablation.json"
    path.write_text(json.dumps({"region": args.region, "chosen": chosen["variant"], "variants": rows}, indent=2))
    print(path)
    return rows


if __name__ == "__main__":
    main()
