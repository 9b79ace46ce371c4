"""Checks of Kubernetes manifests that can fail: core objects against a Kubernetes release's full schema
(``kubernetes-validate``, strict: an unknown field is an error), the dask-kubernetes custom resources against the
CRDs shipped in the installed operator package with their PodSpec resolved from that same schema, and every
container's command line against the programs of this environment (``dask worker``, ``geoplantnet map``, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import shutil
import sys
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "KUBERNETES_VERSION",
    "check_tree",
    "command_problem",
    "containers",
    "crd_validator",
    "is_custom",
    "validate_core",
    "validate_custom",
]

# A current Kubernetes release (the newest schema kubernetes-validate 1.37 ships)
KUBERNETES_VERSION = "1.37.0"
DASK_GROUP = "kubernetes.dask.org"
# where the operator's templates.yaml points for Kubernetes types (PodSpec, ServiceSpec); the schema it names (1.21)
# is not shipped in the wheel: the current release's definitions are served there instead
_K8S_PREFIX = "python://k8s_crd_resolver/schemata/"
_CRD_PREFIX = "python://dask_kubernetes/operator/customresources/"


def is_custom(doc: Mapping[str, Any]) -> bool:
    """Whether ``doc`` is a dask-kubernetes custom resource (DaskCluster, DaskWorkerGroup, DaskAutoscaler, DaskJob)."""
    return str(doc.get("apiVersion", "")).startswith(f"{DASK_GROUP}/")


def validate_core(doc: Mapping[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``doc`` is valid against the strict schema of
    :data:`KUBERNETES_VERSION`."""
    import kubernetes_validate

    kubernetes_validate.validate(dict(doc), KUBERNETES_VERSION, strict=True)


@functools.cache
def _definitions() -> dict[str, Any]:
    import importlib.resources

    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    doc = json.loads((folder / f"v{KUBERNETES_VERSION}-local-strict" / "_definitions.json").read_text())
    # the operator's templates say #/definitions/<type>; the definitions' own references say #/$defs/<type>
    return {**doc, "definitions": doc["$defs"]}


@functools.cache
def crd_validator(kind: str) -> Any:
    """A validator of ``kind`` (``DaskCluster``, ...) from the operator package's CRD, every ``$ref`` resolved: the
    operator's templates and the Kubernetes types (PodSpec, ServiceSpec) of the current release, not stubbed."""
    import jsonschema
    from dask_kubernetes.operator import customresources
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    folder = Path(customresources.__path__[0])

    def retrieve(uri: str) -> Resource:
        if uri.startswith(_CRD_PREFIX):
            return Resource.from_contents(yaml.safe_load((folder / uri.rsplit("/", 1)[1]).read_text()), DRAFT7)
        if uri.startswith(_K8S_PREFIX) or uri == _definitions()["$id"]:
            return Resource.from_contents(_definitions())
        raise LookupError(f"no schema at {uri}")

    crd = yaml.safe_load((folder / f"{kind.lower()}.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft7Validator(schema, registry=Registry(retrieve=retrieve))


def validate_custom(doc: Mapping[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless the custom resource ``doc`` is valid against its CRD, and its
    metadata against the Kubernetes ObjectMeta."""
    import jsonschema

    crd_validator(doc["kind"]).validate(dict(doc))
    # the CRDs leave the top-level metadata to the API server: ObjectMeta, resolved within the definitions document
    meta = {**_definitions(), "$ref": "#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
    jsonschema.Draft202012Validator(meta).validate(doc.get("metadata", {}))


def containers(doc: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container (and init container) anywhere in ``doc``, with where it is (``Job/geoplantnet-map/...``)."""
    if isinstance(doc, Mapping):
        if not where and "kind" in doc:
            where = f"{doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
        for key, value in doc.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for c in value:
                    yield f"{where}/{key}/{c.get('name', '?')}", c
            else:
                yield from containers(value, f"{where}/{key}")
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from containers(item, f"{where}[{i}]")


def _dask_problem(sub: str, args: list[str]) -> str | None:
    import click

    found = [e for e in entry_points(group="dask_cli") if e.name == sub]
    if not found:
        return f"'dask {sub}' is not a dask command here"
    try:
        found[0].load().make_context(f"dask {sub}", list(args))  # parses and checks, runs nothing
    except click.ClickException as exc:
        return f"dask {sub}: {exc.format_message()}"
    return None


def _argparse_problem(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit:
        lines = err.getvalue().strip().splitlines() or ["refused"]
        return f"{parser.prog} {' '.join(argv)}: {lines[-1]}"
    return None


def command_problem(container: Mapping[str, Any], parsers: Mapping[str, argparse.ArgumentParser]) -> str | None:
    """What is wrong with the container's command line in this environment (None: nothing): the program is not on
    the environment's PATH, or its sub-command or an argument is one it does not accept. ``dask`` sub-commands are
    checked with their own click parsers; the programs of ``parsers`` (``{"geoplantnet": build_parser()}``) with
    theirs. Nothing is run."""
    argv = [*container.get("command", []), *container.get("args", [])]
    if not argv:
        return "no command: the image's entry point would run instead"
    program, rest = argv[0], [str(a) for a in argv[1:]]
    if shutil.which(program, path=f"{Path(sys.executable).parent}") is None:
        return f"{program} is not installed in this environment"
    if program == "dask":
        return _dask_problem(rest[0], rest[1:]) if rest else "dask without a sub-command"
    if program in parsers:
        return _argparse_problem(parsers[program], rest)
    return f"{program}: no parser known to check its arguments"


def check_tree(folder: Path) -> list[str]:
    """Every problem of the container command lines in a tree ``geoplantnet deploy render`` wrote (``[]``: none),
    checked in this environment: run it inside an image to check the image (``python -m
    geoplantnet.testing.manifests deploy/kubernetes``)."""
    from geoplantnet.cli import build_parser

    parsers = {"geoplantnet": build_parser()}
    problems = []
    for path in sorted(Path(folder).rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            for where, container in containers(doc):
                problem = command_problem(container, parsers)
                if problem is not None:
                    problems.append(f"{path}: {where}: {problem}")
    return problems


if __name__ == "__main__":
    found = check_tree(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("deploy/kubernetes"))
    print("\n".join(found) or "every container command line parses in this environment")
    sys.exit(1 if found else 0)
