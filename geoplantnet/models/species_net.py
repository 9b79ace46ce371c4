"""The multimodal species network: Sentinel-2 patch + seasonal series + environmental patch -> one logit per species.

Every encoder is a function of a finite neighbourhood only, so the same weights run on a whole tile at once
(:meth:`SpeciesNet.dense_forward`), sharing the convolutions between neighbouring pixels:

* patch (``season*band [+ season masks]`` channels, ``P x P``): ``depth`` valid 3x3 conv blocks (BatchNorm, GELU),
  then the remaining window averaged (stride-1 average pooling) and a 1x1 conv, or (``model.patch_pool=conv``) one
  conv whose kernel covers it; either way the receptive field is exactly ``P x P``. On a tile of ``H + P - 1``
  pixels it returns ``H`` outputs, output ``i`` being the patch ``[i, i + P)``.
* series (``band [+ mask]`` channels over seasons): a per-pixel 1-D conv over seasons (a 1x1 operator in space).
* env (``var [+ mask]`` channels, ``E x E``): a pointwise layer, ``(E - 1) // 2`` valid 3x3 blocks, then the same
  summary as the patch (an MLP when ``E = 1``).
* fusion: concat -> Linear(fusion_hidden) -> GELU -> Dropout -> Linear(n_species), applied per pixel.

The point a patch describes sits at index ``P // 2`` (see :mod:`geoplantnet.samples.training_set`), so a dense tile
needs a
halo of ``P // 2`` pixels before and ``P - 1 - P // 2`` after each axis (:meth:`ModelSpec.halo`).
Weights are always built from :class:`ModelSpec`, never downloaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from pydantic import BaseModel, ConfigDict, field_validator
from torch import nn

from geoplantnet.core.config import ModelConfig
from geoplantnet.models.calibration import Calibration, Thresholds
from geoplantnet.samples.kinds import MODALITIES, Modality
from geoplantnet.samples.training_set import NormStats

SPEC_VERSION = "2"  # 2: patch pooling choice, input channel names


class ModelError(ValueError):
    """A model that cannot be built from its configuration or is given inputs of the wrong shape."""


class ModelSpec(BaseModel):
    """Everything needed to rebuild a trained model without the data: sizes, inputs, species, normalisation."""

    model_config = ConfigDict(frozen=True)

    version: str = SPEC_VERSION
    model: ModelConfig
    modalities: dict[str, tuple[int, ...]]
    species: list[str]
    species_name: list[str] | None = None
    norm: NormStats
    mask_channels: bool = True
    env_from_point: bool = False
    # Input channel names (Sentinel-2 bands/indices, environmental variables) as trained; a map run checks its inputs
    # against them, so a model is never applied to layers in another order. None in specs from older files.
    bands: list[str] | None = None
    variables: list[str] | None = None
    # Networks averaged (an ensemble of seeds, :class:`SpeciesEnsemble`); 1 in older files.
    members: int = 1
    # Set by sdm on its final model (geoplantnet.validation.calibration): per-species calibration, fitted on the
    # cross-validation's out-of-fold presence-absence predictions, applied by predict and map; thresholds on the output
    # scale. None in specs of fold models, of map-trained models and of older files (which load unchanged).
    calibration: Calibration | None = None
    thresholds: Thresholds | None = None

    @field_validator("modalities")
    @classmethod
    def _known(cls, v: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        unknown = sorted(set(v) - set(MODALITIES))
        if unknown or not v:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {sorted(v)}")
        return v

    def halo(self, modality: str) -> tuple[int, int]:
        """Pixels a dense tile needs before and after the output region for ``modality`` (0, 0 for series)."""
        if modality == Modality.SERIES:
            return 0, 0
        size = self.modalities[modality][-1]
        return size // 2, size - 1 - size // 2


def _conv_block(c_in: int, c_out: int, kernel: int, norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.GELU())
    return layers


class BoxMean(nn.Module):
    """Stride-1 mean over ``size x size`` windows, as two 1-D means (2k adds per output instead of k^2)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.avg_pool2d(x, (self.size, 1), stride=1)
        return nn.functional.avg_pool2d(x, (1, self.size), stride=1)


class PatchEncoder(nn.Module):
    """Valid 3x3 conv blocks, then the remaining window summarised: receptive field == the patch, fully convolutional.

    ``pool="mean"`` (default) averages the remaining window (stride-1 box mean) then mixes channels with a 1x1 conv:
    4x fewer encoder parameters and half the FLOPs of a dense tile (0.24 vs 0.45 MFLOP per pixel for the default
    sizes). ``pool="conv"`` uses one conv whose kernel covers the remaining window (position-aware; on CPU its large
    GEMM runs so efficiently that dense wall time is only ~10% longer).
    """

    def __init__(
        self, c_in: int, size: int, hidden: int, n_blocks: int, pointwise_first: bool = False, pool: str = "mean"
    ) -> None:
        super().__init__()
        remaining = size - 2 * n_blocks
        if remaining < 1:
            raise ModelError(
                f"a {size}x{size} input cannot take {n_blocks} valid 3x3 conv blocks (model.depth too large)"
            )
        if pool not in ("mean", "conv"):
            raise ModelError(f"patch pooling must be 'mean' or 'conv', got {pool!r}")
        layers: list[nn.Module] = []
        c = c_in
        if pointwise_first:
            layers += _conv_block(c, hidden, 1, norm=False)
            c = hidden
        for _ in range(n_blocks):
            layers += _conv_block(c, hidden, 3, norm=True)
            c = hidden
        # no BatchNorm on the 1x1 output: with a batch of one it has a single value per channel
        if pool == "mean":
            if remaining > 1:
                layers.append(BoxMean(remaining))
            layers += _conv_block(c, hidden, 1, norm=False)
        else:
            layers += _conv_block(c, hidden, remaining, norm=False)
        self.net = nn.Sequential(*layers)
        self.size = size
        self.out_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, size + k, size + k)`` -> ``(B, hidden, 1 + k, 1 + k)``."""
        return self.net(x)


class SeriesEncoder(nn.Module):
    """A per-pixel 1-D conv over seasons; seasons keep their identity (flattened, not pooled)."""

    def __init__(self, c_in: int, n_seasons: int, hidden: int) -> None:
        super().__init__()
        k = 3 if n_seasons >= 3 else 1
        self.conv = nn.Sequential(
            nn.Conv1d(c_in, hidden, k, padding=k // 2),
            nn.GELU(),
            nn.Conv1d(hidden, hidden, k, padding=k // 2),
            nn.GELU(),
        )
        self.proj = nn.Sequential(nn.Linear(hidden * n_seasons, hidden), nn.GELU())
        self.out_features = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, season)`` -> ``(B, hidden)``."""
        return self.proj(self.conv(x).flatten(1))


class SpeciesNet(nn.Module):
    """Late-fusion multimodal network; one encoder per modality present in ``modalities``.

    ``modalities`` maps ``"patch"``, ``"series"``, ``"env"`` to the shape of one prepared sample (channels first):
    ``(C, P, P)``, ``(C, season)``, ``(C, E, E)``, as
    :meth:`geoplantnet.samples.training_set.TrainingSet.modality_shapes` gives them.
    """

    def __init__(self, model_cfg: ModelConfig, n_species: int, modalities: Mapping[str, Sequence[int]]) -> None:
        super().__init__()
        if n_species < 1:
            raise ModelError(f"n_species must be >= 1, got {n_species}")
        unknown = sorted(set(modalities) - set(MODALITIES))
        if unknown or not modalities:
            raise ModelError(f"modalities must be a non-empty subset of {MODALITIES}, got {sorted(modalities)}")
        self.shapes = {m: tuple(int(d) for d in s) for m, s in modalities.items()}
        self.encoders = nn.ModuleDict()
        if Modality.PATCH in self.shapes:
            c, h, w = self._square(Modality.PATCH, 3)
            if h != model_cfg.patch_size:
                raise ModelError(f"patch inputs are {h}x{w} but model.patch_size={model_cfg.patch_size}")
            self.encoders[Modality.PATCH] = PatchEncoder(
                c, h, model_cfg.width, model_cfg.depth, pool=model_cfg.patch_pool
            )
        if Modality.SERIES in self.shapes:
            if len(self.shapes[Modality.SERIES]) != 2:
                raise ModelError(f"series shape must be (channels, seasons), got {self.shapes[Modality.SERIES]}")
            c, t = self.shapes[Modality.SERIES]
            self.encoders[Modality.SERIES] = SeriesEncoder(c, t, model_cfg.series_hidden)
        if Modality.ENV in self.shapes:
            c, e, _ = self._square(Modality.ENV, 3)
            self.encoders[Modality.ENV] = PatchEncoder(
                c, e, model_cfg.env_hidden, (e - 1) // 2, pointwise_first=True, pool=model_cfg.patch_pool
            )
        n_features = sum(enc.out_features for enc in self.encoders.values())
        self.head = nn.Sequential(
            nn.Linear(n_features, model_cfg.fusion_hidden),
            nn.GELU(),
            nn.Dropout(model_cfg.dropout),
            nn.Linear(model_cfg.fusion_hidden, n_species),
        )
        self.n_species = n_species

    def _square(self, name: str, ndim: int) -> tuple[int, int, int]:
        shape = self.shapes[name]
        if len(shape) != ndim or shape[-1] != shape[-2]:
            raise ModelError(f"{name} shape must be (channels, size, size), got {shape}")
        return shape  # type: ignore[return-value]

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> SpeciesNet:
        """The network (or, for ``spec.members > 1``, the :class:`SpeciesEnsemble`) a spec describes, untrained."""
        if spec.members > 1:
            return SpeciesEnsemble([cls(spec.model, len(spec.species), spec.modalities) for _ in range(spec.members)])
        return cls(spec.model, len(spec.species), spec.modalities)

    def _check(self, inputs: Mapping[str, torch.Tensor | None], lead: int) -> None:
        for m, shape in self.shapes.items():
            t = inputs.get(m)
            if t is None:
                raise ModelError(f"the model needs a {m!r} input")
            if m != Modality.SERIES and t.shape[lead] != shape[0]:
                raise ModelError(f"{m} input has {t.shape[lead]} channels, the model expects {shape[0]}")

    def forward(
        self, patch: torch.Tensor | None = None, series: torch.Tensor | None = None, env: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``(B, n_species)`` from prepared batches ``(B, *shape)`` of the model's modalities."""
        inputs = {Modality.PATCH: patch, Modality.SERIES: series, Modality.ENV: env}
        self._check(inputs, lead=1)
        features = []
        for m, enc in self.encoders.items():
            x = inputs[m]
            if m != Modality.SERIES and x.shape[-1] != self.shapes[m][-1]:
                raise ModelError(f"{m} input is {tuple(x.shape[-2:])}, expected {self.shapes[m][-2:]}")
            features.append(enc(x).flatten(1))
        return self.head(torch.cat(features, dim=1))

    def dense_forward(
        self,
        patch_tile: torch.Tensor | None = None,
        series_tile: torch.Tensor | None = None,
        env_tile: torch.Tensor | None = None,
        *,
        patch_sample: tuple[torch.Tensor, torch.Tensor] | None = None,
        series_chunk: int = 65_536,
    ) -> torch.Tensor:
        """Logits ``(n_species, H, W)`` for every pixel of a tile, sharing convolutions between neighbours.

        Inputs are prepared (normalised, masked) tiles on the output grid: ``patch_tile (C, H + P - 1, W + P - 1)``,
        ``series_tile (C, season, H, W)``, ``env_tile (C, H + E - 1, W + E - 1)``. Output ``[:, i, j]`` equals
        :meth:`forward` on the patches starting at ``(i, j)`` (centre pixel ``(i + P // 2, j + P // 2)``). Call in
        ``eval()`` mode (BatchNorm statistics and dropout must be frozen for that equality).

        ``patch_sample=(rows, cols)`` keeps only those rows and columns of the patch feature map, for a patch on a finer
        grid than the output (Sentinel-2 at 20 m under a 50 m map, see :mod:`geoplantnet.inference.dense`).
        """
        inputs = {Modality.PATCH: patch_tile, Modality.SERIES: series_tile, Modality.ENV: env_tile}
        self._check(inputs, lead=0)
        maps = []
        for m, enc in self.encoders.items():
            x = inputs[m]
            if m == Modality.SERIES:
                c, t, h, w = x.shape
                flat = x.permute(2, 3, 0, 1).reshape(h * w, c, t)
                feats = torch.cat([enc(flat[i : i + series_chunk]) for i in range(0, h * w, series_chunk)])
                maps.append(feats.reshape(h, w, -1).permute(2, 0, 1))
            else:
                feats = enc(x[None])[0]
                if m == Modality.PATCH and patch_sample is not None:
                    rows, cols = patch_sample
                    feats = feats[:, rows][:, :, cols]
                maps.append(feats)
        sizes = {tuple(f.shape[-2:]) for f in maps}
        if len(sizes) != 1:
            named = {m: tuple(f.shape[-2:]) for m, f in zip(self.encoders, maps, strict=True)}
            raise ModelError(f"dense tiles give different output sizes per modality {named}; check the halos")
        fused = torch.cat(maps, dim=0).permute(1, 2, 0)  # (H, W, features): the head is per pixel
        return self.head(fused).permute(2, 0, 1)


def member_of(model: nn.Module, k: int) -> nn.Module:
    """Member ``k`` (modulo their number) of an ensemble, or ``model`` itself: a draw of an impact's change that
    includes the model's error between independently trained networks, not only one network's dropout spread."""
    return model.members[k % len(model.members)] if isinstance(model, SpeciesEnsemble) else model


class SpeciesEnsemble(SpeciesNet):
    """Networks of one spec trained with different seeds, answering as one: the mean of their logits.

    Averaging logits (a geometric mean of the odds, or of the relative intensities for DeepMaxent) keeps the output a
    logit, so the dense tile path, calibration and encoding treat an ensemble like a single network.
    """

    def __init__(self, members: Sequence[SpeciesNet]) -> None:
        nn.Module.__init__(self)
        if not members:
            raise ModelError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.shapes = members[0].shapes
        self.n_species = members[0].n_species

    def forward(
        self, patch: torch.Tensor | None = None, series: torch.Tensor | None = None, env: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.stack([m(patch, series, env) for m in self.members]).mean(dim=0)

    def dense_forward(self, *args: torch.Tensor | None, **kwargs: object) -> torch.Tensor:  # type: ignore[override]
        return torch.stack([m.dense_forward(*args, **kwargs) for m in self.members]).mean(dim=0)  # type: ignore[arg-type]
