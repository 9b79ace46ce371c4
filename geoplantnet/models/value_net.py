"""The biodiversity-value network (after Andermann et al.): a small U-Net from a predictor stack to the probability
that a pixel is of high rather than low biodiversity value, trained on labelled polygons.

Inputs are a feature stack (C, y, x): the seasonal Sentinel-2 composite channels and the environmental predictors
on the value grid, standardised with statistics of the training pixels, NaN -> 0, plus one "data present" channel
(1 where every feature is finite), as the species network's ``mask_channels``. The loss is binary cross-entropy on
labelled pixels only (:func:`masked_bce`): unlabelled pixels give no gradient. With a score target (``ValueSpec.target
== "score"``: polygons carrying a numeric condition score) the head is linear and the loss the class-weighted squared
error of the standardised score (:func:`masked_mse`); the output is the score rescaled linearly to the value
(:meth:`ValueSpec.to_value`), so the map does not saturate as a probability does. BatchNorm rather than GroupNorm: a
batch-normalised network in eval mode is a per-pixel function of its receptive field, so a tile read with a halo of
:func:`halo` pixels predicts exactly what one pass over the whole grid would (group statistics would depend on the
window, and tile seams would show).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from geoplantnet.core.errors import InputError
from geoplantnet.models.mc_dropout import exclusive, mc_dropout
from geoplantnet.storage.store import service_errors

FILE_FORMAT = "geoplantnet-value-net/1"
CLASSES = ("low", "high")  # the output is the probability of the second
TARGETS = ("probability", "score")


class ValueModelError(InputError):
    """A value model file that cannot be read or does not fit its inputs (one line naming the file)."""


class ValueSpec(BaseModel):
    """What rebuilds a trained value network without its data: sizes, input names, normalisation, provenance."""

    model_config = ConfigDict(frozen=True)

    format: str = FILE_FORMAT
    base_channels: int
    depth: int
    dropout: float
    features: list[str]  # input channels in order (the mask channel is added after them)
    mean: list[float]
    std: list[float]
    classes: list[str] = list(CLASSES)
    labels: dict[str, str] = {}  # label column and the values read as low / high
    config: dict[str, Any] = {}  # the value section it was trained with
    training_key: str = ""  # hash of the settings and inputs it was trained on (a rerun reuses the model)
    trained: dict[str, Any] = {}  # epochs, pixels, polygons, device, seconds
    target: str = "probability"  # or "score" (TARGETS)
    # score target: the column, the standardisation of the training scores (mean, std: the net's output units) and
    # the scores mapped to value 0 and 1 (``zero``, ``one``): value = (score - zero) / (one - zero)
    score: dict[str, Any] = {}

    @property
    def halo(self) -> int:
        return halo(self.depth)

    def to_value(self, out: torch.Tensor) -> torch.Tensor:
        """The network's raw output -> the value: the probability of high (sigmoid), or the score rescaled."""
        if self.target != "score":
            return torch.sigmoid(out)
        return self.score_value(self.score["mean"] + self.score["std"] * out)

    def meaning(self) -> dict[str, Any]:
        """What ``biodiversity_value`` means, for a store's attrs: ``value_target`` and, for a score target, the
        score column and the scores at value 0 and 1 (score = value_score_at_0 + value x (at_1 - at_0))."""
        if self.target != "score":
            return {"value_target": "probability", "value_units": "probability of high rather than low value"}
        return {
            "value_target": "score",
            "value_units": f"{self.score.get('column')} score rescaled linearly to [0, 1]",
            "value_score_column": self.score.get("column"),
            "value_score_at_0": round(self.score["zero"], 4),
            "value_score_at_1": round(self.score["one"], 4),
        }

    def score_value(self, score: Any) -> Any:
        """A score (array or tensor, in the polygons' units) as the value: ``(score - zero) / (one - zero)``."""
        return (score - self.score["zero"]) / (self.score["one"] - self.score["zero"])


def score_scale(scores: np.ndarray) -> dict[str, float]:
    """The score target's constants from the training pixels' scores: their mean and standard deviation (what the
    network learns to output is the standardised score) and the scores at value 0 and 1: the training polygons' range
    widened by half of it on each side, so the map is linear well past the surveyed extremes before the [0, 1]
    storage clips it."""
    lo, hi = float(np.min(scores)), float(np.max(scores))
    span = max(hi - lo, 1e-6)
    return {
        "mean": float(np.mean(scores)),
        "std": float(max(np.std(scores), 1e-6)),
        "zero": lo - span / 2,
        "one": hi + span / 2,
    }


def halo(depth: int) -> int:
    """Pixels a tile must read on each side so its outputs equal a whole-grid pass: at least the receptive radius
    (two 3x3 convolutions per level on the way down and up, the bottleneck's two, each pooling and up-sampling
    step; at most ``8 * 2**depth - 6``), rounded up to a multiple of ``2**depth`` so the pooling grid stays aligned."""
    step = 2**depth
    return step * math.ceil((8 * step - 6) / step)


def _double_conv(c_in: int, c_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
    )


class ValueNet(nn.Module):
    """U-Net: ``depth`` levels of two 3x3 convolutions and 2x2 max pooling, a bottleneck, transposed-convolution
    up-sampling with skip connections, a 1x1 head giving one logit per pixel. Input sides must be multiples of
    ``2**depth`` (:meth:`ValueModel.predict` pads)."""

    def __init__(self, n_inputs: int, base_channels: int, depth: int, dropout: float) -> None:
        super().__init__()
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList()
        c_in = n_inputs
        for w in widths[:-1]:
            self.down.append(_double_conv(c_in, w, dropout))
            c_in = w
        self.bottleneck = _double_conv(widths[-2], widths[-1], dropout)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth))
        self.merge = nn.ModuleList(_double_conv(2 * widths[i], widths[i], dropout) for i in range(depth))
        self.head = nn.Conv2d(widths[0], 1, 1)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (batch, y, x) of inputs (batch, channel, y, x)."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for level in reversed(range(self.depth)):
            x = self.merge[level](torch.cat([self.up[level](x), skips[level]], dim=1))
        return self.head(x)[:, 0]


def masked_bce(logits: torch.Tensor, labels: torch.Tensor, class_weights: Sequence[float] = (1.0, 1.0)) -> torch.Tensor:
    """Binary cross-entropy over the labelled pixels only (``labels`` 0 low, 1 high, -1 unlabelled), each class
    weighted (balanced classes: weights inversely proportional to their pixel counts); 0 without labelled pixels."""
    known = labels >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0  # keeps the graph: a crop without labels contributes nothing
    target = labels[known].float()
    weight = torch.where(target > 0.5, class_weights[1], class_weights[0]).to(logits.dtype)
    loss = nn.functional.binary_cross_entropy_with_logits(logits[known], target, weight=weight, reduction="sum")
    return loss / weight.sum()


def masked_mse(
    out: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, class_weights: Sequence[float] = (1.0, 1.0)
) -> torch.Tensor:
    """Squared error of ``out`` against ``target`` (standardised scores) over the labelled pixels (``labels`` >= 0),
    each weighted by its class as in :func:`masked_bce`; 0 without labelled pixels."""
    known = labels >= 0
    if not bool(known.any()):
        return out.sum() * 0.0
    weight = torch.where(labels[known] > 0, class_weights[1], class_weights[0]).to(out.dtype)
    return (weight * (out[known] - target[known].to(out.dtype)) ** 2).sum() / weight.sum()


def prepare_features(features: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(..., C, y, x)`` raw features -> ``(..., C + 1, y, x)`` float32: standardised, NaN -> 0, then the "data
    present" channel (1 where all C features are finite)."""
    shape = [1] * features.ndim
    shape[-3] = -1
    z = (features.astype(np.float32) - mean.reshape(shape)) / std.reshape(shape)
    present = np.isfinite(z).all(axis=-3, keepdims=True).astype(np.float32)
    return np.concatenate([np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0), present], axis=-3).astype(np.float32)


def norm_stats(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of ``rows`` (pixels, C), NaN ignored; 0 / 1 for a feature with no
    finite value or no spread, so it standardises to 0 rather than NaN."""
    with np.errstate(invalid="ignore"), contextlib.suppress(RuntimeWarning):
        mean = np.nanmean(rows, axis=0) if len(rows) else np.zeros(rows.shape[1])
        std = np.nanstd(rows, axis=0) if len(rows) else np.ones(rows.shape[1])
    mean = np.where(np.isfinite(mean), mean, 0.0).astype(np.float32)
    std = np.where(np.isfinite(std) & (std > 1e-6), std, 1.0).astype(np.float32)
    return mean, std


def weights_digest(net: nn.Module) -> str:
    """sha256 of the weights (every tensor of the state dict in key order): the model's version."""
    h = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class ValueModel:
    """A trained :class:`ValueNet` with its :class:`ValueSpec`: save / load (a path or any fsspec URL) and
    prediction over a feature window, deterministic or by Monte-Carlo dropout."""

    def __init__(self, net: ValueNet, spec: ValueSpec) -> None:
        self.net = net
        self.spec = spec

    @classmethod
    def build(cls, spec: ValueSpec) -> ValueModel:
        """An untrained network of ``spec``'s sizes (inputs: its features and the mask channel)."""
        return cls(ValueNet(len(spec.features) + 1, spec.base_channels, spec.depth, spec.dropout), spec)

    @property
    def version(self) -> str:
        return weights_digest(self.net)

    def save(self, url: str, storage_options: dict[str, Any] | None = None) -> str:
        """Write weights + spec as one file (local: beside its name, then renamed; a URL: one PUT); returns the
        sha256 of the file's bytes."""
        buf = io.BytesIO()
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save({"format": FILE_FORMAT, "spec": self.spec.model_dump_json(), "state_dict": state}, buf)
        raw = buf.getvalue()
        if "://" not in url:
            path = Path(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(raw)
            os.replace(tmp, path)
        else:
            with service_errors(url), fsspec.open(url, "wb", **(storage_options or {})) as f:
                f.write(raw)
        return hashlib.sha256(raw).hexdigest()

    @classmethod
    def from_bytes(cls, raw: bytes, name: str, device: str | torch.device = "cpu") -> ValueModel:
        """Rebuild a saved model (eval mode) from its file's bytes; ``name`` is what messages call the file."""
        try:
            payload = torch.load(io.BytesIO(raw), map_location=device, weights_only=True)
        except Exception as exc:
            raise ValueModelError(f"{name}: not a readable value model file ({exc.__class__.__name__})") from None
        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            raise ValueModelError(f"{name}: not a {FILE_FORMAT} file")
        model = cls.build(ValueSpec.model_validate_json(payload["spec"]))
        try:
            model.net.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise ValueModelError(f"{name}: weights do not fit the spec ({str(exc).splitlines()[0]})") from None
        model.net.to(device).eval()
        return model

    @classmethod
    def load(
        cls, url: str, device: str | torch.device = "cpu", storage_options: dict[str, Any] | None = None
    ) -> tuple[ValueModel, bytes]:
        """The model in the file at ``url`` (a path or fsspec URL) and the file's bytes."""
        with service_errors(url):  # an object store's failures: one line naming it (its model errors pass)
            try:
                with fsspec.open(url, "rb", **(storage_options or {})) as f:
                    raw = f.read()
            except FileNotFoundError:
                raise ValueModelError(f"{url}: no such value model file (train one with geoplantnet value)") from None
            except IsADirectoryError:
                raise ValueModelError(f"{url}: a folder, not a value model file") from None
        return cls.from_bytes(raw, url, device), raw

    @torch.no_grad()
    def predict(self, features: np.ndarray, *, draws: int = 0, seed: int = 0) -> np.ndarray:
        """The value (max(draws, 1), y, x) float32 of raw features (C, y, x): the probability of high or, with a
        score target, the rescaled score (:meth:`ValueSpec.to_value`, not clipped here). ``draws`` = 0 one
        deterministic pass; k > 0 k passes with only the dropout layers active (BatchNorm keeps its running
        statistics), seeded by ``seed`` so a rerun gives the same draws; Dropout2d's masks are one per channel,
        so with one seed draw k is the same network over any window. The window is padded at its bottom and
        right to a multiple of ``2**depth`` (NaN, i.e. no data) and cut back."""
        spec = self.spec
        if features.shape[0] != len(spec.features):
            raise ValueModelError(f"the value model takes {len(spec.features)} features, got {features.shape[0]}")
        step = 2**spec.depth
        h, w = features.shape[-2:]
        pad = ((0, 0), (0, -h % step), (0, -w % step))
        mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
        x = prepare_features(np.pad(features, pad, constant_values=np.nan), mean, std)
        device = next(self.net.parameters()).device
        inputs = torch.from_numpy(x[None]).to(device)
        with exclusive():  # the cached net is shared by the worker's threads
            self.net.eval()  # a net fresh from training comes back in train mode
            if draws <= 0:
                return spec.to_value(self.net(inputs))[:, :h, :w].float().cpu().numpy()
            out = []
            for k in range(draws):  # draw k: one thinned network (channel masks), the same over any window
                with mc_dropout(self.net, seed + k):
                    out.append(spec.to_value(self.net(inputs))[0, :h, :w].float().cpu().numpy())
        return np.stack(out)
