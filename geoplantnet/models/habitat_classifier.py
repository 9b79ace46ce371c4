"""Habitat classifiers as users save and apply them: one folder per model, whatever its kind.

A classifier folder holds ``geoplantnet.json`` (written last: a folder without it is not a model) with at least
``format``, ``kind``, ``classes``, ``names`` and ``version``, and, where the classifier was calibrated, ``conformal``:
``{level, q, plots}``, the split-conformal radius of its habitat sets (the set keeps every class with ``p >= 1 - q``:
:func:`geoplantnet.validation.conformal.class_sets`) calibrated on ``plots`` plots it did not train on, read back by
:func:`conformal_of`; the rest is the kind's own. :func:`load_classifier` reads
the kind and hands the folder to the loader registered for it in :data:`LOADERS` (Pl@ntBERT's ``classifier`` here;
other kinds register themselves in the module that defines them, listed in :data:`KIND_MODULES`).

Every kind answers :class:`PlotClassifier`: habitat probabilities of plots given as species lists (cover order), over
its ``classes``. :func:`publish_folder` is the one way a model folder is written: staged, then moved into place
(local) or copied with the metadata file last (object storage), its ``geoplantnet.json`` listing the model's files
(``files``); a folder that is not a model, or holds files that are not the model's, is never replaced.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import fsspec
import numpy as np

from geoplantnet.core.errors import InputError

META = "geoplantnet.json"


class ClassifierFolderError(InputError):
    """A habitat classifier folder that cannot be read or written (the message names the folder)."""


class PlotClassifier(Protocol):
    """What every saved habitat classifier offers."""

    classes: tuple[str, ...]
    names: tuple[str, ...]
    version: str
    parent: str
    conformal: dict[str, Any] | None  # {level, q, plots} when calibrated: saved under its geoplantnet.json key

    @property
    def vocabulary(self) -> frozenset[str]:
        """The species tokens (:func:`~geoplantnet.samples.plots.species_token`) the classifier knows."""
        ...

    def predict_proba(self, sentences: Sequence[Sequence[str]]) -> np.ndarray:
        """(n, classes) habitat probabilities of plots given as species lists."""
        ...

    def save(self, folder: str | os.PathLike[str]) -> str:
        """Write the folder (:func:`publish_folder`); returns and sets the version."""
        ...

    def describe(self) -> dict[str, Any]: ...


Loader = Callable[[str, str], PlotClassifier]
LOADERS: dict[str, Loader] = {}
# kind -> module that registers its loader when imported (so reading a folder imports only what it needs)
KIND_MODULES = {
    "classifier": "geoplantnet.models.plantbert",
    "fill-mask": "geoplantnet.models.plantbert",
    "stack": "geoplantnet.models.habitat_stack",
    "map-forest": "geoplantnet.models.map_forest",
}


def register(kind: str, loader: Loader) -> None:
    """Make ``load_classifier`` read folders of ``kind`` with ``loader(folder, device)``."""
    LOADERS[kind] = loader


def read_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The folder's ``geoplantnet.json``; one-line error when there is none."""
    url = os.fspath(folder)
    fs, root = fsspec.core.url_to_fs(url)
    path = f"{root.rstrip('/')}/{META}"
    if not fs.exists(path):
        raise ClassifierFolderError(f"{url}: not a geoplantnet model folder (no {META})")
    try:
        return json.loads(fs.cat_file(path))
    except ValueError as e:
        raise ClassifierFolderError(f"{url}/{META}: not JSON ({e})") from None


def conformal_of(meta: dict[str, Any], url: str = "") -> dict[str, Any] | None:
    """A folder's conformal calibration (``{level, q, plots}``) from its ``geoplantnet.json``; None when it has none."""
    conformal = meta.get("conformal")
    if conformal is None:
        return None
    try:
        level, q, plots = float(conformal["level"]), float(conformal["q"]), int(conformal["plots"])
    except (TypeError, KeyError, ValueError):
        raise ClassifierFolderError(f"{url}/{META}: 'conformal' is not {{level, q, plots}}: {conformal!r}") from None
    if not (0 < level < 1 and 0 <= q <= 1):
        raise ClassifierFolderError(f"{url}/{META}: conformal level {level} or q {q} outside (0, 1) / [0, 1]")
    return {"level": level, "q": q, "plots": plots}


def load_classifier(folder: str | os.PathLike[str], device: str = "cpu") -> PlotClassifier:
    """The classifier saved in ``folder`` (local or fsspec URL), whatever its kind."""
    url = os.fspath(folder)
    kind = str(read_meta(url).get("kind", ""))
    if kind not in LOADERS and kind in KIND_MODULES:
        importlib.import_module(KIND_MODULES[kind])
    if kind not in LOADERS:
        raise ClassifierFolderError(f"{url}: a model of kind {kind!r}, not one geoplantnet can load")
    return LOADERS[kind](url, device)


# what ``save_pretrained`` (model + tokenizer) writes: the files of a Pl@ntBERT folder saved before folders had a
# manifest, so an upgrade replaces such a folder with a model of another kind (the stack) instead of refusing
PLANTBERT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
)


def _foreign_files(meta: bytes, present: Sequence[str], staged: Sequence[str]) -> list[str]:
    """Of the files ``present`` in an existing model folder (relative paths), those that are not the model's: not in
    its ``geoplantnet.json`` manifest (``files``), or, for an older model without one, not among the ``staged`` new
    model's files (a user's file put there, e.g. ``habitats classify --out <out>/model/pred.csv``)."""
    try:
        known = json.loads(meta).get("files")
    except (ValueError, AttributeError):
        known = None
    ours = {META, *(known if isinstance(known, list) else [*staged, *PLANTBERT_FILES])}
    return sorted(f for f in present if f not in ours)


def publish_folder(
    stage: Path,
    folder: str | os.PathLike[str],
    *,
    what: str = "geoplantnet model",
    error: type[InputError] = ClassifierFolderError,
) -> None:
    """Put the staged model folder ``stage`` (its ``geoplantnet.json`` included, given its file manifest ``files``
    here) at ``folder``: locally by renames (the earlier model moved aside until the new one is in place), on object
    storage file by file with the metadata removed first and written last, so a half-replaced model never reads as
    one. A folder that exists and is not a model, or a model folder holding files that are not the model's
    (:func:`_foreign_files`), is refused (``error``): replacing it would delete them."""
    url = os.fspath(folder)
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    staged = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file() and p.name != META)
    meta = json.loads((stage / META).read_text())
    (stage / META).write_text(json.dumps({**meta, "files": staged}, indent=1))
    if "file" in fs.protocol:
        target = Path(root)
        if target.exists() and not (target / META).exists():
            raise error(f"{target} exists and is not a {what} folder; refusing to replace it")
        if target.exists():
            present = [p.relative_to(target).as_posix() for p in target.rglob("*") if not p.is_dir()]
            foreign = _foreign_files((target / META).read_bytes(), present, staged)
            if foreign:
                raise error(
                    f"{target} holds files that are not part of the model ({', '.join(foreign)}); "
                    "refusing to replace it"
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        shutil.copytree(stage, partial)
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            os.replace(target, old)
        os.replace(partial, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    if fs.exists(root) and fs.ls(root, detail=False) and not fs.exists(f"{root}/{META}"):
        raise error(f"{url} exists and is not a {what} folder; refusing to replace it")
    if fs.exists(f"{root}/{META}"):
        present = [p.rstrip("/")[len(root) + 1 :] for p in fs.find(root)]
        foreign = _foreign_files(fs.cat_file(f"{root}/{META}"), present, staged)
        if foreign:
            raise error(
                f"{url} holds files that are not part of the model ({', '.join(foreign)}); refusing to replace it"
            )
        fs.rm_file(f"{root}/{META}")
    for f in staged:
        fs.put_file(str(stage / f), f"{root}/{f}")
    fs.put_file(str(stage / META), f"{root}/{META}")
