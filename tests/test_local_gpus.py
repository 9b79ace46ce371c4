"""Local GPU workers: one per device, each pinned to its own with ``CUDA_VISIBLE_DEVICES`` (a machine with several
GPUs would otherwise compute every worker's tasks on device 0). The machines the tests run on have no GPU, so the
device count is given; the workers, their environment and their resources are real."""

from __future__ import annotations

import os

from geoplantnet.core.config import ClusterConfig
from geoplantnet.runtime.cluster import _local, cluster_resources


def _visible_devices() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_local_gpu_workers_are_pinned_one_per_device():
    cfg = ClusterConfig(n_workers=3, memory_limit="1GiB")
    client = _local(cfg, gpus=2)
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == 2  # one per device, not cluster.n_workers
        assert cluster_resources(client) == {"GPU": 2.0}
        seen = client.run(_visible_devices)
        assert sorted(seen.values()) == ["0", "1"]
        # a worker added later (scale) gets the next device in turn, not device 0 again by default
        client.cluster.scale(3)
        client.wait_for_workers(3, timeout=60)
        assert sorted(client.run(_visible_devices).values()) == ["0", "0", "1"]
    finally:
        client.cluster.close()
        client.close()
