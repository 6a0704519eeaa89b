"""deploy/: what can be checked without a Docker engine or a cluster.

Compose and Kubernetes files load, every file they reference exists, ports,
hosts and limits agree with the config files the server loads, the Prometheus
rules pass `promtool` (syntax and unit tests), and the manifests pass yamllint,
`kubectl kustomize` and structural checks (selectors match labels, probes hit
the gRPC port).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from llmcompress_server.core.config import Config, load_config
from llmcompress_server.core.events import CodingJobEnded

from .conftest import ROOT, require_tool

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SEED = ROOT / "examples" / "seed-config.yaml"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = _yaml(DEPLOY / "docker-compose.yml")
    return data


@pytest.fixture(scope="module")
def compose_config() -> Config:
    return load_config(DEPLOY / "config" / "llmcompress.yaml", environ={})


@pytest.fixture(scope="module")
def k8s_config() -> Config:
    return load_config(K8S / "llmcompress.yaml", environ={})


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("path", [DEPLOY / "config/llmcompress.yaml", K8S / "llmcompress.yaml"])
def test_deploy_configs_keep_every_seed_setting(path: Path) -> None:
    seed = _flatten(_yaml(SEED))
    ours = _flatten(_yaml(path))
    changed = {k: (v, ours.get(k)) for k, v in seed.items() if ours.get(k) != v}
    # Only where a container differs from a laptop (Ollama's host, and a metrics port
    # that is not Prometheus's own 9090), and the quality bars: the seed's 0.85 was a
    # similarity bar, and on our overall score it would send good extracts to ZSTD.
    for key in (
        "model.ollama_endpoint",
        "monitoring.prometheus_port",
        "model.quality_threshold",
        "monitoring.alert_quality_threshold",
    ):
        changed.pop(key, None)
    assert not changed, f"{path.name} drops or changes seed settings: {changed}"
    config = load_config(path, environ={})
    assert config.server.host == "0.0.0.0"  # reachable from outside the container
    assert config.monitoring.prometheus_host == "0.0.0.0"


def test_compose_references_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {
        "llmcompress",
        "ollama",
        "ollama-pull",
        "redis",
        "prometheus",
        "grafana",
        "jaeger",
    }
    build = services["llmcompress"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT
    dockerfile = context / build["dockerfile"]
    assert dockerfile.is_file()
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (context / src).exists(), f"Dockerfile copies missing {src}"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose.get("volumes", {}), f"{name}: undeclared volume {source}"
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"


def _published(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[-1]) for p in service.get("ports", [])}


def test_compose_ports_and_hosts_match_the_config(
    compose: dict[str, Any], compose_config: Config
) -> None:
    services = compose["services"]
    cfg = compose_config
    assert cfg.server.port in _published(services["llmcompress"])
    assert f"127.0.0.1:{cfg.server.port}" in " ".join(
        services["llmcompress"]["healthcheck"]["test"]
    )
    ollama = urlparse(cfg.model.ollama_endpoint)
    assert ollama.hostname in services and ollama.port in _published(services["ollama"])
    assert cfg.cache.redis_url is not None
    assert urlparse(cfg.cache.redis_url).hostname in services
    assert cfg.monitoring.otlp_endpoint is not None
    otlp = urlparse(cfg.monitoring.otlp_endpoint)
    assert otlp.hostname in services and otlp.port in _published(services["jaeger"])
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    scrape = _yaml(DEPLOY / "prometheus/prometheus.yml")["scrape_configs"]
    targets = [t for job in scrape for sc in job["static_configs"] for t in sc["targets"]]
    assert f"llmcompress:{cfg.monitoring.prometheus_port}" in targets
    # Ollama's parallelism is our per-endpoint in-flight limit; its queue is above our admission.
    env = services["ollama"]["environment"]
    assert int(env["OLLAMA_NUM_PARALLEL"]) == cfg.performance.max_concurrent
    assert int(env["OLLAMA_MAX_QUEUE"]) >= cfg.performance.max_queue
    pull = services["ollama-pull"]
    assert pull["depends_on"]["ollama"]["condition"] == "service_healthy"
    assert urlparse(pull["environment"]["OLLAMA_HOST"]).hostname == "ollama"
    gate = services["llmcompress"]["depends_on"]["ollama-pull"]["condition"]
    assert gate == "service_completed_successfully"


def test_grafana_panels_use_recorded_series() -> None:
    rules = _yaml(DEPLOY / "prometheus/alerts.yml")["groups"]
    recorded = {r["record"] for g in rules for r in g["rules"] if "record" in r}
    dash = json.loads((DEPLOY / "grafana/dashboards/llmcompress.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for needed in (
        "throughput",
        "p95",
        "ratio",
        "quality",
        "error",
        "in-flight",
        "cache hit",
    ):
        assert needed in titles
    for panel in dash["panels"]:
        for target in panel["targets"]:
            names = set(re.findall(r"llmc:[a-z0-9_:]+", target["expr"]))
            assert names <= recorded, f"{panel['title']}: {names - recorded} not recorded"
            assert names or target["expr"].startswith("vector(")
    ds = _yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")["datasources"][0]
    assert all(p["datasource"]["uid"] == ds["uid"] for p in dash["panels"])


def test_quality_alert_uses_the_configured_threshold() -> None:
    # The rule reads the bar from the series the server exports (its value from the
    # config is checked against a live /metrics below), never from a number of its own.
    rules = _yaml(DEPLOY / "prometheus/alerts.yml")["groups"]
    alert = next(r for g in rules for r in g["rules"] if r.get("alert") == "LLMCompressQualityLow")
    assert "max(llmc_quality_alert_threshold)" in alert["expr"]
    assert not re.search(r"<\s*[0-9.]+\s*$", alert["expr"])


def _run(*cmd: str, cwd: Path = DEPLOY) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_promtool_checks_rules_config_and_alert_tests() -> None:
    promtool = require_tool("promtool")
    _run(promtool, "check", "rules", "prometheus/alerts.yml")
    _run(promtool, "check", "config", "prometheus/prometheus.yml")
    out = _run(promtool, "test", "rules", "prometheus/alerts_test.yml")
    assert "SUCCESS" in out


def test_yamllint_passes() -> None:
    _run(sys.executable, "-m", "yamllint", "-s", "-c", ".yamllint.yaml", ".")


# -- Kubernetes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    kustomization = _yaml(K8S / "kustomization.yaml")
    docs: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        docs += _docs((K8S / name).read_text(encoding="utf-8"))
    return docs


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_kustomization_lists_exactly_the_manifests() -> None:
    kustomization = _yaml(K8S / "kustomization.yaml")
    generated = {f for g in kustomization["configMapGenerator"] for f in g["files"]}
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == present - generated
    assert generated == {"llmcompress.yaml"}


def test_every_manifest_is_well_formed(manifests: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in manifests)
    assert kinds == sorted(
        [
            "Deployment",
            "Deployment",
            "HorizontalPodAutoscaler",
            "PodDisruptionBudget",
            "Service",
            "Service",
            "Service",
        ]
    )
    for doc in manifests:
        assert doc["apiVersion"] and doc["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


def test_selectors_match_pod_labels(manifests: list[dict[str, Any]]) -> None:
    deployments = {d["metadata"]["name"]: d for d in _by_kind(manifests, "Deployment")}
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    for dep in deployments.values():
        match = dep["spec"]["selector"]["matchLabels"]
        assert match.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    for svc in _by_kind(manifests, "Service"):
        sel = svc["spec"]["selector"]
        assert any(sel.items() <= labels.items() for labels in pod_labels), svc["metadata"]
        for port in svc["spec"]["ports"]:
            target = port["targetPort"]
            containers = [
                c
                for d in deployments.values()
                if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()
                for c in d["spec"]["template"]["spec"]["containers"]
            ]
            assert any(target in {p["name"] for p in c["ports"]} for c in containers)
    for pdb in _by_kind(manifests, "PodDisruptionBudget"):
        server = deployments["llmcompress"]["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= server.items()
    hpa = _by_kind(manifests, "HorizontalPodAutoscaler")[0]
    assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    assert hpa["spec"]["minReplicas"] >= 2  # with the PDB, a drain never empties the service
    headless = [s for s in _by_kind(manifests, "Service") if s["spec"].get("clusterIP") == "None"]
    assert [s["metadata"]["name"] for s in headless] == ["llmcompress-headless"]


def test_server_pod_probes_resources_and_config(
    manifests: list[dict[str, Any]], k8s_config: Config
) -> None:
    dep = next(
        d for d in _by_kind(manifests, "Deployment") if d["metadata"]["name"] == "llmcompress"
    )
    spec = dep["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == k8s_config.server.port
    assert ports["metrics"] == k8s_config.monitoring.prometheus_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == k8s_config.server.port, probe
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()
    prestop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert spec["terminationGracePeriodSeconds"] > k8s_config.server.grace_seconds + prestop
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert container["args"] == ["--config", f"{mount['mountPath']}/llmcompress.yaml"]
    volume = next(v for v in spec["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == "llmcompress-config"
    redis_svc = next(
        s for s in _by_kind(manifests, "Service") if s["metadata"]["name"] == "llmcompress-redis"
    )
    assert k8s_config.cache.redis_url is not None
    url = urlparse(k8s_config.cache.redis_url)
    assert (url.hostname, url.port) == ("llmcompress-redis", redis_svc["spec"]["ports"][0]["port"])
    env = {e["name"]: e for e in container["env"]}
    # Overrides in the pod must name real config keys (extra keys are refused at startup).
    overrides = {k: v["value"] for k, v in env.items() if k.startswith("LLMC_") and "value" in v}
    load_config(K8S / "llmcompress.yaml", environ=overrides | {"LLMC_TOKENS": "t"})


def test_kubectl_kustomize_builds() -> None:
    kubectl = require_tool("kubectl")
    docs = _docs(_run(kubectl, "kustomize", str(K8S)))
    configmaps = _by_kind(docs, "ConfigMap")
    assert len(configmaps) == 1
    name = configmaps[0]["metadata"]["name"]
    assert name.startswith("llmcompress-config-")  # content hash: config changes roll pods
    assert load_config(overrides=_yaml_text(configmaps[0]["data"]["llmcompress.yaml"]))
    dep = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "llmcompress"
    )
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == name


def _yaml_text(text: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(text)
    return data


# -- the rules against a live /metrics ------------------------------------------------


def _selectors(expr: str) -> tuple[set[str], set[str], set[tuple[str, str]]]:
    """(metric names, grouping labels, label="value" matchers) of a PromQL expression."""
    grouping = {
        label.strip()
        for group in re.findall(r"\bby \(([^)]*)\)", expr)
        for label in group.split(",")
    }
    matchers = set(re.findall(r'([a-z_]+)="([^"]*)"', expr))
    bare = re.sub(r"\bby \([^)]*\)|\{[^}]*\}|\[[^]]*\]", " ", expr)
    words = re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", bare)  # not in 1e-9
    names = {w for w, call in words if not call and w not in {"by", "or", "and", "unless"}}
    return names, grouping, matchers


async def test_recording_rules_read_series_the_server_exports(sim_ollama: Any) -> None:
    """Every raw name, label and matched value in the recording group is on a real /metrics."""
    import urllib.request

    import grpc
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client.parser import text_string_to_metric_families

    from llmcompress.v1 import compression_pb2 as pb
    from llmcompress.v1 import compression_pb2_grpc as pb_grpc
    from llmcompress_server.api.server import create_server
    from llmcompress_server.backends import ChatRequest
    from llmcompress_server.core.errors import BackendError
    from llmcompress_server.telemetry import setup_telemetry

    from .conftest import make_config

    sim = await sim_ollama(latency=0.01)
    config = make_config(
        monitoring={
            "enable_prometheus": True,
            "prometheus_port": 0,
            "alert_quality_threshold": 0.61,
        },
        model={"backend": "ollama", "ollama": {"endpoints": [sim.url]}},
        llm={"health_interval": 0, "max_retries": 0, "fallback_embedded": False},
    )
    provider = TracerProvider()
    telemetry = setup_telemetry(config, tracer_provider=provider, environ={})
    app = await create_server(config, telemetry)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel:
            stub = pb_grpc.CompressionServiceStub(channel)
            # 4,290 bytes: a ZSTD text long enough to be cached (cache.zstd_min_bytes).
            text = "Recording rules must name real series. " * 110
            for _ in range(2):  # a miss, then a hit
                done = await stub.Compress(pb.CompressRequest(text=text, mode=pb.MODE_ZSTD))
            await stub.Reconstruct(pb.ReconstructRequest(envelope=done.envelope))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Compress(pb.CompressRequest(text=text, mode=99))  # type: ignore[arg-type]
        request = ChatRequest(messages=[{"role": "user", "content": "hello"}])
        assert app.backend is not None
        await app.backend.chat(request)
        sim.options.script = ["garbage", "garbage", "garbage"]
        with pytest.raises(BackendError):
            await app.backend.chat(request)
        # No lossy codec on this branch: a SEMANTIC item's stats go through the same
        # recording path the request interceptor uses.
        stats = pb.Stats(mode=pb.MODE_SEMANTIC, model="m", backend="ollama", ratio=9.0)
        stats.quality.overall = 0.9
        telemetry.metrics.compressed("Compress", stats)
        # No model here either: a coding engine job's event, as the LOSSLESS codec sends it.
        telemetry.metrics.coding_job(CodingJobEnded("encode", 0.01, 0.5, 100, 16))
        # A dictionary's training and an item coded with one, as the store and the
        # request interceptor report them.
        telemetry.metrics.dictionary_trained(0.2, 500)
        telemetry.metrics.compressed(
            "BatchCompress", pb.Stats(mode=pb.MODE_ZSTD, ratio=1.6, dictionary="0a1b2c3d")
        )
        url = f"http://127.0.0.1:{telemetry.metrics_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    finally:
        await app.stop(grace=0)
        telemetry.shutdown()
        provider.shutdown()

    exported: dict[str, list[dict[str, str]]] = {}
    bars = []
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            exported.setdefault(sample.name, []).append(sample.labels)
            if sample.name == "llmc_quality_alert_threshold":
                bars.append(sample.value)
    # The quality alert's bar is the configured one (alerts.yml reads this series).
    assert bars == [config.monitoring.alert_quality_threshold]
    # The documented list of series (docs/production.md, "Observability"), with their labels.
    guide = (ROOT / "docs" / "production.md").read_text(encoding="utf-8")
    listed = guide[guide.index("- **Metrics**") : guide.index("- **Logs**")]
    documented = re.findall(
        r"`((?:compression|reconstruction|quality|llmc|gen_ai)_\w+)(\{[\w,]*\})?`", listed
    )
    assert len(documented) >= 14
    for name, labels in documented:
        samples = [
            sample
            for sample_name, samples in exported.items()
            if sample_name in (name, f"{name}_bucket", f"{name}_count")
            for sample in samples
        ]
        assert samples, f"docs/production.md lists {name}, not exported"
        wanted = set(labels.strip("{}").split(",")) - {""}
        assert wanted <= {label for sample in samples for label in sample}, name
    rules = _yaml(DEPLOY / "prometheus/alerts.yml")["groups"]
    recording = next(g for g in rules if g["name"] == "llmcompress-recording")
    for rule in recording["rules"]:
        names, grouping, matchers = _selectors(rule["expr"])
        missing = names - exported.keys()
        assert not missing, f"{rule['record']}: not exported: {missing}"
        labels = {label for n in names for sample in exported[n] for label in sample}
        assert grouping <= labels | {"le"}, f"{rule['record']}: no labels {grouping - labels}"
        for label, value in matchers:
            values = {sample.get(label) for n in names for sample in exported[n]}
            assert value in values, f"{rule['record']}: no sample has {label}={value!r}"
