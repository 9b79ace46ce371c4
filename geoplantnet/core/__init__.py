"""The base layer: the grid (the only pixel arithmetic), the typed run configuration, user-facing errors."""
