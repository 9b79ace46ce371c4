"""The Kubernetes objects of a deployment, built once from the typed configuration (``cluster.kubernetes``).

The one home of every manifest: the ``DaskCluster`` that ``cluster.kind=kubernetes`` asks the operator for
(:func:`dask_cluster`, through :func:`geoplantnet.runtime.cluster.kubernetes_spec`), and the Kustomize tree that
``geoplantnet deploy render`` writes (:func:`kustomize_tree`): a base (Namespace, ServiceAccount and RBAC, the
pipeline's ConfigMap, the shared volume's claim (if any), the DaskCluster with its CPU workers and autoscaler, a
suspended driver Job per command, the annual refresh's CronJob) and the overlays ``cpu``, ``gpu`` (a GPU worker
group) and ``dev`` (small).

The containers' commands are the project's own entry points, ``dask scheduler``, ``dask worker`` and ``geoplantnet
<command>`` (:func:`container_commands`): ``command`` is always set, so a pod never depends on the image's entry
point (the image has none: deploy/containers/Containerfile).
Credentials only come from Secrets (``envFrom``); no value of one is ever written here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from geoplantnet.core.config import ClusterConfig, KubernetesConfig, Toleration, WorkerGroupConfig

__all__ = [
    "OVERLAYS",
    "container_commands",
    "dask_cluster",
    "driver_job",
    "dump_yaml",
    "kustomize_tree",
    "refresh_cronjob",
    "scheduler_address",
]

Manifest = dict[str, Any]

SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
WORKER_DASHBOARD_PORT = 8788
OVERLAYS = ("cpu", "gpu", "dev")
# The dev overlay: a cluster small enough for a laptop's kind/minikube or a shared namespace.
DEV_WORKERS = 2
DEV_RESOURCES = {"cpu": "1", "memory": "4Gi"}
PIPELINE_KEY = "pipeline.yaml"
_LABELS = {"app.kubernetes.io/name": "geoplantnet", "app.kubernetes.io/managed-by": "geoplantnet-deploy"}


def scheduler_address(k: KubernetesConfig) -> str:
    """The DaskCluster's scheduler Service as the drivers reach it (the operator names it ``<name>-scheduler``)."""
    return f"tcp://{k.name}-scheduler.{k.namespace}.svc.cluster.local:{SCHEDULER_PORT}"


def _meta(k: KubernetesConfig, name: str, **labels: str) -> Manifest:
    return {"name": name, "namespace": k.namespace, "labels": {**_LABELS, **labels}}


def _env_from(k: KubernetesConfig) -> list[Manifest]:
    # every key of each Secret becomes an environment variable (AWS_ACCESS_KEY_ID, ...): no value in any manifest
    return [{"secretRef": {"name": s}} for s in k.env_from]


def _quantities(cpu: str, memory: str, gpu: bool = False) -> Manifest:
    # request = limit: a worker's memory limit is what Dask's own memory management reads from the cgroup
    limits = {"cpu": cpu, "memory": memory, **({"nvidia.com/gpu": "1"} if gpu else {})}
    return {"requests": dict(limits), "limits": limits}


def _mounts(k: KubernetesConfig, *, config: bool) -> tuple[list[Manifest], list[Manifest]]:
    """The pod's volumes and the container's mounts: the shared volume (where pods run), the pipeline's ConfigMap."""
    volumes: list[Manifest] = []
    mounts: list[Manifest] = []
    if k.volume.claim is not None:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": k.volume.claim}})
        mounts.append({"name": "data", "mountPath": k.volume.mount_path})
    if config:
        volumes.append({"name": "pipeline", "configMap": {"name": k.config_map}})
        mounts.append({"name": "pipeline", "mountPath": k.config_path, "readOnly": True})
    return volumes, mounts


def _container(k: KubernetesConfig, name: str, image: str, command: list[str], args: list[str]) -> Manifest:
    container: Manifest = {
        "name": name,
        "image": image,
        "imagePullPolicy": k.image_pull_policy,
        "command": command,
        "args": args,
    }
    if k.env_from:
        container["envFrom"] = _env_from(k)
    if k.volume.claim is not None:
        container["workingDir"] = k.volume.mount_path  # relative paths of the pipeline: the same files on every pod
    return container


def _account(k: KubernetesConfig, *, driver: bool) -> Manifest:
    # only a driver talks to the API server (the operator's KubeCluster, cluster.kind=kubernetes): the scheduler and
    # the workers run without a token
    return {"serviceAccountName": k.service_account} if driver else {"automountServiceAccountToken": False}


def _toleration(t: Toleration) -> Manifest:
    found = {"key": t.taint, "operator": t.operator, "value": t.value, "effect": t.effect}
    return {name: value for name, value in found.items() if value is not None}


def _pod(k: KubernetesConfig, container: Manifest, *, driver: bool, group: WorkerGroupConfig | None = None) -> Manifest:
    volumes, mounts = _mounts(k, config=driver)
    if mounts:
        container = {**container, "volumeMounts": mounts}
    pod: Manifest = {**_account(k, driver=driver), "containers": [container]}
    if volumes:
        pod["volumes"] = volumes
    if group is not None and group.tolerations:
        pod["tolerations"] = [_toleration(t) for t in group.tolerations]
    if group is not None and group.node_selector:
        pod["nodeSelector"] = dict(group.node_selector)
    return pod


def worker_args(threads: int, *, gpu: bool) -> list[str]:
    """``dask worker``'s arguments: the operator sets ``DASK_WORKER_NAME`` and ``DASK_SCHEDULER_ADDRESS`` (read by
    ``dask worker`` when no address is given); the memory limit is the pod's (read from the cgroup)."""
    args = ["--name", "$(DASK_WORKER_NAME)", "--nthreads", str(threads), "--dashboard"]
    args += ["--dashboard-address", str(WORKER_DASHBOARD_PORT)]
    # one GPU per pod, advertised as the Dask resource the training and inference tasks ask for
    return [*args, "--resources", "GPU=1"] if gpu else args


def scheduler_args() -> list[str]:
    """``dask scheduler``'s arguments (its Service forwards these ports)."""
    return ["--host", "0.0.0.0", "--port", str(SCHEDULER_PORT), "--dashboard-address", f":{DASHBOARD_PORT}"]


def _worker(k: KubernetesConfig, group: WorkerGroupConfig, threads: int, *, gpu: bool) -> Manifest:
    image = k.gpu_image if gpu else k.image
    container = _container(k, "worker", image, ["dask", "worker"], worker_args(threads, gpu=gpu))
    container["resources"] = _quantities(group.cpu, group.memory, gpu=gpu)
    container["ports"] = [{"name": "http-dashboard", "containerPort": WORKER_DASHBOARD_PORT, "protocol": "TCP"}]
    return {"replicas": group.replicas, "spec": _pod(k, container, driver=False, group=group)}


def _scheduler(k: KubernetesConfig) -> Manifest:
    container = _container(k, "scheduler", k.image, ["dask", "scheduler"], scheduler_args())
    container.pop("envFrom", None)  # the scheduler reads no data: no credentials
    container.pop("workingDir", None)
    container["resources"] = _quantities(k.scheduler_cpu, k.scheduler_memory)
    container["ports"] = [
        {"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
        {"name": "http-dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"},
    ]
    probe = {"httpGet": {"port": "http-dashboard", "path": "/health"}}
    container["readinessProbe"] = {**probe, "initialDelaySeconds": 0, "periodSeconds": 1, "timeoutSeconds": 300}
    container["livenessProbe"] = {**probe, "initialDelaySeconds": 15, "periodSeconds": 20}
    pod = {**_account(k, driver=False), "containers": [container]}
    service = {
        "type": "ClusterIP",
        "selector": {"dask.org/cluster-name": k.name, "dask.org/component": "scheduler"},
        "ports": [
            {"name": "tcp-comm", "protocol": "TCP", "port": SCHEDULER_PORT, "targetPort": "tcp-comm"},
            {"name": "http-dashboard", "protocol": "TCP", "port": DASHBOARD_PORT, "targetPort": "http-dashboard"},
        ],
    }
    return {"spec": pod, "service": service}


def dask_cluster(cfg: ClusterConfig) -> Manifest:
    """The ``DaskCluster``: the scheduler and the CPU worker group (``cluster.kubernetes.workers``)."""
    k = cfg.kubernetes
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskCluster",
        "metadata": _meta(k, k.name),
        "spec": {
            "idleTimeout": 0,
            "worker": _worker(k, k.workers, cfg.threads_per_worker, gpu=False),
            "scheduler": _scheduler(k),
        },
    }


def gpu_worker_group(cfg: ClusterConfig) -> Manifest:
    """The GPU ``DaskWorkerGroup`` (``cluster.kubernetes.gpu_workers``) joining the DaskCluster's scheduler."""
    k = cfg.kubernetes
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskWorkerGroup",
        "metadata": _meta(k, f"{k.name}-gpu"),
        "spec": {"cluster": k.name, "worker": _worker(k, k.gpu_workers, cfg.threads_per_worker, gpu=True)},
    }


def autoscaler(k: KubernetesConfig) -> Manifest:
    """The ``DaskAutoscaler`` of the DaskCluster's (CPU) worker group."""
    spec = {"cluster": k.name, "minimum": k.autoscaler.minimum, "maximum": k.autoscaler.maximum}
    return {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskAutoscaler",
        "metadata": _meta(k, k.name),
        "spec": spec,
    }


def _rbac(k: KubernetesConfig) -> list[Manifest]:
    """The drivers' ServiceAccount, and what the operator's ``KubeCluster`` client does with it (``cluster.kind=
    kubernetes``): make and scale Dask resources, watch their pods and services, forward the dashboard."""
    dask_resources = ["daskclusters", "daskworkergroups", "daskworkergroups/scale", "daskautoscalers", "daskjobs"]
    rules = [
        {
            "apiGroups": ["kubernetes.dask.org"],
            "resources": dask_resources,
            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
        },
        {"apiGroups": [""], "resources": ["pods", "pods/log", "services", "events"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]},
    ]
    role = f"{k.service_account}-kubecluster"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(k, k.service_account)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(k, role), "rules": rules},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(k, role),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": k.service_account, "namespace": k.namespace}],
        },
    ]


def _config_map(k: KubernetesConfig, pipeline_yaml: str, files: Mapping[str, str]) -> Manifest:
    data = {PIPELINE_KEY: pipeline_yaml, **files}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(k, k.config_map), "data": data}


def _claim(k: KubernetesConfig) -> Manifest:
    spec: Manifest = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": k.volume.size}}}
    if k.volume.storage_class is not None:
        spec["storageClassName"] = k.volume.storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _meta(k, str(k.volume.claim)),
        "spec": spec,
    }


def driver_args(k: KubernetesConfig, extra: list[str] | None = None) -> list[str]:
    """A driver's arguments: the pipeline from the ConfigMap, the DaskCluster's scheduler, no progress bars in the
    pod's log (tests/test_deploy.py checks every argument against the command's parser)."""
    config = f"{k.config_path}/{PIPELINE_KEY}"
    return ["--config", config, "--scheduler", scheduler_address(k), "--quiet", *(extra or [])]


def _job_spec(k: KubernetesConfig, command: list[str], args: list[str], backoff: int, deadline: int) -> Manifest:
    container = _container(k, "driver", k.image, command, args)
    container["resources"] = _quantities(k.jobs.cpu, k.jobs.memory)
    pod = {**_pod(k, container, driver=True), "restartPolicy": "Never"}
    return {
        "backoffLimit": backoff,
        "activeDeadlineSeconds": deadline,
        # a pod evicted (node drained, preempted) does not count as a failure: its retry resumes the run
        "podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]},
        "template": {"metadata": {"labels": dict(_LABELS)}, "spec": pod},
    }


def driver_job(k: KubernetesConfig, command: str) -> Manifest:
    """The suspended ``Job`` running ``geoplantnet <command>`` against the DaskCluster (started with ``kubectl patch
    job <name> -p '{"spec":{"suspend":false}}'``: created running, every command would start at once)."""
    args = driver_args(k, k.jobs.args.get(command))
    spec = _job_spec(k, ["geoplantnet", command], args, k.jobs.backoff_limit, k.jobs.active_deadline_s)
    meta = _meta(k, f"{k.name}-{command}", **{"app.kubernetes.io/component": command})
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": {"suspend": True, **spec}}


def refresh_cronjob(k: KubernetesConfig, store_root: str) -> Manifest:
    """The annual refresh: ``geoplantnet refresh --year last`` (the calendar year before the run's date) into the
    series under ``store_root``; one run at a time (``Forbid``); a retried pod resumes the year."""
    r = k.refresh
    args = driver_args(k, ["--year", "last", "--set", f"store.root={store_root}"])
    job = _job_spec(k, ["geoplantnet", "refresh"], args, r.backoff_limit, r.active_deadline_s)
    meta = _meta(k, f"{k.name}-refresh", **{"app.kubernetes.io/component": "refresh"})
    spec = {
        "schedule": r.schedule,
        "timeZone": r.time_zone,
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": r.starting_deadline_s,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {"metadata": {"labels": dict(_LABELS)}, "spec": job},
    }
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta, "spec": spec}


def container_commands(cfg: ClusterConfig) -> dict[str, list[str]]:
    """The full command line (``command`` + ``args``) of the scheduler, the CPU and GPU workers and every driver, as
    the manifests run them: a cluster started in containers without Kubernetes uses exactly these (the operator sets
    ``DASK_SCHEDULER_ADDRESS`` and ``DASK_WORKER_NAME``; set them yourself there)."""
    k = cfg.kubernetes
    cluster = dask_cluster(cfg)
    scheduler = cluster["spec"]["scheduler"]["spec"]["containers"][0]
    worker = cluster["spec"]["worker"]["spec"]["containers"][0]
    gpu = gpu_worker_group(cfg)["spec"]["worker"]["spec"]["containers"][0]
    lines = {
        "scheduler": [*scheduler["command"], *scheduler["args"]],
        "worker": [*worker["command"], *worker["args"]],
        "gpu-worker": [*gpu["command"], *gpu["args"]],
    }
    for command in k.jobs.commands:
        c = driver_job(k, command)["spec"]["template"]["spec"]["containers"][0]
        lines[command] = [*c["command"], *c["args"]]
    return lines


def _kustomization(resources: list[str], **more: Any) -> Manifest:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": resources, **more}


def _replace(kind: str, name: str, ops: list[tuple[str, Any]]) -> Manifest:
    """A JSON 6902 patch (exact for custom resources, which strategic merge does not know)."""
    patch = [{"op": "replace", "path": path, "value": value} for path, value in ops]
    return {"target": {"kind": kind, "name": name}, "patch": dump_yaml([patch])}


def _dev_patches(cfg: ClusterConfig) -> list[Manifest]:
    k = cfg.kubernetes
    small = _quantities(DEV_RESOURCES["cpu"], DEV_RESOURCES["memory"])
    worker = "/spec/worker/spec/containers/0"
    patches = [
        _replace("DaskCluster", k.name, [("/spec/worker/replicas", 1), (f"{worker}/resources", small)]),
        _replace("DaskAutoscaler", k.name, [("/spec/minimum", 1), ("/spec/maximum", DEV_WORKERS)]),
    ]
    for command in k.jobs.commands:
        container = "/spec/template/spec/containers/0/resources"
        patches.append(_replace("Job", f"{k.name}-{command}", [(container, small)]))
    if k.refresh.enabled:
        patches.append(
            _replace(
                "CronJob", f"{k.name}-refresh", [("/spec/jobTemplate/spec/template/spec/containers/0/resources", small)]
            )
        )
    return patches


def kustomize_tree(
    cfg: ClusterConfig, pipeline_yaml: str, files: Mapping[str, str], refresh_root: str | None
) -> dict[str, list[Manifest]]:
    """Every file of the Kustomize tree (path -> its YAML documents): ``base/`` and ``overlays/{cpu,gpu,dev}/``.
    ``pipeline_yaml`` (redacted) and ``files`` fill the ConfigMap; ``refresh_root`` is where the CronJob's series live
    (None: no CronJob)."""
    k = cfg.kubernetes
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": k.namespace, "labels": dict(_LABELS)}}
    base: dict[str, list[Manifest]] = {
        "namespace.yaml": [namespace],
        "rbac.yaml": _rbac(k),
        "configmap.yaml": [_config_map(k, pipeline_yaml, files)],
        "daskcluster.yaml": [dask_cluster(cfg)],
        "autoscaler.yaml": [autoscaler(k)],
        "jobs.yaml": [driver_job(k, c) for c in k.jobs.commands],
    }
    if k.volume.claim is not None and k.volume.create:
        base["volume.yaml"] = [_claim(k)]
    if refresh_root is not None:
        base["refresh-cronjob.yaml"] = [refresh_cronjob(k, refresh_root)]
    tree = {f"base/{name}": docs for name, docs in base.items()}
    tree["base/kustomization.yaml"] = [_kustomization(sorted(base))]
    up = ["../../base"]
    tree["overlays/cpu/kustomization.yaml"] = [_kustomization(up)]
    tree["overlays/gpu/gpu-workers.yaml"] = [gpu_worker_group(cfg)]
    tree["overlays/gpu/kustomization.yaml"] = [_kustomization([*up, "gpu-workers.yaml"])]
    tree["overlays/dev/kustomization.yaml"] = [_kustomization(up, patches=_dev_patches(cfg))]
    return tree


class _NoAliases(yaml.SafeDumper):
    # a dict used twice (a dev patch's resources) is written out twice, not as a YAML anchor and alias
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _block_text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    # several lines (the pipeline YAML, a patch) as a literal block, readable in the file as it is
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_NoAliases.add_representer(str, _block_text)


def dump_yaml(documents: list[Manifest]) -> str:
    """YAML documents as ``kubectl`` reads them (``---`` between them, keys in the order built)."""
    return yaml.dump_all(documents, Dumper=_NoAliases, sort_keys=False, default_flow_style=False)
