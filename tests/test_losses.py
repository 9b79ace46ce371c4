"""Losses on hand cases: masked BCE, assume-negative, the full weighted loss (Zbinden et al. 2024), mixed batches."""

import math

import numpy as np
import pytest
import torch

from geoplantnet.core.config import TrainConfig
from geoplantnet.models.losses import (
    BG,
    PA,
    PO,
    LossError,
    SpeciesLoss,
    assume_negative_loss,
    combined_loss,
    full_weighted_loss,
    masked_bce,
    species_weights,
)

L0 = math.log(2.0)  # BCE of a zero logit, whatever the target
Z = math.log(3.0)  # sigmoid(Z) = 0.75


def _sp(x: float) -> float:  # softplus
    return math.log1p(math.exp(x))


def test_masked_bce_ignores_unknown_labels():
    logits = torch.tensor([[Z, 0.0, 5.0], [0.0, -Z, 9.0]])
    label = torch.tensor([[1, 0, -1], [-1, 0, -1]])
    expected = (_sp(-Z) + L0 + _sp(-Z)) / 3  # -log .75, -log .5, -log .75
    assert masked_bce(logits, label).item() == pytest.approx(expected, rel=1e-6)
    assert masked_bce(logits, torch.full_like(label, -1)).item() == 0.0


def test_species_weights_are_inverse_frequencies_over_records():
    label = np.array([[1, -1, -1], [1, -1, -1], [-1, 1, -1], [1, 1, 1], [0, 0, 0]])
    source = np.array([PO, PO, PO, PA, BG])
    np.testing.assert_allclose(species_weights(label, source), [1.5, 3.0, 1.0])  # 3 records: 2, 1 and 0 of each


def test_full_weighted_loss_hand_case():
    logits = torch.tensor([[Z, 0.0], [0.0, Z]])
    label = torch.tensor([[1, -1], [-1, -1]])
    source = torch.tensor([PO, BG])
    w = torch.tensor([4.0, 2.0])
    loss = full_weighted_loss(logits, label, source, w, lambda1=2.0, lambda2=0.25)
    record = (2.0 * 4.0 * _sp(-Z) + 0.75 * L0) / 2  # presence of species 0, pseudo-absence of species 1
    background = 0.25 * (L0 + _sp(Z)) / 2
    assert loss.item() == pytest.approx(record + background, rel=1e-6)


def test_full_weighted_balances_rare_and_common_species():
    # 4 records: species 0 three times, species 1 once; with w_s = n / n_s both get the same total presence weight.
    label = torch.tensor([[1, -1], [1, -1], [1, -1], [-1, 1]])
    source = torch.full((4,), PO)
    w = torch.as_tensor(species_weights(label.numpy(), source.numpy()))
    logits = torch.zeros(4, 2, requires_grad=True)
    full_weighted_loss(logits, label, source, w, lambda2=1.0).backward()  # lambda2 = 1: presences only
    grad = logits.grad
    assert grad[:3, 0].sum().item() == pytest.approx(grad[3, 1].item(), rel=1e-6)


def test_assume_negative_hand_case():
    logits = torch.tensor([[Z, Z], [Z, 0.0]])
    label = torch.tensor([[1, -1], [-1, -1]])
    source = torch.tensor([PO, BG])
    loss = assume_negative_loss(logits, label, source, negative_weight=0.1)
    record = (_sp(-Z) + 0.1 * _sp(Z)) / 2
    background = (_sp(Z) + L0) / 2
    assert loss.item() == pytest.approx((record + background) / 2, rel=1e-6)


def test_combined_loss_mixes_by_row_shares_and_reduces_to_each_part():
    logits = torch.tensor([[Z, 0.0], [0.0, Z], [Z, -Z]])
    label = torch.tensor([[1, 0], [1, -1], [-1, -1]])
    source = torch.tensor([PA, PO, BG])
    w = torch.tensor([1.0, 1.0])
    pa = masked_bce(logits[:1], label[:1])
    po = full_weighted_loss(logits, label, source, w)
    mixed = combined_loss(logits, label, source, species_weight=w)
    assert mixed.item() == pytest.approx((pa.item() + 2 * po.item()) / 3, rel=1e-6)
    only_pa = combined_loss(logits[:1], label[:1], source[:1], species_weight=w)
    assert only_pa.item() == pytest.approx(pa.item(), rel=1e-6)
    an = combined_loss(logits, label, source, po_loss="assume_negative", negative_weight=0.1)
    assert an.item() == pytest.approx((pa.item() + 2 * assume_negative_loss(logits, label, source, 0.1).item()) / 3)


def test_species_loss_reads_its_settings_from_the_config_and_has_gradients():
    cfg = TrainConfig(po_loss="assume_negative", an_negative_weight=0.1)
    logits = torch.tensor([[Z, Z], [Z, 0.0]], requires_grad=True)
    label, source = torch.tensor([[1, -1], [-1, -1]]), torch.tensor([PO, BG])
    loss = SpeciesLoss(cfg)(logits, label, source)
    assert loss.item() == pytest.approx(assume_negative_loss(logits, label, source, 0.1).item())
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_bad_inputs_give_clear_errors():
    with pytest.raises(LossError, match="shapes"):
        combined_loss(torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.int8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(LossError, match="po_loss"):
        combined_loss(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([PO]), po_loss="maxent")  # type: ignore[arg-type]
