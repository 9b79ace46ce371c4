"""``geoplantnet deploy render``: the Kustomize tree of a configuration written into a folder claimed for it.

The objects are built in :mod:`geoplantnet.runtime.kubernetes` (the one home of the manifests); this reads what the
ConfigMap carries (the resolved pipeline, redacted; the files of ``cluster.kubernetes.files``), decides where the
annual refresh's series live, and writes the files through :mod:`geoplantnet.storage.outputs` (a folder geoplantnet
did not make is never written into).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from geoplantnet.core.config import ConfigError, RunConfig
from geoplantnet.core.errors import InputError
from geoplantnet.runtime.kubernetes import OVERLAYS, dump_yaml, kustomize_tree
from geoplantnet.storage.outputs import claim_folder, finish_folder, place
from geoplantnet.storage.store import is_local

__all__ = ["DEPLOY_KIND", "render_deploy", "render_files"]

DEPLOY_KIND = "kubernetes deployment"
_ENTRIES = ("base", "overlays")


def _refresh_root(cfg: RunConfig) -> str | None:
    """Where the CronJob's refresh writes its series: a local path (the refresh writes its run summary to a local
    folder beside them, :func:`geoplantnet.jobs.refresh.run_refresh`), on the shared volume the pods run in."""
    r = cfg.cluster.kubernetes.refresh
    if not r.enabled:
        return None
    root = r.store_root or cfg.store.root
    if not is_local(root):
        raise ConfigError(
            f"cluster.kubernetes.refresh: the refresh writes its run summary beside its series and store.root is "
            f"{root}; set cluster.kubernetes.refresh.store_root to a path on the shared volume (or enabled=false)"
        )
    return root


def _files(cfg: RunConfig) -> dict[str, str]:
    files = {}
    for key, path in cfg.cluster.kubernetes.files.items():
        try:
            files[key] = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cluster.kubernetes.files.{key}: cannot read {path} ({exc.__class__.__name__})") from None
    return files


def render_files(cfg: RunConfig, overlays: Sequence[str] = OVERLAYS) -> dict[str, str]:
    """The tree's files (relative path -> YAML text): ``base/`` and the ``overlays`` asked for."""
    tree = kustomize_tree(cfg.cluster, cfg.to_yaml(), _files(cfg), _refresh_root(cfg))
    keep = tuple(f"overlays/{o}/" for o in overlays)
    return {path: dump_yaml(docs) for path, docs in tree.items() if path.startswith(("base/", *keep))}


def render_deploy(
    cfg: RunConfig, out: Path, overlays: Sequence[str] = OVERLAYS, *, overwrite: bool = False
) -> list[Path]:
    """Write the tree into ``out`` (new, empty, or an earlier tree of this command's with ``overwrite``); the paths
    written."""
    files = render_files(cfg, overlays)  # every setting and file checked before the folder is touched
    claim_folder(out, DEPLOY_KIND, _ENTRIES, overwrite=overwrite)
    written = []
    for rel, text in files.items():
        path = out / rel
        written.append(place(path.parent, path.name, lambda p, text=text: p.write_text(text)))
    finish_folder(out)
    return written
