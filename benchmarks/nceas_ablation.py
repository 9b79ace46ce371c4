"""Ablation of the deep species model on the NCEAS benchmark (../shared/data/real/nceas_disdat): which ideas stay.

In one run, for one region, the pipeline's deep model (pipelines/nceas-<region>.yaml) and variants that each undo one
idea, fitted on the training tables only and scored at the independent presence-absence sites, side by side with
MaxEnt (elapid defaults) fitted once in the same run:

- ``loss=full_weighted``: the full weighted presence-only loss (Zbinden et al. 2024) instead of DeepMaxent;
- ``share=group`` / ``share=species``: one network per biological group / per species instead of one for all;
- ``ensemble=1``: a single network instead of the average of 5 (seeds x early-stopping blocks);
- ``scaling=robust``: median/IQR input scaling instead of mean/std (it lost on both regions, so the pipelines use
  mean/std).

Prints mean AUC (all species and per group), wins/losses against MaxEnt and seconds per variant, and writes the table
to ``outputs/benchmarks/nceas-<region>-ablation.json``. Choices in the pipeline were not made on these test numbers.

    .venv/bin/python benchmarks/nceas_ablation.py --region awt [--variants deepmaxent,full_weighted,...]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import pandas as pd

from geoplantnet.core.config import load_config
from geoplantnet.jobs.tabular import run_table_sdm
from geoplantnet.runtime.cluster import connect

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, list[str]] = {
    "deepmaxent": [],
    "full_weighted": ["train.po_loss=full_weighted"],
    "share_group": ["table.share=group"],
    "share_species": ["table.share=species", "train.ensemble=1"],
    "ensemble_1": ["train.ensemble=1"],
    "robust_scaling": ["train.scaling=robust"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", choices=["awt", "nsw"], default="awt")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {list(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = ROOT / "pipelines" / f"nceas-{args.region}.yaml"
    rows = []
    reference = None
    maxent_auc = None
    for i, name in enumerate(args.variants.split(",")):
        models = "[cnn, maxent]" if i == 0 else "[cnn]"
        cfg = load_config(config, [*VARIANTS[name], f"validation.models={models}"])
        out_dir = args.out / f"nceas-{args.region}-{name}"
        t = time.perf_counter()
        with connect(cfg.cluster) as client:
            summary = run_table_sdm(cfg, out_dir, client)
        seconds = time.perf_counter() - t
        result = summary["independent"]["models"]
        scores = pd.read_csv(out_dir / "report" / "per_species.csv").pivot_table(
            index="species", columns="model", values="auc"
        )
        if maxent_auc is None:
            reference, maxent_auc = result["maxent"], scores["maxent"]
        deep = result["cnn"]
        diff = (scores["cnn"] - maxent_auc).dropna()
        deep["vs_maxent"] = {"wins": int((diff > 0).sum()), "losses": int((diff < 0).sum())}
        rows.append(
            {
                "variant": name,
                "auc": deep["auc"],
                "groups": deep["groups"],
                "vs_maxent": deep["vs_maxent"],
                "seconds": round(seconds, 1),
                "deep_seconds": summary["independent"]["seconds"]["cnn"],
            }
        )
        print(
            f"{name:18s} AUC {deep['auc']:.4f}  "
            + "  ".join(f"{g} {v:.3f}" for g, v in deep["groups"].items())
            + f"  vs MaxEnt {deep.get('vs_maxent')}  {seconds:.0f} s",
            flush=True,
        )
    if reference:
        print(
            f"{'maxent':18s} AUC {reference['auc']:.4f}  "
            + "  ".join(f"{g} {v:.3f}" for g, v in reference["groups"].items())
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"nceas-{args.region}-ablation.json"
    path.write_text(json.dumps({"region": args.region, "maxent": reference, "variants": rows}, indent=2))
    print(path)


if __name__ == "__main__":
    main()
