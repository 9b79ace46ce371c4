"""The Danube dike surveys and the sPlotOpen subset (../shared/data/real/danube_dike_vegetation_eunis, see its
PROVENANCE.md) as the long plot tables ``geoplantnet habitats`` reads: one row per plot x taxon with cover %, the
EUNIS label, lon/lat (WGS84) and altitude, for pipelines/danube-habitats.yaml and pipelines/splot-habitats.yaml.

The sources are a taxa x plots cover matrix plus a site table (labels, coordinates in EPSG:31468) and a plot
shapefile in WGS84; the Danube plot-year ``X01_m_2017`` lies at the site ``01_m`` of the shapefile and the raw site
table (altitude). The Danube labels (column ``esy``) are the upstream EUNIS-ESy run (2020-06-08 file) with three set
by hand; ``?`` (3 surveys ESy left undecided) is read as unlabelled. The sPlotOpen labels are EUNIS 2007 codes,
crosswalked E12a -> R1A, E22 -> R22 (column ``eunis``; the 2007 code kept in ``eunis_2007``).

    python scripts/danube_plots.py [DATA_FOLDER] [OUT_FOLDER]    # default: the shared folder -> work/danube-habitats
"""

from __future__ import annotations

import sys
from pathlib import Path

import geopandas as gpd
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "real" / "danube_dike_vegetation_eunis"
OUT = ROOT / "work" / "danube-habitats"
CROSSWALK_2007 = {"E12a": "R1A", "E22": "R22"}  # sub-Mediterranean dry grassland, mesic hay meadow


def _long(matrix: pd.DataFrame, sites: pd.DataFrame) -> pd.DataFrame:
    """Taxa x plots covers (first column the taxon) joined to ``sites`` (indexed by plot): cover > 0 rows only."""
    long = matrix.melt(id_vars=[matrix.columns[0]], var_name="plot", value_name="cover")
    long = long.rename(columns={matrix.columns[0]: "taxon"})
    long = long[pd.to_numeric(long["cover"], errors="coerce").fillna(0) > 0]
    return long.join(sites, on="plot").sort_values(["plot", "cover"], ascending=[True, False], kind="stable")


def danube(data: Path = DATA) -> pd.DataFrame:
    """The 164 plot-year surveys of the Danube dikes as one long table."""
    sites = pd.read_csv(data / "data_processed_sites_spatial.csv").set_index("id")
    points = gpd.read_file(data / "spatial" / "sites_epsg4326.shp").set_index("id")
    raw = pd.read_csv(data / "data_raw_sites.csv").set_index("id")
    site = sites.index.str.slice(1, 5)  # X01_m_2017 -> 01_m
    header = pd.DataFrame(
        {
            "esy": sites["esy"].to_numpy(),
            "lon": points.geometry.x.reindex(site).to_numpy(),
            "lat": points.geometry.y.reindex(site).to_numpy(),
            "altitude": raw["elevation"].reindex(site).to_numpy(),
            "year": sites["survey_year"].to_numpy(),
        },
        index=sites.index,
    )
    return _long(pd.read_csv(data / "data_processed_species.csv"), header)


def splot(data: Path = DATA) -> pd.DataFrame:
    """The 23 sPlotOpen reference plots (Germany) as one long table, labels crosswalked to EUNIS 2021."""
    folder = data / "splotopen_subset"
    sites = pd.read_csv(folder / "data_processed_sites_splot.csv").set_index("id")
    header = pd.DataFrame(
        {
            "eunis": sites["esy"].map(CROSSWALK_2007),
            "eunis_2007": sites["esy"],
            "lon": sites["longitude"],
            "lat": sites["latitude"],
            "altitude": sites["elevation"],
        }
    )
    return _long(pd.read_csv(folder / "data_processed_species_splot.csv"), header)


def main(data: Path = DATA, out: Path = OUT) -> dict[str, Path]:
    """Write ``danube_plots.csv`` and ``splot_plots.csv`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"danube": out / "danube_plots.csv", "splot": out / "splot_plots.csv"}
    danube(data).to_csv(written["danube"], index=False)
    splot(data).to_csv(written["splot"], index=False)
    return written


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:3]]
    for name, path in main(*args).items():
        print(f"{name}: {path}")
