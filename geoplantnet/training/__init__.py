"""Training models, as a task on a Dask worker (GPU resource when offered)."""
