"""Losses for presence-absence surveys, presence-only records and background points, alone or mixed in one batch.

Rows are tagged by source (0 ``pa``, 1 ``po``, 2 ``bg``; see :data:`geoplantnet.samples.kinds.SOURCE_CODE`);
labels are
1 present, 0 absent, -1 unknown.

* Presence-absence: binary cross-entropy over the known labels only (-1 ignored).
* Presence-only, ``assume_negative``: at a record, its species are presences (weight 1) and every other species an
  absence with a small weight (``an_negative_weight``); background points are absences for every species (weight 1).
* Presence-only, ``full_weighted``: the "full weighted loss" of Zbinden, van Tiel, Rußwurm & Tuia (2024),
  *Imbalance-aware presence-only loss function for species distribution modeling* (arXiv:2403.07472). For ``S``
  species, a record ``x`` with labels ``y`` and a background point ``x'``::

      L = -1/S sum_s [ lambda1 * w_s * y_s log p_s(x)  +  (1 - lambda2) (1 - y_s) log(1 - p_s(x))
                       + lambda2 log(1 - p_s(x')) ]

  with species weights ``w_s = n / n_s`` (records in the training set over records of ``s``: the inverse frequency,
  so rare species count as much as common ones), other species' records as pseudo-absences weighted ``1 - lambda2``
  and (target-group) background points weighted ``lambda2``. The paper's best setting, lambda2 = 0.5 (lambda1 = 1),
  is the default of :class:`geoplantnet.core.config.TrainConfig`. Record and background terms are each averaged over
  their own rows of the batch, so their ratio in a batch does not change the balance.
* Presence-only, ``deepmaxent``: the DeepMaxent loss of Ryckewaert, Leblanc, Bonnet, Joly, Servajean & Tuia (2024),
  *DeepMaxent: a neural-network-based approach for species distribution modelling* (arXiv:2412.19217): MaxEnt's own
  objective, the negative log-likelihood of an inhomogeneous Poisson process normalised over the sites, with the
  features learned by a network shared by all species::

      L = 1/S' sum_s [ -1/n_s sum_{i: y_is = 1} f_s(x_i)  +  log 1/N sum_j exp f_s(x_j) ]

  over the ``N`` presence-only and background rows of the batch (presences are part of the normaliser, as in
  MaxEnt), for the ``S'`` species with at least one presence in the batch. ``f_s`` is the species' logit read as a
  log relative intensity; it is defined up to a constant, so only the ranking of sites (and AUC) is meaningful until
  the output is calibrated on presence-absence data.

:func:`combined_loss` mixes the presence-absence and presence-only parts of a batch in proportion to their rows.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geoplantnet.core.config import TrainConfig
from geoplantnet.samples.kinds import SOURCE_CODE, Source

PA, PO, BG = SOURCE_CODE[Source.PA], SOURCE_CODE[Source.PO], SOURCE_CODE[Source.BG]
PoLoss = Literal["full_weighted", "assume_negative", "deepmaxent"]


class LossError(ValueError):
    """Inputs a loss cannot use (shapes, unknown kinds)."""


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")


def _row_mean(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean over species then over ``rows`` (0 when no row is selected, keeping the graph)."""
    if not bool(rows.any()):
        return values.sum() * 0.0
    return values[rows].mean(dim=1).mean()


def masked_bce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over entries labelled 0 or 1 (-1 ignored); 0 when none is known."""
    known = label >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    return _bce(logits, label.clamp(min=0))[known].mean()


def species_weights(label: np.ndarray, source: np.ndarray) -> np.ndarray:
    """``w_s = n / n_s`` over presence-only records (``n`` records, ``n_s`` of species ``s``; 1 where ``n_s = 0``)."""
    po = np.asarray(label)[np.asarray(source) == PO]
    n = po.shape[0]
    n_s = (po == 1).sum(axis=0).astype(np.float64)
    return np.where(n_s > 0, n / np.maximum(n_s, 1), 1.0).astype(np.float32)


def full_weighted_loss(
    logits: torch.Tensor,
    label: torch.Tensor,
    source: torch.Tensor,
    species_weight: torch.Tensor,
    lambda1: float = 1.0,
    lambda2: float = 0.5,
) -> torch.Tensor:
    """Zbinden et al. (2024) full weighted loss on the ``po`` and ``bg`` rows of a batch (other rows ignored)."""
    present = (label == 1).float()
    w = species_weight.to(logits.device, torch.float32)
    record = lambda1 * w * present * _bce(logits, torch.ones_like(present)) + (1 - lambda2) * (1 - present) * _bce(
        logits, torch.zeros_like(present)
    )
    background = lambda2 * _bce(logits, torch.zeros_like(present))
    return _row_mean(record, source == PO) + _row_mean(background, source == BG)


def assume_negative_loss(
    logits: torch.Tensor, label: torch.Tensor, source: torch.Tensor, negative_weight: float = 0.05
) -> torch.Tensor:
    """Records: their species present, all others absent with ``negative_weight``; background points: all absent."""
    present = (label == 1).float()
    is_bg = (source == BG).float()[:, None]
    weight = present + (1 - present) * (negative_weight * (1 - is_bg) + is_bg)
    target = present * (1 - is_bg)
    return _row_mean(weight * _bce(logits, target), (source == PO) | (source == BG))


def deepmaxent_loss(logits: torch.Tensor, label: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """DeepMaxent (Ryckewaert et al. 2024): per species, the Poisson-process NLL normalised over the ``po`` and
    ``bg`` rows of the batch (softmax over sites); the mean over species present in the batch (0 when none is)."""
    rows = (source == PO) | (source == BG)
    if not bool(rows.any()):
        return logits.sum() * 0.0
    f = logits[rows].float()
    present = (label[rows] == 1).float()
    n_s = present.sum(dim=0)
    has = n_s > 0
    if not bool(has.any()):
        return logits.sum() * 0.0
    log_norm = torch.logsumexp(f, dim=0) - float(np.log(f.shape[0]))
    nll = -(f * present).sum(dim=0) / n_s.clamp(min=1.0) + log_norm
    return nll[has].mean()


def combined_loss(
    logits: torch.Tensor,
    label: torch.Tensor,
    source: torch.Tensor,
    *,
    po_loss: PoLoss = "full_weighted",
    species_weight: torch.Tensor | None = None,
    lambda1: float = 1.0,
    lambda2: float = 0.5,
    negative_weight: float = 0.05,
) -> torch.Tensor:
    """Presence-absence BCE and the presence-only loss, weighted by their shares of the batch's rows."""
    if logits.shape != label.shape or source.shape != logits.shape[:1]:
        raise LossError(
            f"shapes: logits {tuple(logits.shape)}, label {tuple(label.shape)}, source {tuple(source.shape)} mismatch"
        )
    is_pa = source == PA
    n_pa = int(is_pa.sum())
    n_po = int(((source == PO) | (source == BG)).sum())
    total = logits.sum() * 0.0
    if n_pa:
        total = total + n_pa * masked_bce(logits[is_pa], label[is_pa])
    if n_po:
        if po_loss == "full_weighted":
            sw = torch.ones(logits.shape[1]) if species_weight is None else species_weight
            part = full_weighted_loss(logits, label, source, sw, lambda1, lambda2)
        elif po_loss == "assume_negative":
            part = assume_negative_loss(logits, label, source, negative_weight)
        elif po_loss == "deepmaxent":
            part = deepmaxent_loss(logits, label, source)
        else:
            raise LossError(f"unknown po_loss {po_loss!r}; expected 'full_weighted', 'assume_negative' or 'deepmaxent'")
        total = total + n_po * part
    return total / max(n_pa + n_po, 1)


class SpeciesLoss(nn.Module):
    """:func:`combined_loss` with its settings from :class:`TrainConfig` and species weights from the training rows."""

    def __init__(self, cfg: TrainConfig, species_weight: np.ndarray | torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        sw = torch.ones(0) if species_weight is None else torch.as_tensor(species_weight, dtype=torch.float32)
        self.register_buffer("species_weight", sw, persistent=False)

    def forward(self, logits: torch.Tensor, label: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        sw = self.species_weight if self.species_weight.numel() else None
        return combined_loss(
            logits,
            label,
            source,
            po_loss=self.cfg.po_loss,
            species_weight=sw,
            lambda1=self.cfg.po_lambda1,
            lambda2=self.cfg.po_lambda2,
            negative_weight=self.cfg.an_negative_weight,
        )
