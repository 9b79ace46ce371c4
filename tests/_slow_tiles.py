"""Worker preload for tests: every map tile task sleeps first, so a test can act while a run is in the middle.

``dask worker --preload tests/_slow_tiles.py``; the delay comes from GEOPLANTNET_TEST_TILE_DELAY (seconds). Tasks
name ``geoplantnet.products.species_map.map_tile`` by reference, so replacing the attribute here is what the worker
runs.
"""

import os
import time

import geoplantnet.products.species_map as mapping

# distributed may import a preload file more than once per process: wrap the original only, never the wrapper
_real_map_tile = getattr(mapping, "_unslowed_map_tile", mapping.map_tile)
mapping._unslowed_map_tile = _real_map_tile
DELAY = float(os.environ.get("GEOPLANTNET_TEST_TILE_DELAY", "0.5"))


def _slow_map_tile(job, tile):
    time.sleep(DELAY)
    return _real_map_tile(job, tile)


mapping.map_tile = _slow_map_tile


def dask_setup(worker):  # the preload protocol calls it; nothing to set up
    pass
