"""``geoplantnet deploy render``: the Kustomize tree of a configuration written into a folder claimed for it.

The objects are built in :mod:`geoplantnet.runtime.kubernetes` (the one home of the manifests); this reads what the
ConfigMap carries (the resolved pipeline, redacted; the files of ``cluster.kubernetes.files``), decides where the
annual refresh's series live, and writes the files through :mod:`geoplantnet.storage.outputs` (a folder geoplantnet
did not make is never written into).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geoplantnet.core.config import ConfigError, RunConfig, redact
from geoplantnet.core.errors import InputError
from geoplantnet.runtime.kubernetes import OVERLAYS, dump_yaml, kustomize_tree
from geoplantnet.storage.outputs import claim_folder, finish_folder, place
from geoplantnet.storage.store import is_local

__all__ = ["DEPLOY_KIND", "render_deploy", "render_files"]

DEPLOY_KIND = "kubernetes deployment"
_ENTRIES = ("base", "overlays")


def _refresh_root(cfg: RunConfig) -> str | None:
    """Where the CronJob's refresh writes its series and run summary (``refresh.store_root``, else ``store.root``),
    once :func:`_shared_paths` has checked every pod can reach it; None when the refresh is off."""
    r = cfg.cluster.kubernetes.refresh
    return (r.store_root or cfg.store.root) if r.enabled else None


def _shared_paths(cfg: RunConfig) -> None:
    """Pods share no disk unless a volume is mounted in all of them: a local ``workdir`` or output root would be a
    different folder on every pod (the driver's region and models invisible to the workers). Refused before
    anything is rendered, naming the setting."""
    k = cfg.cluster.kubernetes
    if k.volume.claim is not None:
        return
    paths = {"workdir": cfg.workdir, "store.root": cfg.store.root}
    if k.refresh.enabled and k.refresh.store_root:
        paths["cluster.kubernetes.refresh.store_root"] = k.refresh.store_root
    local = [f"{name}={value}" for name, value in paths.items() if is_local(value)]
    if local:
        raise ConfigError(
            f"{', '.join(local)}: a local path, and the pods share no disk (cluster.kubernetes.volume.claim is "
            "not set); put it on object storage (s3://bucket/path) or mount a ReadWriteMany volume (volume.claim)"
        )


# Kubernetes stores an object whole in etcd: a ConfigMap's data may not exceed 1 MiB.
CONFIG_MAP_LIMIT = 1 << 20


def _files(cfg: RunConfig) -> dict[str, str]:
    """The ConfigMap's extra files (``cluster.kubernetes.files``), read and checked to fit in it."""
    files = {}
    for key, path in cfg.cluster.kubernetes.files.items():
        try:
            files[key] = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cluster.kubernetes.files.{key}: cannot read {path} ({exc.__class__.__name__})") from None
    size = sum(len(text.encode()) for text in files.values())
    if size > CONFIG_MAP_LIMIT // 2:  # the pipeline YAML goes in too
        raise InputError(
            f"cluster.kubernetes.files: {size / 1024:.0f} KiB, too much for a ConfigMap (1 MiB in all); put large "
            "files (a footprint with many vertices) on object storage and name their URL in the pipeline instead"
        )
    return files


def _redacted_settings(tree: Any, redacted: Any, at: str = "") -> list[str]:
    """The settings ``redact`` changed (dotted names): they would reach the pods as the literal ``<redacted>``."""
    if isinstance(tree, dict):
        return [n for k, v in tree.items() for n in _redacted_settings(v, redacted[k], f"{at}{k}.")]
    if isinstance(tree, list):
        return [n for i, v in enumerate(tree) for n in _redacted_settings(v, redacted[i], f"{at}{i}.")]
    return [at.rstrip(".")] if tree != redacted else []


def render_files(cfg: RunConfig, overlays: Sequence[str] = OVERLAYS) -> dict[str, str]:
    """The tree's files (relative path -> YAML text): ``base/`` and the ``overlays`` asked for. The pipeline goes into
    the ConfigMap redacted, so a setting the redaction changes (a credential, or any storage option but the public
    ones) is refused: the pods would read ``<redacted>``; credentials belong in the Secrets of ``env_from``."""
    plain = cfg.model_dump(mode="json")
    changed = _redacted_settings(plain, redact(plain))
    if changed:
        raise ConfigError(
            f"{', '.join(changed[:4])}: written into the pods' ConfigMap it would read <redacted> (credentials and "
            "private storage options never go into a manifest); give it to the pods from a Secret named in "
            "cluster.kubernetes.env_from (e.g. AWS_ACCESS_KEY_ID) or drop it"
        )
    _shared_paths(cfg)
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
