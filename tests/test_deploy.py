"""The Kubernetes deployment (``geoplantnet deploy render``): every manifest against the full schemas, the overlays as
``kubectl kustomize`` renders them, every container's command line against this environment's programs, and the
committed example tree kept equal to what the command writes now."""

import copy
import datetime
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from geoplantnet.cli import build_parser
from geoplantnet.core.config import ConfigError, load_config
from geoplantnet.runs.deploy import render_deploy, render_files
from geoplantnet.runtime.kubernetes import container_commands, scheduler_address
from geoplantnet.storage.outputs import MARKER
from geoplantnet.testing.cli import run_cli
from geoplantnet.testing.manifests import (
    check_tree,
    command_problem,
    containers,
    is_custom,
    validate_core,
    validate_custom,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "pipelines" / "kubernetes.yaml"
COMMITTED = ROOT / "deploy" / "kubernetes"


@pytest.fixture(scope="module")
def cfg():
    return load_config(EXAMPLE, environ={})


@pytest.fixture(scope="module")
def files(cfg, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # cluster.kubernetes.files are read from the working directory
        return render_files(cfg)


def _documents(files: dict[str, str]) -> list[dict]:
    return [
        d for path, text in files.items() if not path.endswith("kustomization.yaml") for d in yaml.safe_load_all(text)
    ]


def _validate(doc: dict) -> None:
    (validate_custom if is_custom(doc) else validate_core)(doc)


def test_every_manifest_validates_against_the_full_schemas(files):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the example with the optional shared volume too: its claim and mounts validated as well
        volume = render_files(load_config(EXAMPLE, ["cluster.kubernetes.volume.claim=geoplantnet-data"], environ={}))
    docs = _documents(files) + _documents(volume)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == sorted(
        ["Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "PersistentVolumeClaim", "DaskCluster",
         "DaskAutoscaler", "DaskWorkerGroup", "Job", "CronJob"]
    )  # fmt: skip
    for doc in docs:
        _validate(doc)


def test_the_default_configuration_renders_a_valid_deployment():
    """The default configuration's paths are local: rendered with the shared volume they need (refused without)."""
    docs = _documents(render_files(load_config(overrides=["cluster.kubernetes.volume.claim=data"], environ={})))
    parsers = _parsers()
    for doc in docs:
        _validate(doc)
        for where, container in containers(doc):
            assert command_problem(container, parsers) is None, where
    cron = _one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert "store.root=outputs" in cron["args"] and cron["workingDir"] == "/data"  # the shared volume's outputs/


def _one(docs: list[dict], kind: str) -> dict:
    return copy.deepcopy(next(d for d in docs if d["kind"] == kind))


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Job", ("spec", "backoffLimit"), "six"),
        ("Job", ("spec", "template", "spec", "containers", 0, "comand"), ["geoplantnet"]),  # a PodSpec typo
        ("CronJob", ("spec", "startingDeadlineSeconds"), "1h"),
        ("RoleBinding", ("roleRef",), {"name": "x"}),
        ("DaskCluster", ("spec", "worker", "spec", "containers", 0, "resources", "limitz"), {}),  # resolved PodSpec
        ("DaskCluster", ("spec", "scheduler", "service", "ports", 0, "port"), "tcp"),  # resolved ServiceSpec
        ("DaskWorkerGroup", ("spec", "worker", "spec", "tolerations"), "nvidia.com/gpu"),
        ("DaskAutoscaler", ("spec", "maximum"), "many"),
        ("DaskCluster", ("metadata", "labels"), {"app": 1}),
    ],
)
def test_a_broken_manifest_fails_validation(files, kind, path, value):
    doc = _one(_documents(files), kind)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        _validate(doc)


def _parsers() -> dict:
    return {"geoplantnet": build_parser()}


def test_every_container_command_exists_with_its_flags(files):
    parsers = _parsers()
    seen = {}
    for doc in _documents(files):
        for where, container in containers(doc):
            seen[where] = container["command"][:2]
            assert command_problem(container, parsers) is None, where
    programs = {tuple(c) for c in seen.values()}
    assert {
        ("dask", "scheduler"),
        ("dask", "worker"),
        ("geoplantnet", "refresh"),
        ("geoplantnet", "impact"),
    } <= programs


def test_the_committed_tree_checks_in_this_environment_and_a_broken_one_does_not(tmp_path):
    assert check_tree(COMMITTED) == []
    shutil.copytree(COMMITTED, tmp_path / "tree")
    jobs = tmp_path / "tree" / "base" / "jobs.yaml"
    jobs.write_text(jobs.read_text().replace("- --quiet", "- --quite", 1))
    (problem,) = check_tree(tmp_path / "tree")
    assert "Job/geoplantnet-sdm" in problem and "--quite" in problem


def test_cluster_spec_prints_the_deployments_dask_cluster():
    result = run_cli("cluster", "spec", "-c", EXAMPLE, cwd=ROOT)
    assert result.returncode == 0
    assert yaml.safe_load(result.stdout) == yaml.safe_load((COMMITTED / "base" / "daskcluster.yaml").read_text())


@pytest.mark.parametrize(
    ("command", "args", "problem"),
    [
        (["dask-worker"], [], "not installed"),  # the scripts distributed 2026 no longer installs
        (["dask", "wroker"], [], "not a dask command"),
        (["dask", "worker"], ["--nthread", "4"], "dask worker"),
        (["dask", "scheduler"], ["--dashboard-adress", ":8787"], "dask scheduler"),
        (["dask", "worker"], ["--nthreads", "four"], "dask worker"),
        (["geoplantnet", "mapp"], ["--config", "x.yaml"], "geoplantnet"),
        (["geoplantnet", "map"], ["--modle", "m.pt"], "unrecognized"),
        (["geoplantnet", "refresh"], ["--year", "lastyear"], "lastyear"),
        ([], [], "no command"),
    ],
)
def test_a_broken_command_fails_the_check(files, command, args, problem):
    job = _one(_documents(files), "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    container.update(command=command, args=args)
    found = command_problem(container, _parsers())
    assert found is not None and problem in found


def test_container_commands_are_the_manifests(cfg, files):
    lines = container_commands(cfg.cluster)
    assert lines["scheduler"][:2] == ["dask", "scheduler"]
    assert lines["worker"][:2] == lines["gpu-worker"][:2] == ["dask", "worker"]
    assert "GPU=1" in lines["gpu-worker"] and "GPU=1" not in lines["worker"]
    map_job = next(d for d in _documents(files) if d["metadata"]["name"] == "geoplantnet-map")
    container = map_job["spec"]["template"]["spec"]["containers"][0]
    assert lines["map"] == [*container["command"], *container["args"]]
    assert scheduler_address(cfg.cluster.kubernetes) in lines["map"]


def test_the_committed_tree_is_what_deploy_render_writes(files):
    committed = {
        str(p.relative_to(COMMITTED)): p.read_text() for p in COMMITTED.rglob("*") if p.is_file() and p.name != MARKER
    }
    assert committed == files, (
        "re-render: geoplantnet deploy render -c pipelines/kubernetes.yaml --out deploy/kubernetes --overwrite"
    )


def test_credentials_only_from_secrets(cfg, files, tmp_path):
    for doc in _documents(files):
        for where, container in containers(doc):
            assert "env" not in container, where  # no value of anything: only envFrom the Secrets
            if not where.endswith("scheduler"):
                assert container["envFrom"] == [{"secretRef": {"name": "geoplantnet-credentials"}}], where
    secret = "AKIA-not-in-any-manifest"
    cfg2 = load_config(EXAMPLE, [f"store.storage_options.key={secret}"], environ={})
    with pytest.MonkeyPatch.context() as mp, pytest.raises(ConfigError) as refused:
        mp.chdir(ROOT)
        render_files(cfg2)  # refused: the pods would read <redacted>, and the value never goes into a manifest
    assert "store.storage_options.key" in str(refused.value) and secret not in str(refused.value)


def test_the_config_maps_pipeline_is_the_configuration(cfg, files, tmp_path):
    """The drivers load the ConfigMap's pipeline.yaml: it must be the rendered configuration, nothing redacted away."""
    (config_map,) = yaml.safe_load_all(files["base/configmap.yaml"])
    path = tmp_path / "pipeline.yaml"
    path.write_text(config_map["data"]["pipeline.yaml"])
    assert load_config(path, environ={}) == cfg
    assert config_map["data"]["scenario.yaml"] == (ROOT / cfg.cluster.kubernetes.files["scenario.yaml"]).read_text()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_overlays_render_with_kustomize(cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    render_deploy(cfg, tmp_path / "tree")
    k = cfg.cluster.kubernetes
    rendered = {}
    for overlay in ("cpu", "gpu", "dev"):
        out = subprocess.run(
            ["kubectl", "kustomize", str(tmp_path / "tree" / "overlays" / overlay)],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        docs = list(yaml.safe_load_all(out.stdout))
        for doc in docs:  # what kubectl applies, validated as well
            _validate(doc)
        assert all(doc["metadata"].get("namespace") == k.namespace for doc in docs if doc["kind"] != "Namespace")
        rendered[overlay] = docs
    cpu, gpu, dev = rendered["cpu"], rendered["gpu"], rendered["dev"]
    assert not [d for d in cpu if d["kind"] == "DaskWorkerGroup"] and "nvidia.com/gpu:" not in yaml.safe_dump_all(cpu)
    (group,) = [d for d in gpu if d["kind"] == "DaskWorkerGroup"]
    pod = group["spec"]["worker"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["containers"][0]["image"] == k.gpu_image and "GPU=1" in pod["containers"][0]["args"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert group["spec"]["cluster"] == k.name
    cluster = _one(dev, "DaskCluster")
    assert 1 <= cluster["spec"]["worker"]["replicas"] <= 2
    assert 1 <= _one(dev, "DaskAutoscaler")["spec"]["maximum"] <= 2
    assert cluster["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "4Gi"
    assert _one(cpu, "DaskCluster")["spec"]["worker"]["replicas"] == k.workers.replicas
    cron = _one(cpu, "CronJob")["spec"]
    assert cron["concurrencyPolicy"] == "Forbid" and cron["startingDeadlineSeconds"] > 0
    assert cron["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 0
    jobs = [d for d in cpu if d["kind"] == "Job"]
    assert sorted(j["metadata"]["name"].removeprefix(f"{k.name}-") for j in jobs) == sorted(k.jobs.commands)
    assert all(j["spec"]["suspend"] for j in jobs)  # started one at a time, on purpose


def test_deploy_render_refuses_a_users_folder_and_bad_settings(tmp_path):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    big = tmp_path / "footprint.geojson"
    big.write_text("x" * 600_000)
    for args, message in [
        (["--out", users], "did not write"),
        (["--out", tmp_path / "a", "--set", "cluster.kubernetes.workers.memory=lots"], "Kubernetes quantity"),
        (["--out", tmp_path / "b", "--set", "cluster.kubernetes.name=Geo_Plant"], "cluster.kubernetes.name"),
        (["--out", tmp_path / "c", "--set", "workdir=work"], "workdir=work: a local path, and the pods share no disk"),
        (["--out", tmp_path / "d", "--set", "cluster.kubernetes.refresh.store_root=/data/x"], "refresh.store_root"),
        (["--out", tmp_path / "e", "--set", "cluster.kubernetes.files.x=missing.yaml"], "cannot read missing.yaml"),
        (["--out", tmp_path / "f", "--set", "cluster.kubernetes.jobs.args.impact=[]"], "needs args.impact"),
        # a setting the ConfigMap would carry as <redacted>: the pods would fail on it
        (["--out", tmp_path / "g", "--set", 'store.storage_options={"secret": "x"}'], "storage_options.secret"),
        (["--out", tmp_path / "h", "--set", f"cluster.kubernetes.files.big={big}"], "too much for a ConfigMap"),
    ]:
        result = run_cli("deploy", "render", "-c", EXAMPLE, *args, cwd=ROOT)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
            args
        )
    assert (users / "notes.txt").read_text() == "mine" and sorted(p.name for p in users.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "a").exists()
    # its own earlier tree: replaced with --overwrite only
    ok = run_cli("deploy", "render", "-c", EXAMPLE, "--out", tmp_path / "t", "--overlay", "dev", cwd=ROOT)
    assert ok.returncode == 0 and sorted(p.name for p in (tmp_path / "t" / "overlays").iterdir()) == ["dev"]
    again = run_cli("deploy", "render", "-c", EXAMPLE, "--out", tmp_path / "t", cwd=ROOT)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert run_cli("deploy", "render", "-c", EXAMPLE, "--out", tmp_path / "t", "--overwrite", cwd=ROOT).returncode == 0


def test_refresh_year_last_is_the_year_before_now():
    args = build_parser().parse_args(["refresh", "--year", "last"])
    assert args.year == datetime.datetime.now(datetime.UTC).year - 1
    assert build_parser().parse_args(["refresh", "--year", "2024"]).year == 2024
