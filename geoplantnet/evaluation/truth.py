"""The virtual region's truth as the evaluations read it: one object over a generated region, handed to every
product's evaluation by the command that runs it (:func:`geoplantnet.runs.inputs.region_truth` makes it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import xarray as xr

from geoplantnet.sim.region import RegionManifest
from geoplantnet.storage.store import open_store


@dataclass(frozen=True)
class VirtualTruth:
    """The truth stores of the generated region ``manifest``."""

    manifest: RegionManifest

    def species(self, year: int | None = None) -> xr.DataArray:
        """The true probabilities (species, y, x) of ``year`` (after that year's changes; default the first year)."""
        return open_store(str(self.manifest.truth_path("species", year)))["probability"]

    def habitat(self, year: int | None = None) -> str:
        """The path of the true habitat store of ``year``."""
        return str(self.manifest.truth_path("habitat", year))

    def changes(self, year: int) -> xr.DataArray:
        """The true land-cover change codes (y, x) from the year before ``year`` (0 = none)."""
        return open_store(str(self.manifest.truth_path("changes")))["change"].sel(year=int(year))

    def change_kinds(self, year: int) -> dict[str, int]:
        """The change kinds and codes of ``year`` (its ``flag_meanings`` / ``flag_values``; no-change left out)."""
        attrs: dict[str, Any] = dict(self.changes(year).attrs)
        pairs = zip(str(attrs.get("flag_meanings", "")).split(), attrs.get("flag_values", []), strict=False)
        return {name: int(code) for name, code in pairs if int(code) != 0}
