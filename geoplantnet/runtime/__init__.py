"""The one place a Dask client is made (local, an address, Kubernetes)."""
