"""The pieces of the deep species model added for issue 10: the DeepMaxent loss, ensembles, robust scaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geoplantnet.core.config import ModelConfig, TrainConfig
from geoplantnet.models.losses import BG, PA, PO, SpeciesLoss, combined_loss, deepmaxent_loss
from geoplantnet.models.species_net import ModelSpec, SpeciesEnsemble, SpeciesNet
from geoplantnet.samples.training_set import NormStats, compute_stats, open_training_set, write_training_set
from geoplantnet.training.train import load_ensemble, load_model, save_model


def test_deepmaxent_is_the_normalised_poisson_likelihood_per_species() -> None:
    logits = torch.tensor([[1.0, 0.0], [2.0, -1.0], [0.0, 3.0], [-1.0, 0.5]])
    label = torch.tensor([[1, -1], [1, -1], [-1, 1], [-1, -1]])
    source = torch.tensor([PO, PO, PO, BG])
    by_hand = []
    for s in range(2):
        f = logits[:, s]
        present = label[:, s] == 1
        by_hand.append(-f[present].mean() + torch.logsumexp(f, 0) - np.log(4))
    assert torch.isclose(deepmaxent_loss(logits, label, source), torch.stack(by_hand).mean())
    # a species' logits are defined up to a constant (relative intensity): shifting them changes nothing
    shifted = logits + torch.tensor([5.0, -2.0])
    assert torch.isclose(deepmaxent_loss(shifted, label, source), deepmaxent_loss(logits, label, source))
    # survey rows are not part of it; a batch without presence gives 0 with a graph
    assert torch.isclose(
        deepmaxent_loss(
            torch.cat([logits, logits[:1] * 9]), torch.cat([label, label[:1]]), torch.cat([source, torch.tensor([PA])])
        ),
        deepmaxent_loss(logits, label, source),
    )
    zero = deepmaxent_loss(logits.requires_grad_(), torch.full_like(label, -1), source)
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_deepmaxent_learns_where_the_records_are_against_the_background() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x_bg = rng.uniform(-1, 1, 500)
    x_po = rng.normal(0.5, 0.15, 100)  # records concentrate around 0.5
    x = torch.tensor(np.concatenate([x_po, x_bg]), dtype=torch.float32)[:, None]
    label = torch.tensor(np.r_[np.ones(100), -np.ones(500)], dtype=torch.int64)[:, None]
    source = torch.tensor([PO] * 100 + [BG] * 500)
    net = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(net.parameters(), lr=0.03)
    for _ in range(200):
        opt.zero_grad()
        loss = combined_loss(net(x), label, source, po_loss="deepmaxent")
        loss.backward()
        opt.step()
    grid = net(torch.tensor([[-0.8], [0.5], [0.95]])).detach()[:, 0]
    assert grid[1] > grid[0] + 1 and grid[1] > grid[2]


def test_species_loss_takes_deepmaxent_from_the_configuration() -> None:
    logits = torch.randn(6, 3)
    label = torch.tensor([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [-1, -1, -1], [-1, -1, -1], [-1, -1, -1]])
    source = torch.tensor([PO, PO, PO, BG, BG, BG])
    loss = SpeciesLoss(TrainConfig(po_loss="deepmaxent"))(logits, label, source)
    assert torch.isclose(loss, deepmaxent_loss(logits, label, source))


def _spec(n_species: int = 3, members: int = 1) -> ModelSpec:
    return ModelSpec(
        model=ModelConfig(env_hidden=8, fusion_hidden=8),
        modalities={"env": (5, 1, 1)},
        species=[f"s{i}" for i in range(n_species)],
        norm=NormStats(env_mean=[0.0] * 4, env_std=[1.0] * 4),
        env_from_point=True,
        members=members,
    )


def test_an_ensemble_is_the_mean_of_its_members_logits_and_one_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    members = [SpeciesNet.from_spec(_spec()).eval() for _ in range(3)]
    paths = [save_model(tmp_path / f"m{i}.pt", m, _spec()) for i, m in enumerate(members)]
    ensemble, spec = load_ensemble(paths)
    assert isinstance(ensemble, SpeciesEnsemble) and spec.members == 3
    env = torch.randn(7, 5, 1, 1)
    expected = torch.stack([m(env=env) for m in members]).mean(0)
    torch.testing.assert_close(ensemble(env=env), expected)
    # the dense path (a whole tile at once) averages the same way
    tile = torch.randn(5, 4, 6)
    torch.testing.assert_close(
        ensemble.dense_forward(env_tile=tile), torch.stack([m.dense_forward(env_tile=tile) for m in members]).mean(0)
    )
    saved = save_model(tmp_path / "ensemble.pt", ensemble, spec)
    again, again_spec = load_model(saved)
    assert again_spec.members == 3
    torch.testing.assert_close(again(env=env), expected)
    # members of different models are refused by name
    other = save_model(tmp_path / "other.pt", SpeciesNet.from_spec(_spec(4)), _spec(4))
    with pytest.raises(ValueError, match=r"other\.pt: not a member of the same ensemble"):
        load_ensemble([paths[0], other])


def test_robust_scaling_is_median_and_iqr_not_moved_by_outliers(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 4000
    env_point = np.stack([rng.normal(10, 2, n), rng.lognormal(6, 1, n)], axis=1).astype("float32")
    env_point[:5, 0] = 1e6  # a few absurd values (a no-data code not declared)
    path = write_training_set(
        tmp_path / "t.zarr",
        x=np.arange(n, dtype=float),
        y=np.zeros(n),
        label=np.ones((n, 1), "int8"),
        source=["po"] * n,
        species=["a"],
        env_point=env_point,
    )
    ds = open_training_set(path)
    robust = compute_stats(ds, np.arange(n), scaling="robust")
    standard = compute_stats(ds, np.arange(n))
    assert robust.env_mean[0] == pytest.approx(10, abs=0.15) and robust.env_std[0] == pytest.approx(2, rel=0.08)
    assert standard.env_std[0] > 1000  # the outliers own the standard deviation
    assert robust.env_mean[1] == pytest.approx(np.exp(6), rel=0.06)
    with pytest.raises(ValueError, match="scaling must be"):
        compute_stats(ds, np.arange(n), scaling="minmax")
