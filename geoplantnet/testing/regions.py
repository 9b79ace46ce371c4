"""The small virtual region and model sizes end-to-end tests share (2 km x 2 km, 30 species, tiny network): pass
``SMALL_REGION`` as ``--set`` overrides."""

SMALL_REGION = [
    "grid.width_m=2000",
    "grid.height_m=2000",
    "sim.dates_per_season=1",
    "sim.n_species=30",
    "sim.n_habitats=6",
    "sim.n_plots=120",
    "sim.n_presence_only=600",
    "cube.chunk=64",
    "model.patch_size=8",
    "model.width=8",
    "model.series_hidden=8",
    "model.env_hidden=8",
    "model.fusion_hidden=32",
    "train.n_background=300",
    "train.ensemble=1",  # the tests check plumbing with one network; the recipe's 5 is measured in benchmarks/
    "validation.block_size_m=500",
    "cluster.n_workers=2",
    "cluster.memory_limit=3GiB",
]
