"""geoplantnet: plant species, habitat and biodiversity-indicator maps of Europe from Sentinel-2, on Dask."""

__version__ = "0.1.0"
