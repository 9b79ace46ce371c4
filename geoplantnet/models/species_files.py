"""Species network files: the state dict and the :class:`ModelSpec` JSON in one file (loadable with
``torch.load(weights_only=True)``), written atomically; an ensemble of seeds is one file too. Read by training, the
map's tile tasks, point predictions and calibration alike.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import torch

from geoplantnet.core.errors import InputError
from geoplantnet.models.species_net import SPEC_VERSION, ModelSpec, SpeciesEnsemble, SpeciesNet

FILE_FORMAT = "geoplantnet.species_net"


class ModelFileError(InputError):
    """A model file that is missing, unreadable, of another format or version (the message names the file)."""


def save_model(path: str | os.PathLike[str], model: SpeciesNet, spec: ModelSpec) -> str:
    """Write state dict + spec JSON to one file, atomically (a crash never leaves a half-written model)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FILE_FORMAT,
        "spec": spec.model_dump_json(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return str(path)


def load_model(
    path: str | os.PathLike[str] | IO[bytes], device: str | torch.device = "cpu", *, name: str | None = None
) -> tuple[SpeciesNet, ModelSpec]:
    """Rebuild a saved model (eval mode) and its spec, without the training data. ``name`` is what messages call
    the file (its path or URL) when ``path`` is an open file."""
    where = name or path
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise ModelFileError(f"{where}: no such model file") from None
    except Exception as exc:
        raise ModelFileError(f"{where}: not a readable model file ({exc.__class__.__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        raise ModelFileError(f"{where}: not a {FILE_FORMAT} file")
    spec = ModelSpec.model_validate_json(payload["spec"])
    if spec.version != SPEC_VERSION:
        raise ModelFileError(f"{where}: model spec version {spec.version}, this code reads version {SPEC_VERSION}")
    model = SpeciesNet.from_spec(spec)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ModelFileError(f"{where}: weights do not fit the spec ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), spec


def load_ensemble(
    paths: Sequence[str | os.PathLike[str]], device: str | torch.device = "cpu"
) -> tuple[SpeciesNet, ModelSpec]:
    """Model files trained on the same data with different seeds as one :class:`SpeciesEnsemble` (one file: itself).

    Members must share their spec (inputs, species, normalisation) but the seed; the ensemble's spec says
    ``members=n``, so :func:`save_model` writes it as one file that :func:`load_model` reads back as an ensemble.
    """
    loaded = [load_model(p, device) for p in paths]
    if len(loaded) == 1:
        return loaded[0]
    spec = loaded[0][1]
    for (_, other), path in zip(loaded[1:], paths[1:], strict=True):
        if other != spec:
            raise ModelFileError(f"{path}: not a member of the same ensemble as {paths[0]} (spec differs)")
    members = [m for m, _ in loaded]
    if any(isinstance(m, SpeciesEnsemble) for m in members):
        raise ModelFileError("ensembles of ensembles are not supported: pass single-network files")
    return SpeciesEnsemble(members).to(device).eval(), spec.model_copy(update={"members": len(members)})
