"""Run configuration: YAML, overrides, environment variables, and one-line errors."""

import json

import pytest

from geoplantnet.core.config import ConfigError, load_config


def test_defaults_and_yaml_round_trip(tmp_path):
    cfg = load_config(environ={})
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path, environ={}) == cfg
    assert json.loads(cfg.to_attrs()["geoplantnet_config"])["grid"]["resolution"] == 50.0


def test_precedence_yaml_env_cli(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("cube:\n  resolution: 40\nsim:\n  seed: 1\n")
    env = {"GEOPLANTNET__SIM__SEED": "7", "GEOPLANTNET__CUBE__CHUNK": "128", "UNRELATED": "x"}
    cfg = load_config(path, ["cube.resolution=30", "cluster.n_workers=3"], environ=env)
    assert (cfg.cube.resolution, cfg.sim.seed, cfg.cube.chunk, cfg.cluster.n_workers) == (30.0, 7, 128, 3)


def test_shipped_pipelines_validate():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "pipelines").glob("*.yaml")):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("text", "overrides", "match"),
    [
        ("cube: [1, 2\n", [], r"line \d+: malformed YAML"),
        ("- a\n- b\n", [], "top level must be a mapping"),
        ("cube:\n  resolutoin: 20\n", [], r"cube\.resolutoin: no such setting in cube; did you mean cube\.resolution"),
        ("cube:\n  resolution: -5\n", [], r"cube\.resolution: Input should be greater than 0"),
        ("", ["cluster.kind=address"], "needs cluster.address"),
        ("", ["nonsense"], "not key=value"),
        ("grid:\n  left: 4321005\n", [], "multiple of 10 m"),
    ],
)
def test_bad_config_is_one_line(tmp_path, text, overrides, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path, overrides, environ={})
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", environ={})
