"""deploy/: every YAML document under deploy/kubernetes/ is a valid Kubernetes object, and the
manifests and the Dockerfile agree with what zerobatch really serves.

Core objects are validated with kubernetes-validate (strict: no unknown fields) against
Kubernetes K8S_VERSION, the oldest version the manifests are written for. Its schemas have no
custom resources, and no package of a registry here ships the CRDs' OpenAPI schemas cheaply,
so the KEDA ScaledObject, the ServiceMonitor and KServe's ServingRuntime and InferenceService
are checked against the structure their CRDs require, field by field, below (docs/deploy.md
says so). Then what matters: the probes name zerobatch's real paths and ports, the flags given
to the entrypoint exist, the grace period outlasts zerobatch's drain, the container runs as
a non-root user, and the autoscaling query names the metric zerobatch exports. Last, the
entrypoint's choices that need no process: its paths, what it passes on, its warning."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from zerobatch import container, ts_config
from zerobatch.api import cli

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
#: the Kubernetes version the manifests are validated against (and written for)
K8S_VERSION = "1.30.0"
QUEUE_METRIC = "zerobatch_queue_depth"


def documents() -> list[tuple[str, dict]]:
    """(file:kind/name, object) for every YAML document under deploy/kubernetes/."""
    found = []
    for path in sorted(KUBERNETES.rglob("*.y*ml")):
        with open(path, encoding="utf-8") as handle:
            for data in yaml.safe_load_all(handle):
                if data is None:
                    continue
                name = data.get("metadata", {}).get("name", "?")
                found.append((f"{path.relative_to(KUBERNETES)}:{data.get('kind')}/{name}", data))
    return found


DOCUMENTS = documents()


def the(kind: str, name: str | None = None) -> dict:
    matches = [data for _, data in DOCUMENTS
               if data["kind"] == kind and name in (None, data["metadata"]["name"])]
    assert len(matches) == 1, f"{len(matches)} {kind} {name or ''}"
    return matches[0]


# ---------------------------------------------------------------- custom resources

def require(data: dict, path: str, kind: type | tuple[type, ...] = object):
    """The value at the dotted path, which must be there and of the given type."""
    value = data
    for key in path.split("."):
        assert isinstance(value, dict) and key in value, f"missing {path}"
        value = value[key]
    assert isinstance(value, kind), f"{path}: {type(value).__name__}, wanted {kind}"
    return value


def check_scaled_object(data: dict) -> None:
    """keda.sh/v1alpha1 ScaledObject: scaleTargetRef.name and triggers[] with type and
    metadata required; the prometheus scaler needs serverAddress, query and threshold (strings:
    the CRD types every metadata value as a string)."""
    require(data, "spec.scaleTargetRef.name", str)
    for key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
        assert isinstance(data["spec"].get(key, 0), int), key
    triggers = require(data, "spec.triggers", list)
    assert triggers
    for trigger in triggers:
        assert set(trigger) <= {"type", "metadata", "metricType", "name", "authenticationRef",
                                "useCachedMetrics"}
        assert trigger.get("metricType", "AverageValue") in {"AverageValue", "Value",
                                                             "Utilization"}
        metadata = require(trigger, "metadata", dict)
        assert all(isinstance(value, str) for value in metadata.values())
        if require(trigger, "type", str) == "prometheus":
            assert {"serverAddress", "query", "threshold"} <= set(metadata)
            float(metadata["threshold"])


def check_service_monitor(data: dict) -> None:
    """monitoring.coreos.com/v1 ServiceMonitor: a selector and endpoints naming a port."""
    require(data, "spec.selector.matchLabels", dict)
    for endpoint in require(data, "spec.endpoints", list):
        assert set(endpoint) <= {"port", "path", "interval", "scheme", "scrapeTimeout"}
        require(endpoint, "port", str)


def check_serving_runtime(data: dict) -> None:
    """serving.kserve.io/v1alpha1 ServingRuntime: containers (a name and an image each),
    supportedModelFormats with a name, protocolVersions among KServe's."""
    containers = require(data, "spec.containers", list)
    assert containers
    for entry in containers:
        require(entry, "name", str)
        require(entry, "image", str)
        for port in entry.get("ports", []):
            require(port, "containerPort", int)
    for model_format in require(data, "spec.supportedModelFormats", list):
        require(model_format, "name", str)
        assert isinstance(model_format.get("autoSelect", False), bool)
        assert isinstance(model_format.get("priority", 1), int)
    assert set(require(data, "spec.protocolVersions", list)) <= {"v1", "v2", "grpc-v1",
                                                                 "grpc-v2"}


def check_inference_service(data: dict) -> None:
    """serving.kserve.io/v1beta1 InferenceService: spec.predictor.model with a modelFormat
    name, a runtime, a protocolVersion and a storageUri."""
    model = require(data, "spec.predictor.model", dict)
    require(model, "modelFormat.name", str)
    require(model, "runtime", str)
    assert require(model, "protocolVersion", str) in {"v1", "v2", "grpc-v2"}
    assert re.match(r"^(gs|s3|https?|pvc|hdfs|oci)://", require(model, "storageUri", str))


CUSTOM_RESOURCES = {
    ("keda.sh/v1alpha1", "ScaledObject"): check_scaled_object,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_service_monitor,
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): check_serving_runtime,
    ("serving.kserve.io/v1beta1", "InferenceService"): check_inference_service,
}


@pytest.mark.parametrize("data", [data for _, data in DOCUMENTS],
                         ids=[name for name, _ in DOCUMENTS])
def test_every_document_is_valid(data):
    assert set(data) <= {"apiVersion", "kind", "metadata", "spec", "data"}
    require(data, "metadata.name", str)
    check = CUSTOM_RESOURCES.get((data["apiVersion"], data["kind"]))
    if check is not None:
        check(data)
    else:  # raises ValidationError (strict: unknown fields too) or SchemaNotFoundError
        kubernetes_validate.validate(data, K8S_VERSION, strict=True)


def test_the_manifests_hold_what_the_task_needs():
    kinds = sorted(data["kind"] for _, data in DOCUMENTS)
    for kind in ("ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                 "PersistentVolumeClaim", "ScaledObject", "HorizontalPodAutoscaler",
                 "ServiceMonitor", "ServingRuntime", "InferenceService"):
        assert kind in kinds


def strategic_merge(target: dict, patch: dict) -> dict:
    """kubectl's strategic merge, as far as the GPU patch needs it: maps merge key by key,
    and a list of named objects (containers) merges item by item on `name`."""
    merged = dict(target)
    for key, value in patch.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            merged[key] = strategic_merge(old, value)
        elif (isinstance(value, list) and isinstance(old, list) and value
              and all(isinstance(item, dict) and "name" in item for item in value + old)):
            by_name = {item["name"]: item for item in old}
            for item in value:
                by_name[item["name"]] = strategic_merge(by_name.get(item["name"], {}), item)
            merged[key] = list(by_name.values())
        else:
            merged[key] = value
    return merged


def test_the_gpu_patch_gives_a_valid_deployment_with_one_gpu():
    with open(ROOT / "deploy" / "gpu" / "deployment-patch.yaml", encoding="utf-8") as handle:
        patch = yaml.safe_load(handle)
    deployment = strategic_merge(the("Deployment"), patch)
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["memory"] == "8Gi"  # merged, not replaced
    assert container["startupProbe"] and container["image"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        pod["tolerations"]


def test_validation_catches_a_wrong_field():
    """The validator is strict: a misspelt field of a Deployment is an error."""
    bad = yaml.safe_load(yaml.safe_dump(the("Deployment")))
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# ---------------------------------------------------------------- what zerobatch serves

def served_config() -> dict:
    """The settings of the ConfigMap's config.properties, as zerobatch reads them."""
    text = the("ConfigMap", "zerobatch-config")["data"]["config.properties"]
    return ts_config.configure(ts_config.parse_properties(text), "config.properties",
                               {}).settings


def container_spec() -> dict:
    return the("Deployment")["spec"]["template"]["spec"]["containers"][0]


def container_ports() -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container_spec()["ports"]}


def routes(module: str) -> set[str]:
    """The paths a falcon app of api/ adds routes for."""
    source = (ROOT / "api" / module).read_text(encoding="utf-8")
    return set(re.findall(r'add_route\(\s*"([^"]+)"', source))


def test_config_binds_the_ports_the_pod_declares():
    settings = served_config()
    ports = container_ports()
    assert (settings["host"], settings["http_port"]) == ("0.0.0.0", ports["http"])
    assert settings["management_address"] == f"http://0.0.0.0:{ports['management']}"
    assert settings["metrics_address"] == f"http://0.0.0.0:{ports['metrics']}"
    assert ports == {"http": 8080, "management": 8081, "metrics": 8082}


def test_probes_ask_zerobatch_real_paths_on_the_inference_port():
    spec = container_spec()
    inference = routes("http_app.py")
    for probe, path in (("startupProbe", "/ping"), ("livenessProbe", "/ping"),
                        ("readinessProbe", "/ready")):
        assert spec[probe]["httpGet"]["path"] == path
        assert path in inference
        assert container_ports()[spec[probe]["httpGet"]["port"]] == 8080
    runtime = the("ServingRuntime")["spec"]["containers"][0]
    assert runtime["livenessProbe"]["httpGet"] == {"path": "/ping", "port": 8080}
    assert runtime["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8080}


def test_service_and_scrape_reach_the_container_ports():
    service = the("Service")
    ports = container_ports()
    assert {p["name"]: (p["port"], ports[p["targetPort"]]) for p in service["spec"]["ports"]} \
        == {"http": (8080, 8080), "management": (8081, 8081), "metrics": (8082, 8082)}
    labels = the("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert the("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() \
        <= labels.items()
    monitor = the("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() \
        <= service["metadata"]["labels"].items()
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] \
        == [("metrics", "/metrics")]
    assert "/metrics" in routes("metrics_app.py")
    annotations = the("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) \
        == (str(ports["metrics"]), "/metrics")


def drain_s() -> float:
    """The longest zerobatch takes to stop after SIGTERM: in-flight batches, then its
    children's SIGTERM before SIGKILL (broker/loop.py, broker/supervisor.py)."""
    from zerobatch.broker import loop, supervisor
    stop_all = inspect.signature(supervisor.Supervisor.stop_all).parameters["grace_s"]
    return loop._SHUTDOWN_GRACE_S + stop_all.default


def test_grace_period_outlasts_the_drain():
    pod = the("Deployment")["spec"]["template"]["spec"]
    command = container_spec()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    assert drain_s() == 8.0
    # a second for the sockets' linger and the processes' exits
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s() + 1


def test_runs_as_non_root():
    pod = the("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    user = pod["securityContext"]["runAsUser"]
    assert user != 0
    security = container_spec()["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    runtime = the("ServingRuntime")["spec"]["containers"][0]["securityContext"]
    assert runtime["runAsNonRoot"] is True and runtime["runAsUser"] == user
    assert dockerfile_instructions("USER") == [f"{user}:{user}"]


def metric_names(query: str) -> set[str]:
    """The metric names of a PromQL query (identifiers followed by a selector or end)."""
    names = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", query))
    return names - {"sum", "avg", "max", "min", "by"}


def test_autoscaling_names_the_exported_queue_metric():
    source = (ROOT / "api" / "metrics_app.py").read_text(encoding="utf-8")
    assert f'GaugeMetricFamily("{QUEUE_METRIC}"' in source
    assert f"`{QUEUE_METRIC}`" in (ROOT / "docs" / "observability.md").read_text("utf-8")
    trigger = the("ScaledObject")["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert metric_names(trigger["metadata"]["query"]) == {QUEUE_METRIC}
    assert trigger["metadata"]["query"].startswith(f"sum({QUEUE_METRIC}")
    hpa = the("HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == QUEUE_METRIC
    rules = yaml.safe_load(the("ConfigMap", "prometheus-adapter")["data"]["config.yaml"])
    rule = rules["externalRules"][0]
    assert metric_names(rule["seriesQuery"]) == {QUEUE_METRIC}
    assert rule["name"]["as"] == QUEUE_METRIC
    for scaler in (the("ScaledObject"), hpa):
        target = scaler["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", "zerobatch")


def start_flags(args: list[str]):
    """The `zerobatch start` arguments the entrypoint would run, parsed by zerobatch's own
    parser (an unknown flag fails the test)."""
    parsed, flags = container.build_parser().parse_known_args(args)
    config, store = container.layout_paths(parsed, {})
    argv = container.start_argv(config, store, flags)
    start = argv[argv.index("start"):]
    return cli.build_parser().parse_args(start)


def test_the_entrypoint_arguments_are_zerobatch_flags():
    deployment = start_flags(container_spec()["args"])
    assert deployment.foreground
    assert deployment.ts_config == "/mnt/models/config/config.properties"
    assert deployment.model_store == "/mnt/models/model-store"
    mounts = {m["mountPath"] for m in container_spec()["volumeMounts"]}
    assert {os.path.dirname(deployment.ts_config), deployment.model_store} <= mounts
    runtime = the("ServingRuntime")["spec"]["containers"][0]
    served = start_flags(runtime["args"])
    assert (served.host, served.http_port) == ("0.0.0.0", runtime["ports"][0]["containerPort"])
    assert served.http_port == 8080  # where KServe sends a predictor's traffic
    assert served.metrics_address.endswith(":8082")
    assert served.management_address.startswith("http://127.0.0.1:")


def test_inference_services_use_the_runtime():
    runtime = the("ServingRuntime")
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    services = [data for _, data in DOCUMENTS if data["kind"] == "InferenceService"]
    assert {s["spec"]["predictor"]["model"]["protocolVersion"] for s in services} \
        == {"v1", "v2"}
    for service in services:
        model = service["spec"]["predictor"]["model"]
        assert model["runtime"] == runtime["metadata"]["name"]
        assert model["modelFormat"]["name"] in formats
        assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]


# ---------------------------------------------------------------- the Dockerfile

def dockerfile_instructions(name: str) -> list[str]:
    """The arguments of each instruction `name` in deploy/Dockerfile (continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    return [line.split(None, 1)[1].strip() for line in text.splitlines()
            if line.split(None, 1)[:1] == [name]]


def test_dockerfile():
    assert dockerfile_instructions("EXPOSE") == ["8080 8081 8082"]
    (healthcheck,) = dockerfile_instructions("HEALTHCHECK")
    assert "CMD" in healthcheck
    assert "ZEROBATCH_HEALTH_URL=http://127.0.0.1:8080/ping" in dockerfile_instructions("ENV")
    (entrypoint,) = dockerfile_instructions("ENTRYPOINT")
    assert '"-m", "zerobatch.container"' in entrypoint
    assert any(arg.startswith("CUDA=") for arg in dockerfile_instructions("ARG"))
    assert any("pip wheel" in run and run.endswith(" .") for run in
               dockerfile_instructions("RUN"))
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    for needed in ("setup.py", "zerobatch/", "api/", "broker/", "worker/", "csrc/"):
        assert f"!{needed}" in ignore


# ---------------------------------------------------------------- the entrypoint's choices

def paths(*args: str, **environ: str) -> tuple[str, str]:
    return container.layout_paths(container.build_parser().parse_known_args(list(args))[0],
                                  environ)


def test_layout_paths_flags_then_environment_then_kserve():
    assert paths() == ("/mnt/models/config/config.properties", "/mnt/models/model-store")
    assert paths(ZEROBATCH_MODEL_DIR="/m") == ("/m/config/config.properties", "/m/model-store")
    assert paths("--model-dir=/f", ZEROBATCH_MODEL_DIR="/m") \
        == ("/f/config/config.properties", "/f/model-store")
    assert paths("--ts-config", "/c.properties", ZEROBATCH_TS_CONFIG="/e.properties",
                 ZEROBATCH_MODEL_STORE="/s") == ("/c.properties", "/s")
    assert paths(ZEROBATCH_TS_CONFIG="/e.properties")[0] == "/e.properties"


def test_other_arguments_go_to_zerobatch_start():
    parsed, flags = container.build_parser().parse_known_args(
        ["--models", "a=a.mar", "--model-store", "/s", "--http-port=9000"])
    assert (parsed.model_store, flags) == ("/s", ["--models", "a=a.mar", "--http-port=9000"])
    argv = container.start_argv("/c", "/s", flags)
    assert argv[argv.index("start"):] == ["start", "--foreground", "--ts-config", "/c",
                                          "--model-store", "/s", "--models", "a=a.mar",
                                          "--http-port=9000"]


def test_loopback_warning(tmp_path):
    config = tmp_path / "config.properties"
    config.write_text("inference_address=http://127.0.0.1:8080\n")
    assert "127.0.0.1" in container.loopback_warning(str(config), [], {})
    assert container.loopback_warning(str(config), ["--host=0.0.0.0"], {}) is None
    assert container.loopback_warning(str(config), ["--host", "0.0.0.0"], {}) is None
    config.write_text("load_models=all\n")  # zerobatch's default: loopback
    assert container.loopback_warning(str(config), [], {}) is not None
    config.write_text("inference_address=http://0.0.0.0:8080\n")
    assert container.loopback_warning(str(config), [], {}) is None
    config.write_text("inference_address=$$UNSET_FOR_THIS_TEST$$\n")  # start will say why
    assert container.loopback_warning(str(config), [], {}) is None
