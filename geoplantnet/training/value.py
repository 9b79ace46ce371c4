"""Training the biodiversity-value U-Net on random crops around labelled polygons.

Each epoch draws one crop per training polygon, centred on a random pixel of it (so every polygon, small or large,
is seen equally often and every crop holds labels), flipped and rotated at random; the loss is the class-balanced
binary cross-entropy on the crop's labelled pixels (:func:`geoplantnet.models.value_net.masked_bce`), or with a score
raster the class-balanced squared error of the standardised score (:func:`~geoplantnet.models.value_net.masked_mse`).
Normalisation statistics come from the training pixels only. With validation polygons (a spatial split of the
training polygons, never a test fold) the weights of the epoch with the least validation loss are kept (early
stopping, as the species models do). Seeded: a rerun on the same data gives the same weights on CPU.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geoplantnet.core.config import ValueConfig
from geoplantnet.models.value_net import (
    ValueModel,
    ValueSpec,
    masked_bce,
    masked_mse,
    norm_stats,
    prepare_features,
    score_scale,
)
from geoplantnet.training.train import resolve_device, seed_everything


@dataclass(frozen=True)
class ValueTrainInfo:
    """How a value network was trained."""

    epochs: int  # run (early stopping may end training before value.epochs)
    best_epoch: int  # whose weights were kept
    val_loss: float | None  # loss on the validation polygons' crops at that epoch (None without them)
    steps: int
    polygons: int  # fitted
    validation_polygons: int
    pixels: dict[str, int]  # labelled training pixels per class
    final_loss: float
    device: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "val_loss": round(self.val_loss, 4) if self.val_loss is not None else None,
            "steps": self.steps,
            "polygons": self.polygons,
            "validation_polygons": self.validation_polygons,
            "pixels": self.pixels,
            "final_loss": round(self.final_loss, 4),
            "device": self.device,
            "seconds": round(self.seconds, 1),
        }


def _crop_origins(polygon: np.ndarray, ids: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) top-left corners of one crop per polygon id, centred on a random pixel of it, kept in the array."""
    h, w = polygon.shape
    rows, cols = np.nonzero(np.isin(polygon, ids))
    owner = polygon[rows, cols]
    out = np.empty((len(ids), 2), np.int64)
    for i, pid in enumerate(ids):
        where = np.flatnonzero(owner == pid)
        k = where[rng.integers(len(where))]
        out[i] = (
            np.clip(rows[k] - crop // 2, 0, max(h - crop, 0)),
            np.clip(cols[k] - crop // 2, 0, max(w - crop, 0)),
        )
    return out


def _augment(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random flip and quarter turn of a crop's features (C, s, s) and targets (2, s, s)."""
    k = int(rng.integers(4))
    x, y = torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))
    if rng.random() < 0.5:
        x, y = torch.flip(x, (-1,)), torch.flip(y, (-1,))
    return x, y


def _balanced(label: np.ndarray) -> tuple[float, float]:
    """Class weights giving each class half of the loss whatever its pixel count."""
    counts = [int((label == c).sum()) for c in (0, 1)]
    return tuple(sum(counts) / (2 * c) if c else 0.0 for c in counts)  # type: ignore[return-value]


def _crops(
    x_all: torch.Tensor, y_all: torch.Tensor, origins: np.ndarray, crop: int, rng: np.random.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of crops (features, targets: label and standardised score) at ``origins``, flipped and turned at
    random when ``rng`` is given."""
    xs, ys = [], []
    for r, c in origins:
        x, y = x_all[:, r : r + crop, c : c + crop], y_all[:, r : r + crop, c : c + crop]
        x, y = _augment(x, y, rng) if rng is not None else (x, y)
        xs.append(x)
        ys.append(y)
    xb, yb = torch.stack(xs), torch.stack(ys)
    if xb.shape[0] == 1:  # BatchNorm needs more than one value per channel: a crop and its mirror
        xb, yb = torch.cat([xb, torch.flip(xb, (-2,))]), torch.cat([yb, torch.flip(yb, (-2,))])
    return xb, yb


def train_value_net(
    features: np.ndarray,
    label: np.ndarray,
    polygon: np.ndarray,
    names: list[str],
    settings: ValueConfig,
    *,
    val_label: np.ndarray | None = None,
    device: str = "auto",
    unscaled: Sequence[str] = (),
    spec_extra: dict[str, Any] | None = None,
    score: np.ndarray | None = None,
) -> tuple[ValueModel, ValueTrainInfo]:
    """Train a U-Net on ``features`` (C, y, x; NaN = no data) where ``label`` (y, x: -1 / 0 / 1) is known; crops
    around the polygons of ``polygon`` (y, x ids, -1 none) holding training labels. ``val_label``: the labels of
    validation polygons (none of them in ``label``): the weights of the epoch with the least loss on one crop per
    validation polygon are kept, and training stops ``value.patience`` epochs after it (None: never early).
    ``unscaled``: features left as they are (one-hot classes: 0 / 1 already). ``spec_extra``: more
    :class:`ValueSpec` fields. ``score`` (y, x float, finite where labelled): learn it (a score target) rather
    than the probability of high."""
    t0 = time.perf_counter()
    seed_everything(settings.seed)
    rng = np.random.default_rng(settings.seed)
    known = label >= 0
    ids = np.unique(polygon[known & (polygon >= 0)])
    if len(ids) == 0:
        raise ValueError("no labelled training pixels")
    mean, std = norm_stats(features[:, known].T)  # training pixels only
    keep = np.isin(names, list(unscaled))
    mean[keep], std[keep] = 0.0, 1.0
    scale = score_scale(score[known]) if score is not None else {}
    target = {"target": "score", "score": {"column": settings.score_column, **scale}} if scale else {}
    spec = ValueSpec(
        base_channels=settings.base_channels,
        depth=settings.depth,
        dropout=settings.dropout,
        features=list(names),
        mean=mean.tolist(),
        std=std.tolist(),
        **{**(spec_extra or {}), **target},
    )
    dev = resolve_device(device)
    model = ValueModel.build(spec)
    net = model.net.to(dev)
    x_all = torch.from_numpy(prepare_features(features, mean, std))
    z = (score - scale["mean"]) / scale["std"] if score is not None else np.zeros(label.shape)
    y_all = torch.from_numpy(np.stack([label, np.where(known, z, 0.0)]).astype(np.float32))
    weights = _balanced(label)

    def loss_of(out: torch.Tensor, y: torch.Tensor, w: tuple[float, float]) -> torch.Tensor:
        if scale:
            return masked_mse(out, y[:, 1], y[:, 0], w)
        return masked_bce(out, y[:, 0].long(), w)

    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs)
    crop = settings.crop
    val, val_ids = None, np.zeros(0, np.int32)
    if val_label is not None and (val_label >= 0).any():
        val_ids = np.unique(polygon[(val_label >= 0) & (polygon >= 0)])
        origins = _crop_origins(polygon, val_ids, crop, np.random.default_rng(settings.seed + 1))
        vz = np.where(val_label >= 0, (score - scale["mean"]) / scale["std"], 0.0) if scale else 0 * label
        y_val = torch.from_numpy(np.stack([val_label, vz]).astype(np.float32))
        val = (*_crops(x_all, y_val, origins, crop, None), _balanced(val_label))
    steps, loss_value, epochs = 0, float("nan"), 0
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(settings.epochs):
        net.train()
        origins = _crop_origins(polygon, ids, crop, rng)[rng.permutation(len(ids))]
        for start in range(0, len(origins), settings.batch):
            xb, yb = _crops(x_all, y_all, origins[start : start + settings.batch], crop, rng)
            loss = loss_of(net(xb.to(dev)), yb.to(dev), weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            loss_value = float(loss.detach())
        sched.step()
        epochs = epoch + 1
        if val is None:
            continue
        net.eval()
        with torch.no_grad():
            val_loss = float(loss_of(net(val[0].to(dev)), val[1].to(dev), val[2]))
        if best is None or val_loss < best[0]:
            best = (val_loss, epochs, {k: v.detach().clone() for k, v in net.state_dict().items()})
        elif epochs - best[1] >= (settings.patience or settings.epochs):
            break
    if best is not None:
        net.load_state_dict(best[2])
    net.eval()
    info = ValueTrainInfo(
        epochs=epochs,
        best_epoch=best[1] if best is not None else epochs,
        val_loss=best[0] if best is not None else None,
        steps=steps,
        polygons=len(ids),
        validation_polygons=len(val_ids),
        pixels={"low": int((label == 0).sum()), "high": int((label == 1).sum())},
        final_loss=loss_value,
        device=str(dev),
        seconds=time.perf_counter() - t0,
    )
    model.net = net.cpu()
    return model, info


def train_labelled(
    features: np.ndarray,
    label: np.ndarray,
    val_label: np.ndarray | None,
    polygon: np.ndarray,
    names: list[str],
    settings: ValueConfig,
    device: str,
    *,
    unscaled: Sequence[str],
    key: str,
    score: np.ndarray | None = None,
) -> tuple[ValueModel, float]:
    """:func:`train_value_net` with what the saved model records: the label column and classes, the value section
    and the training ``key``, and how it was trained (without the seconds: a model retrained on the same data is the
    same file, so its maps resume rather than clash); and the training seconds."""
    extra = {
        "labels": {"column": settings.label_column, "high": settings.high, "low": settings.low},
        "config": settings.model_dump(mode="json"),
        "training_key": key,
    }
    model, info = train_value_net(
        features,
        label,
        polygon,
        names,
        settings,
        val_label=val_label,
        device=device,
        unscaled=unscaled,
        spec_extra=extra,
        score=score,
    )
    trained = {k: v for k, v in info.as_dict().items() if k != "seconds"}
    model.spec = model.spec.model_copy(update={"trained": trained})
    return model, info.seconds
