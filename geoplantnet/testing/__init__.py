"""Helpers for tests of geoplantnet and of code built on it: never imported by the package itself (an import-linter
contract in pyproject.toml forbids it).

* :mod:`geoplantnet.testing.regions`: ``SMALL_REGION``, ``--set`` overrides for a 2 km virtual region and a tiny model.
* :mod:`geoplantnet.testing.s3`: a real S3-compatible server (SeaweedFS) on loopback, with credentials.
* :mod:`geoplantnet.testing.fixtures`: tiny seeded Sentinel-2-like COGs and STAC items.
* :mod:`geoplantnet.testing.cli`: ``run_cli``, the command line run in the test's own process (no interpreter start).
* :mod:`geoplantnet.testing.cluster`: one LocalCluster of real worker processes for a whole test session.
"""
