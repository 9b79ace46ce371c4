"""scripts/compare_outputs.py, the before/after check of a refactor: the same outputs compare equal (clocks and run
folders set aside), a changed value, attribute, report number or missing file does not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import xarray as xr

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_outputs.py"


def _outputs(run: Path, value: float = 0.5, seconds: float = 1.0) -> Path:
    out = run / "outputs"
    ds = xr.Dataset({"p": (("y", "x"), np.full((4, 4), value, dtype="float32"))}, attrs={"created": str(seconds)})
    ds.to_zarr(out / "species.zarr", zarr_format=3, consolidated=False)
    (out / "report").mkdir(parents=True)
    summary = {"auc": value, "seconds": seconds, "store": str(out / "species.zarr")}
    (out / "report" / "summary.json").write_text(json.dumps(summary))
    (out / "report" / "report.md").write_text(
        f"# Report\n\n| model | AUC | seconds |\n|---|---|---|\n| cnn | {value} | {seconds} |\n\n- store `{out}`\n"
    )
    return out


def _compare(a: Path, b: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True, timeout=120)


def test_the_same_outputs_of_two_runs_compare_equal_and_a_change_does_not(tmp_path: Path) -> None:
    before = _outputs(tmp_path / "before")
    same = _compare(before, _outputs(tmp_path / "again", seconds=9.0))  # other clocks, another run folder
    assert same.returncode == 0, same.stdout
    assert "3 of 3 outputs the same" in same.stdout
    changed = _compare(before, _outputs(tmp_path / "changed", value=0.6))
    assert changed.returncode == 1
    assert sum(line.startswith("DIFF") for line in changed.stdout.splitlines()) == 3  # store, JSON, Markdown
    (tmp_path / "changed" / "outputs" / "report" / "report.md").unlink()
    assert "missing after" in _compare(before, tmp_path / "changed" / "outputs").stdout
