"""The species network: shapes per modality combination, dense tiles == per-pixel patches, spec round trip."""

import pytest
import torch

from geoplantnet.core.config import ModelConfig
from geoplantnet.models.species_net import ModelError, ModelSpec, SpeciesNet
from geoplantnet.samples.training_set import NormStats

CFG = ModelConfig(patch_size=8, env_patch_size=5, width=8, depth=2, series_hidden=8, env_hidden=8, fusion_hidden=16)
SHAPES = {"patch": (10, 8, 8), "series": (4, 4), "env": (6, 5, 5)}  # 2 seasons x 4 bands + 2 masks; 3 bands + mask


def _batch(shapes, n=3):
    g = torch.Generator().manual_seed(0)
    return {m: torch.randn(n, *s, generator=g) for m, s in shapes.items()}


@pytest.mark.parametrize("names", [("patch",), ("env",), ("series",), ("patch", "series", "env")])
def test_forward_shapes_per_modality_combination(names):
    shapes = {m: SHAPES[m] for m in names}
    net = SpeciesNet(CFG, 7, shapes)
    assert net(**_batch(shapes)).shape == (3, 7)
    assert set(net.encoders) == set(names)


def test_env_point_is_an_mlp():
    net = SpeciesNet(CFG, 5, {"env": (4, 1, 1)})
    assert net(env=torch.randn(2, 4, 1, 1)).shape == (2, 5)


@pytest.mark.parametrize("env_size", [1, 4, 5])
def test_dense_forward_equals_per_pixel_forward(env_size):
    torch.manual_seed(1)
    shapes = {"patch": (10, 8, 8), "series": (4, 4), "env": (6, env_size, env_size)}
    net = SpeciesNet(CFG, 7, shapes)
    for m in net.modules():  # non-trivial BatchNorm statistics, so the eval-mode equality is not vacuous
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    h, w, p, e = 5, 6, 8, env_size
    patch_tile = torch.randn(10, h + p - 1, w + p - 1)
    series_tile = torch.randn(4, 4, h, w)
    env_tile = torch.randn(6, h + e - 1, w + e - 1)
    with torch.no_grad():
        dense = net.dense_forward(patch_tile, series_tile, env_tile, series_chunk=7)
        assert dense.shape == (7, h, w)
        for i in range(h):
            for j in range(w):
                one = net(
                    patch=patch_tile[None, :, i : i + p, j : j + p],
                    series=series_tile[None, :, :, i, j],
                    env=env_tile[None, :, i : i + e, j : j + e],
                )[0]
                torch.testing.assert_close(dense[:, i, j], one, atol=1e-4, rtol=1e-4)


def test_dense_forward_rejects_mismatched_halos():
    net = SpeciesNet(CFG, 3, {"patch": SHAPES["patch"], "env": SHAPES["env"]}).eval()
    with pytest.raises(ModelError, match="halos"):
        net.dense_forward(torch.randn(10, 12, 12), None, torch.randn(6, 10, 10))


def test_bad_configurations_give_clear_errors():
    with pytest.raises(ModelError, match=r"model.patch_size=8"):
        SpeciesNet(CFG, 3, {"patch": (10, 16, 16)})
    with pytest.raises(ModelError, match="depth"):
        SpeciesNet(CFG.model_copy(update={"depth": 4}), 3, {"patch": (10, 8, 8)})
    with pytest.raises(ModelError, match="subset"):
        SpeciesNet(CFG, 3, {"radar": (2, 8, 8)})
    net = SpeciesNet(CFG, 3, {"patch": (10, 8, 8)})
    with pytest.raises(ModelError, match="needs a 'patch'"):
        net(env=torch.randn(1, 6, 5, 5))
    with pytest.raises(ModelError, match="channels"):
        net(patch=torch.randn(1, 9, 8, 8))


def test_spec_json_round_trip_rebuilds_the_same_architecture():
    spec = ModelSpec(model=CFG, modalities=SHAPES, species=["a", "b"], norm=NormStats(env_mean=[0.0], env_std=[1.0]))
    again = ModelSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    assert again.halo("patch") == (4, 3) and again.halo("env") == (2, 2) and again.halo("series") == (0, 0)
    a, b = SpeciesNet.from_spec(spec), SpeciesNet.from_spec(again)
    assert a.state_dict().keys() == b.state_dict().keys()
