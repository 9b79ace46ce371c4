"""Output stores: Zarr layout and commits, tiled stores, leases, the species axis index."""
