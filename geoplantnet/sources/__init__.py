"""Reading the world: STAC search and items, COGs, lazy Sentinel-2 cubes, environmental predictors."""
