"""The Helm chart (charts/adore), the images' Dockerfiles and skaffold.yaml.

REAL: helm (lint, template, install, uninstall), kubectl's server-side dry
run, and "a cluster" from tests/cluster/provider.py: a kind cluster where kind
and Docker exist (the chart's operator image then runs the example round in
real Pods), else the local kube-apiserver + controller-manager 1.20.
STAND-INS, local provider only (this machine has no kubelet and no container
runtime): the operator runs as a local process with the token of the
ServiceAccount the chart created (so the chart's RBAC is what is exercised),
the StandInKubelet runs the stage Pods' command as a local process, and that
command is a script that reports success at once (the stages' own code is
tested in test_operator_e2e.py). The Prometheus operator's CRDs are stand-ins
too: schema-less CRDs of the same group/kind, enough for the chart to detect
the API and for the apiserver to store the objects.
Images cannot be built here (no Docker engine): the Dockerfile tests check
what they copy exists and what they run is installed by them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

try:
    from tests.cluster.provider import (chosen_provider, find_tool, kind_missing_reason,
                                        missing_cluster_reason, open_cluster)
    from tests.cluster import StandInKubelet
except ImportError:  # tests/ is not a package
    from cluster.provider import (chosen_provider, find_tool, kind_missing_reason,
                                  missing_cluster_reason, open_cluster)
    from cluster import StandInKubelet

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "adore"
NS = "adore-system"
HELM = find_tool("helm")
KUBECTL = find_tool("kubectl")
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())

needs_helm = pytest.mark.skipif(HELM is None, reason="helm not found on PATH or in ~/.cache/adore (run .ci/install-helm.sh)")

# name -> helm arguments: default values and every toggle the chart has.
TOGGLES = {
    "default": [],
    "triton": ["--set", "triton.enabled=true"],
    "gpu-values": ["-f", str(CHART / "values-gpu.yaml")],
    "kind-values": ["-f", str(CHART / "values-kind.yaml")],
    "namespaced-verbose": ["--set", "operator.namespaces={team-a,team-b}", "--set", "operator.verbose=true"],
    "nothing-created": ["--set", "rules.create=false", "--set", "workdir.create=false",
                        "--set", "serviceAccount.create=false", "--set", "rbac.create=false",
                        "--set", "monitoring.enabled=false"],
    "extra-rules": ["--set-string", "rules.files.shop\\.txt=Be strict about brands."],
    "pull-secret-storageclass": ["--set", "imagePullSecrets[0].name=regcred", "--set", "workdir.storageClassName=fast"],
    "operations": ["--set", "dashboards.enabled=true", "--set", "networkPolicy.enabled=true", "--set", "triton.enabled=true"],
}
PROM_API = ["--api-versions", "monitoring.coreos.com/v1"]


def helm(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([HELM, *args], capture_output=True, text=True, env=env, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


def render(*args: str) -> list[dict]:
    out = helm("template", "adore", str(CHART), "--namespace", NS, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


# ---------------------------------------------------------------- helm alone

@needs_helm
@pytest.mark.parametrize("toggle", TOGGLES)
def test_lint_is_clean(toggle):
    r = helm("lint", "--strict", str(CHART), *TOGGLES[toggle])
    assert "[ERROR]" not in r.stdout and "[WARNING]" not in r.stdout, r.stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in r.stdout


@needs_helm
@pytest.mark.parametrize("toggle", TOGGLES)
@pytest.mark.parametrize("prom", [False, True], ids=["no-prometheus-operator", "prometheus-operator"])
def test_template_renders_every_toggle(toggle, prom):
    objs = render(*TOGGLES[toggle], *(PROM_API if prom else []))
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service"} <= kinds
    created = toggle != "nothing-created"
    assert ("ServiceAccount" in kinds) == created and ("ClusterRole" in kinds) == created
    assert ("ConfigMap" in kinds) == created and ("PersistentVolumeClaim" in kinds) == created
    triton = toggle in ("triton", "gpu-values", "operations")
    assert any(o["metadata"]["name"] == "adore-triton" for o in by_kind(objs, "Deployment")) == triton
    # The dashboard and the NetworkPolicies are off unless asked for.
    assert ("NetworkPolicy" in kinds) == (toggle == "operations")
    assert any("grafana_dashboard" in o["metadata"]["labels"] for o in by_kind(objs, "ConfigMap")) == (toggle == "operations")
    monitoring = prom and created  # nothing-created also turns monitoring off
    assert ("ServiceMonitor" in kinds) == monitoring and ("PrometheusRule" in kinds) == monitoring
    for o in objs:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == NS, o["metadata"]["name"]


@needs_helm
@pytest.mark.parametrize("toggle", ["default", "gpu-values"])
def test_containers_are_locked_down_sized_and_probed(toggle):
    for dep in by_kind(render(*TOGGLES[toggle]), "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
            assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
            assert c["resources"]["limits"]["memory"]
            ports = {p["name"] for p in c["ports"]}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert c[probe]["httpGet"]["port"] in ports, (dep["metadata"]["name"], probe)
            # A read-only root needs a writable /tmp.
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])


@needs_helm
def test_operator_deployment_runs_the_operator_entry_point_with_its_settings():
    objs = render(*TOGGLES["namespaced-verbose"], "--set", "operator.metricsPort=9100")
    dep = one(objs, "Deployment", "adore-operator")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["adore-operator"]
    assert c["args"] == ["--namespace=team-a", "--namespace=team-b", "--verbose"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["ADORE_METRICS_PORT"] == "9100" and c["ports"][0]["containerPort"] == 9100
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]
    svc = one(objs, "Service", "adore-operator-metrics")
    assert svc["spec"]["ports"][0]["port"] == 9100
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    # The operator reads exactly these variables.
    handlers = (REPO / "operator" / "adore_operator" / "handlers.py").read_text()
    for name in env:
        assert f'"{name}"' in handlers, f"{name} is not read by the operator"


@needs_helm
def test_triton_serves_the_model_repository_with_explicit_model_control():
    objs = render(*TOGGLES["gpu-values"])
    dep = one(objs, "Deployment", "adore-triton")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert "--model-control-mode=explicit" in c["args"] and "--load-model=adore-student" in c["args"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "models")
    assert mount == {"name": "models", "mountPath": "/models", "subPath": "triton-repo", "readOnly": True}
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    assert vol["persistentVolumeClaim"]["claimName"] == one(objs, "PersistentVolumeClaim")["metadata"]["name"]
    assert one(objs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    svc = one(objs, "Service", "adore-triton")
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    # A claim of its own, when the repository lives elsewhere.
    other = render("--set", "triton.enabled=true", "--set", "triton.modelRepository.claimName=models")
    vol = next(v for v in one(other, "Deployment", "adore-triton")["spec"]["template"]["spec"]["volumes"]
               if v["name"] == "models")
    assert vol["persistentVolumeClaim"]["claimName"] == "models"
    # The request log: off by default; on, a writable mount of the same claim where promote's settings point.
    assert [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "models"] == ["/models"]
    logged = render("--set", "triton.enabled=true", "--set", "triton.requestLog.enabled=true")
    mounts = one(logged, "Deployment", "adore-triton")["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    log = next(m for m in mounts if m["mountPath"] == "/var/log/adore")
    assert log == {"name": "models", "mountPath": "/var/log/adore", "subPath": "request-log"}  # not readOnly


@needs_helm
def test_monitoring_objects_select_the_metrics_services():
    objs = render("--set", "triton.enabled=true", "--set", "monitoring.labels.release=kps", *PROM_API)
    services = {s["metadata"]["name"]: s for s in by_kind(objs, "Service")}
    monitors = by_kind(objs, "ServiceMonitor")
    assert len(monitors) == 2
    for sm in monitors:
        assert sm["metadata"]["labels"]["release"] == "kps"
        selected = [s for s in services.values()
                    if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert len(selected) == 1, sm["metadata"]["name"]
        assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    rule = one(objs, "PrometheusRule")
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert 'adore_operator_rounds{phase="Failed"}' in alerts["AdoreRoundFailed"]
    assert "adore-operator-metrics" in alerts["AdoreOperatorDown"]
    # The metric the alert reads is one the operator exports.
    assert '"adore_operator_rounds"' in (REPO / "operator" / "adore_operator" / "metrics.py").read_text()


@needs_helm
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) not installed")
def test_prometheus_rule_passes_promtool(tmp_path):
    rule = one(render(*PROM_API), "PrometheusRule")
    f = tmp_path / "rules.yaml"
    f.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    r = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "SUCCESS: 2 rules found" in r.stdout, r.stdout + r.stderr


# ------------------------------------------------ dashboard and NetworkPolicies

DASHBOARD = CHART / "files" / "grafana-dashboard.json"


def exported_metrics() -> set[str]:
    """Series names the operator (prometheus-client) and the serving backend (Triton) export."""
    names: set[str] = set()
    operator = (REPO / "operator" / "adore_operator" / "metrics.py").read_text()
    for kind, name in re.findall(r'\b(Counter|Gauge|Histogram|Summary)\(\s*"(\w+)"', operator):
        names |= _series(name, kind.upper())
    serving = (REPO / "workers" / "adore" / "serving" / "backend.py").read_text()
    for name, kind in re.findall(r'name="(adore_\w+)"[^)]*?kind=mf\.(\w+)', serving, flags=re.S):
        # Triton (prometheus-cpp) exports a counter under the name it was given, no _total added.
        names |= {name} if kind == "COUNTER" else _series(name, kind)
    return names


def _series(name: str, kind: str) -> set[str]:
    if kind == "COUNTER":  # prometheus-client appends _total when the name lacks it
        return {name if name.endswith("_total") else f"{name}_total"}
    if kind in ("HISTOGRAM", "SUMMARY"):
        return {f"{name}_{s}" for s in ("bucket", "sum", "count")}
    return {name}


def dashboard_queries(dashboard: dict) -> dict[str, list[str]]:
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}


def test_exported_metrics_are_read_from_the_sources():
    names = exported_metrics()
    assert {"adore_operator_rounds", "adore_operator_stage_duration_seconds_bucket",
            "adore_operator_stage_handoff_seconds_count", "adore_operator_rounds_created_total",
            "adore_operator_promotions_total",
            "adore_low_confidence_total", "adore_predictions_total", "adore_score_bucket", "adore_score_count"} <= names
    assert "adore_operator_stage_duration_seconds" not in names  # a histogram has no bare series


@needs_helm
def test_dashboard_configmap_is_for_the_grafana_sidecar_and_reads_exported_metrics():
    objs = render("--set", "dashboards.enabled=true", "--set-string", "dashboards.annotations.grafana_folder=ADORE")
    cm = one(objs, "ConfigMap", "adore-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["labels"]["app.kubernetes.io/instance"] == "adore"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "ADORE"}
    dashboard = json.loads(cm["data"]["adore.json"])
    assert dashboard == json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    queries = dashboard_queries(dashboard)
    wants = {"Rounds by phase": "adore_operator_rounds", "Stage durations": "adore_operator_stage_duration_seconds_bucket",
             "Hand-off latency": "adore_operator_stage_handoff_seconds_bucket",
             "Serving low-confidence share": "adore_low_confidence_total",
             "Promotions and rollbacks": "adore_rollbacks_total"}
    for title, metric in wants.items():
        assert any(re.search(rf"\b{metric}\b", q) for q in queries[title]), (title, queries.get(title))
    # Promotions are what promote did (the operator's counter), not promote stages that ran: one that refused
    # the student succeeds too.
    assert any("adore_operator_promotions_total" in q and "outcome" in q for q in queries["Promotions and rollbacks"])
    used = {m for qs in queries.values() for q in qs for m in re.findall(r"\badore_\w+", q)}
    unknown = used - exported_metrics()
    assert not unknown, f"the dashboard reads {sorted(unknown)}, which nothing exports"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for p in dashboard["panels"]:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        for q in (t["expr"] for t in p["targets"]):
            assert set(re.findall(r"\$(\w+)", q)) <= variables | {"__rate_interval"}, q
    other_ns = one(render("--set", "dashboards.enabled=true", "--set", "dashboards.namespace=monitoring"),
                   "ConfigMap", "adore-dashboard")
    assert other_ns["metadata"]["namespace"] == "monitoring"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus package) not installed")
def test_dashboard_queries_pass_promtool(tmp_path):
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    # Grafana's variables, as Grafana substitutes them before the query reaches Prometheus.
    exprs = [q.replace("$__rate_interval", "2m").replace("$window", "1h") for qs in queries.values() for q in qs]
    rules = [{"record": f"adore:dashboard:{i}", "expr": e} for i, e in enumerate(exprs)]
    f = tmp_path / "dashboard.yaml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = subprocess.run(["promtool", "check", "rules", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in r.stdout, r.stdout + r.stderr


def _pod_labels(objs: list[dict], name: str) -> dict:
    return one(objs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]


def _ports(rule: dict) -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for p in rule["ports"]}


@needs_helm
def test_network_policies_let_the_operator_reach_the_api_and_prometheus_and_guard_triton():
    objs = render(*TOGGLES["operations"])
    policies = {p["metadata"]["name"]: p for p in by_kind(objs, "NetworkPolicy")}
    assert set(policies) == {"adore-operator", "adore-triton"}
    op = policies["adore-operator"]["spec"]
    assert op["policyTypes"] == ["Egress"] and "ingress" not in op
    assert op["podSelector"]["matchLabels"].items() <= _pod_labels(objs, "adore-operator").items()
    assert not op["podSelector"]["matchLabels"].items() <= _pod_labels(objs, "adore-triton").items()
    api, prom, dns = op["egress"]
    assert _ports(api) == {("TCP", 443), ("TCP", 6443)} and api["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0"}}]
    assert _ports(prom) == {("TCP", 9090)}
    assert prom["to"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert _ports(dns) == {("UDP", 53), ("TCP", 53)}
    tr = policies["adore-triton"]["spec"]
    assert tr["policyTypes"] == ["Ingress"] and "egress" not in tr
    assert tr["podSelector"]["matchLabels"].items() <= _pod_labels(objs, "adore-triton").items()
    container = one(objs, "Deployment", "adore-triton")["spec"]["template"]["spec"]["containers"][0]
    served, scrape = tr["ingress"]
    assert _ports(served) == {("TCP", p["containerPort"]) for p in container["ports"]} == \
        {("TCP", 8000), ("TCP", 8001), ("TCP", 8002)}
    assert served["from"] == [{"podSelector": {}}]  # the release's namespace
    assert _ports(scrape) == {("TCP", 8002)} and scrape["from"] == prom["to"]


@needs_helm
def test_network_policy_settings_reach_the_policies():
    peers = [{"namespaceSelector": {"matchLabels": {"team": "search"}}}]
    objs = render("--set", "networkPolicy.enabled=true", "--set", "triton.enabled=true",
                  "--set-json", f"networkPolicy.triton.from={json.dumps(peers)}",
                  "--set", "networkPolicy.apiServer.cidrs={10.0.0.1/32}", "--set", "networkPolicy.apiServer.ports={6443}",
                  "--set", "networkPolicy.dns.enabled=false", "--set", "triton.service.grpcPort=9001")
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(objs, "NetworkPolicy")}
    assert policies["adore-operator"]["egress"][0] == {"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
                                                       "ports": [{"protocol": "TCP", "port": 6443}]}
    assert len(policies["adore-operator"]["egress"]) == 2  # no DNS rule
    served = policies["adore-triton"]["ingress"][0]
    assert served["from"] == peers and ("TCP", 9001) in _ports(served)
    # Without Triton only the operator's policy.
    alone = by_kind(render("--set", "networkPolicy.enabled=true"), "NetworkPolicy")
    assert [p["metadata"]["name"] for p in alone] == ["adore-operator"]


@needs_helm
def test_chart_crd_is_the_generated_crd():
    shown = helm("show", "crds", str(CHART)).stdout.strip().removeprefix("---").strip()
    assert shown == (REPO / "crds" / "adoreround.yaml").read_text().strip(), (
        "charts/adore/crds/adoreround.yaml differs from crds/adoreround.yaml: it must stay a symlink to it "
        "(ln -sf ../../../crds/adoreround.yaml charts/adore/crds/adoreround.yaml)")


@needs_helm
def test_chart_rbac_is_operator_deploy_rbac():
    deploy = [d for d in yaml.safe_load_all((REPO / "operator" / "deploy" / "rbac.yaml").read_text()) if d]
    want = one(deploy, "ClusterRole")["rules"]
    objs = render()
    assert one(objs, "ClusterRole")["rules"] == want
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == one(objs, "ClusterRole")["metadata"]["name"]
    sa = one(objs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}]


@needs_helm
def test_rules_configmap_holds_the_example_rules_and_extra_files():
    data = one(render(*TOGGLES["extra-rules"]), "ConfigMap")["data"]
    examples = {p.name: p.read_text() for p in (REPO / "examples" / "rules").glob("*.txt")}
    assert examples and {k: v for k, v in data.items() if k in examples} == examples
    assert data["shop.txt"] == "Be strict about brands."
    replaced = one(render("--set-string", "rules.files.default\\.txt=mine"), "ConfigMap")["data"]
    assert replaced["default.txt"] == "mine"


@needs_helm
@pytest.mark.parametrize("bad, field, words", [
    ({"operator": {"metricsPort": 70000}}, "/operator/metricsPort", "65,535"),
    ({"workdir": {"size": "lots"}}, "/workdir/size", "lots"),
    ({"operater": {"verbose": True}}, "operater", "additional properties"),
    ({"triton": {"image": {"pullPolicy": "Sometimes"}}}, "/triton/image/pullPolicy", "IfNotPresent"),
    ({"operator": {"namespaces": ["Team_A"]}}, "/operator/namespaces/0", "Team_A"),
    ({"workdir": {"accessModes": []}}, "/workdir/accessModes", "minItems"),
    ({"dashboards": {"enabled": "yes"}}, "/dashboards/enabled", "boolean"),
    ({"networkPolicy": {"triton": {"from": [{"podSelecter": {}}]}}}, "/networkPolicy/triton/from/0", "podSelecter"),
    ({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1"]}}}, "/networkPolicy/apiServer/cidrs/0", "pattern"),
])
def test_bad_values_are_rejected_naming_the_field(tmp_path, bad, field, words):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(bad))
    r = helm("template", "adore", str(CHART), "-f", str(f), check=False)
    assert r.returncode != 0
    assert field in r.stderr and words in r.stderr, r.stderr


def test_values_schema_covers_values_yaml():
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(values: dict, node: dict, path: str):
        props = node.get("properties", {})
        for key, value in values.items():
            assert key in props, f"values.yaml {path}{key} is not in values.schema.json"
            if isinstance(value, dict) and props[key].get("properties"):
                walk(value, props[key], f"{path}{key}.")

    walk(VALUES, schema, "")


# ------------------------------------------- the example round, images, skaffold

def test_example_cluster_round_uses_what_the_chart_creates():
    from adore.schema import load_round

    round_ = load_round(REPO / "examples" / "cluster-round.yaml", check_paths=False)
    rt = round_.spec.runtime
    assert rt.workdir_claim == VALUES["workdir"]["name"]
    assert rt.rules_config_map == VALUES["rules"]["name"]
    rules = Path(round_.spec.teacher.rules_file)
    assert rules.parent == Path("/etc/adore/rules") and (REPO / "examples" / "rules" / rules.name).is_file()
    # It promotes where the chart's Triton reads: the claim's triton-repo folder.
    assert round_.spec.promotion.repository == f"{rt.workdir_path}/{VALUES['triton']['modelRepository']['subPath']}"
    assert round_.spec.promotion.model_name == VALUES["triton"]["modelName"]
    assert rt.image == "adore-worker:0.1.0"


def _dockerfile(path: str) -> list[tuple[str, str]]:
    text = (REPO / path).read_text().replace("\\\n", " ")
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


DOCKERFILES = ["operator/Dockerfile", "workers/Dockerfile", "workers/Dockerfile.triton"]


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_copies_files_that_exist_and_are_in_the_build_context(path):
    ignore = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    copies = [args.split() for op, args in _dockerfile(path) if op == "COPY"]
    assert copies
    for parts in copies:
        for src in [p for p in parts[:-1] if not p.startswith("--")]:
            assert (REPO / src).exists(), f"{path}: COPY {src}: no such file in the repository"
            # .dockerignore sends nothing but the re-included paths.
            assert any(pat.startswith("!") and (pat[1:] == src or pat[1:].startswith(src.rstrip("/") + "/"))
                       for pat in ignore), f"{path}: {src} is excluded by .dockerignore"


@pytest.mark.parametrize("path, command", [("operator/Dockerfile", "adore-operator"),
                                           ("workers/Dockerfile", "adore"),
                                           ("workers/Dockerfile.triton", "tritonserver")])
def test_dockerfile_entry_points_exist(path, command):
    import tomllib

    steps = _dockerfile(path)
    run_as = [args for op, args in steps if op == "USER"]
    assert run_as and not run_as[-1].startswith(("0", "root")), f"{path} must end as a non-root user"
    entry = [json.loads(args) for op, args in steps if op in ("ENTRYPOINT", "CMD")][-1]
    assert entry[0] == command
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    if command != "tritonserver":  # the Triton base image's own binary
        assert command in scripts
        assert any(op == "RUN" and "pip install" in args and " ." in args for op, args in steps), \
            f"{path} never installs the project, so {command} would not exist"


def test_worker_image_pins_the_projects_torch_and_finds_the_triton_templates():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    torch_pin = next(d for d in project["project"]["dependencies"] if d.startswith("torch=="))
    args = dict(a.split("=", 1) for op, a in _dockerfile("workers/Dockerfile") if op == "ARG" and "=" in a)
    assert f"torch=={args['TORCH_VERSION']}" == torch_pin
    assert args["TORCH_VARIANT"] == "cpu"
    text = (REPO / "workers" / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in text
    # The templates travel in the installed package (triton_repo/ is adore.serving.templates), so the image
    # needs no ADORE_TRITON_TEMPLATES pointing back at its build folder.
    setuptools = project["tool"]["setuptools"]
    assert setuptools["package-dir"]["adore.serving.templates"] == "triton_repo"
    assert "adore.serving.templates" in setuptools["packages"]
    assert setuptools["package-data"]["adore.serving.templates"]  # tests/test_serving_flavours.py: all of them
    assert (REPO / "triton_repo" / "python-onnx" / "model.py").is_file()
    env = " ".join(a for op, a in _dockerfile("workers/Dockerfile") if op == "ENV")
    assert "ADORE_TRITON_TEMPLATES" not in env


def _package_folder(package: str, package_dir: dict) -> str:
    """Where setuptools takes PACKAGE from: its longest mapped prefix in package-dir, else under ""."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in package_dir:
            return "/".join([package_dir[".".join(parts[:n])]] + parts[n:])
    return "/".join([package_dir[""]] + parts)


def test_pyproject_lists_every_package_of_the_source_tree():
    """Packages are listed (the templates package lives outside workers/): a new one must be listed too."""
    import tomllib

    from setuptools import find_packages

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(REPO / "workers")) | set(find_packages(REPO / "operator"))
    assert set(setuptools["packages"]) == found | {"adore.serving.templates"}
    for package in setuptools["packages"]:
        assert (REPO / _package_folder(package, setuptools["package-dir"]) / "__init__.py").is_file(), package


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_copies_every_package_folder_before_installing(path):
    """pip install . stops at once when a package's folder (triton_repo/ too) is missing."""
    import tomllib

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    steps = _dockerfile(path)
    install = next(i for i, (op, a) in enumerate(steps) if op == "RUN" and "pip install --no-deps ." in a)
    copied = [a.split()[-2].rstrip("/") for op, a in steps[:install] if op == "COPY"]
    for package in setuptools["packages"]:
        folder = _package_folder(package, setuptools["package-dir"])
        assert any(folder == c or folder.startswith(c + "/") for c in copied), \
            f"{path} installs the project before it copies {folder} (package {package})"


def test_triton_image_installs_what_the_served_model_imports():
    import ast
    from importlib import metadata

    dists = metadata.packages_distributions()
    sources = [REPO / "triton_repo" / "python-onnx" / "model.py", REPO / "workers" / "adore" / "serving" / "backend.py"]
    tops = set()
    for src in sources:
        for node in ast.walk(ast.parse(src.read_text())):
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops.add(node.module.split(".")[0])
    third_party = tops - set(sys.stdlib_module_names) - {"triton_python_backend_utils", "adore", "__future__"}
    assert {"onnxruntime", "numpy"} <= third_party
    installs = " ".join(a for op, a in _dockerfile("workers/Dockerfile.triton") if op == "RUN" and "pip install" in a)
    for top in sorted(third_party):
        assert any(f'"{d}' in installs or f" {d}" in installs for d in dists.get(top, [top])), \
            f"model.py imports {top}, which workers/Dockerfile.triton does not install"


def test_operator_requirements_cover_what_the_operator_imports():
    """The operator image installs operator/requirements.txt and adore with --no-deps:
    everything `import adore_operator.handlers` loads must come from those (and no torch)."""
    # Modules loaded before the import (site hooks) and bare namespace packages (`google`,
    # probed by optional imports) do not count; a top-level name several distributions
    # share counts as any one of them.
    code = ("import sys, json, importlib.metadata as md; before = set(sys.modules);"
            "import adore_operator.handlers, adore_operator.__main__;"
            "dists = md.packages_distributions();"
            "print(json.dumps(sorted({tuple(dists[t]) for t in {m.split('.')[0] for m in set(sys.modules) - before}"
            " if t in dists and getattr(sys.modules.get(t), '__file__', None)})))")
    loaded = [set(ds) for ds in json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                                          text=True, check=True).stdout)]
    from importlib import metadata
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    wanted = [Requirement(ln) for ln in (REPO / "operator" / "requirements.txt").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    closure: set[str] = set()
    optional: set[str] = set()  # extras of installed packages, imported only when present (aiohttp -> brotli)
    todo = [r.name for r in wanted]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in closure:
            continue
        closure.add(name)
        for req in metadata.requires(name) or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
            else:
                optional.add(canonicalize_name(r.name))
    allowed = closure | optional | {"adore-k8s"}
    missing = [sorted(ds) for ds in loaded if not {canonicalize_name(d) for d in ds} & allowed]
    assert not missing, f"the operator imports {missing}, not installed by operator/requirements.txt"
    flat = {canonicalize_name(d) for ds in loaded for d in ds}
    assert "kopf" in flat and not {"torch", "transformers"} & flat


def test_skaffold_builds_the_images_and_deploys_the_chart():
    cfg = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    assert cfg["apiVersion"].startswith("skaffold/v4")
    profiles = {p["name"]: p for p in cfg["profiles"]}
    assert set(profiles) == {"kind", "gpu"}
    for name, section in [("base", cfg), *profiles.items()]:
        artifacts = {a["image"]: a for a in section["build"]["artifacts"]}
        assert "adore-operator" in artifacts and any(i.startswith("adore-worker") for i in artifacts), name
        for a in artifacts.values():
            assert a["context"] == "." and (REPO / a["docker"]["dockerfile"]).is_file()
        release = section["manifests"]["helm"]["releases"][0]
        assert (REPO / release["chartPath"] / "Chart.yaml").is_file()
        for vf in release.get("valuesFiles", []):
            assert (REPO / vf).is_file(), vf
        for key, template in release["setValueTemplates"].items():
            node = VALUES
            for part in key.split("."):
                assert part in node, f"{name}: {key} is not a chart value"
                node = node[part]
            image = re.search(r"IMAGE_(?:REPO|TAG)_(\w+)", template).group(1)
            assert image in {i.replace("-", "_") for i in artifacts}, f"{name}: {template} names no artifact"
    # kind: the worker tag is what spec.runtime.image defaults to; gpu: torch for CUDA.
    from adore.schema import RuntimeSpec

    assert f"adore-worker:{profiles['kind']['build']['tagPolicy']['envTemplate']['template']}" == RuntimeSpec().image
    cuda = next(a for a in profiles["gpu"]["build"]["artifacts"] if a["image"] == "adore-worker-cuda")
    assert cuda["docker"]["buildArgs"]["TORCH_VARIANT"].startswith("cu")


# ------------------------------------------------------------- on a cluster

_no_cluster = missing_cluster_reason()
needs_cluster = pytest.mark.skipif(_no_cluster is not None, reason=str(_no_cluster))
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl not found on PATH or in ~/.cache/adore (run .ci/install-helm.sh)")
MONITORING_CRDS = [("servicemonitors", "ServiceMonitor"), ("prometheusrules", "PrometheusRule"),
                   ("podmonitors", "PodMonitor")]


def _standin_monitoring_crds(api) -> None:
    """STAND-IN for the Prometheus operator's CRDs: same group, kinds and version, no schema."""
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api)
    for plural, kind in MONITORING_CRDS:
        crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": f"{plural}.monitoring.coreos.com"},
               "spec": {"group": "monitoring.coreos.com", "scope": "Namespaced",
                        "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
                        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                            "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
        try:
            ext.create_custom_resource_definition(crd)
        except client.ApiException as e:
            if e.status != 409:  # a real Prometheus operator's CRDs are already there
                raise
    _wait_established(ext, [f"{p}.monitoring.coreos.com" for p, _ in MONITORING_CRDS])


def _wait_established(ext, names: list[str], timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    for name in names:
        while not any(c.type == "Established" and c.status == "True"
                      for c in ext.read_custom_resource_definition(name).status.conditions or []):
            assert time.monotonic() < end, f"CRD {name} not Established"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tc = open_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        with tc.api_client() as api:
            _standin_monitoring_crds(api)
        yield tc
    finally:
        tc.close()


@pytest.fixture(scope="module")
def installed(cluster):
    """`helm install` of the chart with default values, as README's first command."""
    r = helm("install", "adore", str(CHART), "--namespace", NS, "--create-namespace",
             "--set", "operator.reconcileIntervalSeconds=2", env=cluster.env())
    return cluster, r


@needs_helm
@needs_kubectl
@needs_cluster
@pytest.mark.parametrize("toggle", TOGGLES)
def test_rendered_objects_pass_server_side_dry_run(cluster, toggle, tmp_path):
    ns = "adore-dry-run"
    cluster.create_namespace(ns)
    # The release name differs from the installed one: cluster-scoped names must not collide.
    manifest = helm("template", f"dry-{toggle}", str(CHART), "--namespace", ns, *TOGGLES[toggle], *PROM_API,
                    env=cluster.env()).stdout
    f = tmp_path / "rendered.yaml"
    f.write_text(manifest)
    r = subprocess.run([KUBECTL, "apply", "--dry-run=server", "-n", ns, "-f", str(f)], capture_output=True,
                       text=True, env=cluster.env(), timeout=120)
    assert r.returncode == 0, r.stderr
    expected = len([d for d in yaml.safe_load_all(manifest) if d])
    assert r.stdout.count("(server dry run)") == expected, r.stdout


@needs_helm
@needs_kubectl
@needs_cluster
def test_helm_install_creates_the_objects(installed):
    from kubernetes import client

    cluster, _ = installed
    status = json.loads(helm("status", "adore", "-n", NS, "-o", "json", env=cluster.env()).stdout)
    assert status["info"]["status"] == "deployed"
    with cluster.api_client() as api:
        ext = client.ApiextensionsV1Api(api)
        _wait_established(ext, ["adorerounds.adore.dev"])
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        rbac, custom = client.RbacAuthorizationV1Api(api), client.CustomObjectsApi(api)
        dep = apps.read_namespaced_deployment("adore-operator", NS)
        assert dep.spec.template.spec.service_account_name == "adore-operator"
        core.read_namespaced_service_account("adore-operator", NS)
        core.read_namespaced_service("adore-operator-metrics", NS)
        assert "default.txt" in core.read_namespaced_config_map("adore-rules", NS).data
        assert core.read_namespaced_persistent_volume_claim("adore-workdir", NS).spec.resources.requests["storage"] == "20Gi"
        assert rbac.read_cluster_role("adore-operator").rules
        assert rbac.read_cluster_role_binding("adore-operator").subjects[0].name == "adore-operator"
        # The monitoring.coreos.com API is served here (stand-in CRDs): the chart detected it.
        assert custom.get_namespaced_custom_object("monitoring.coreos.com", "v1", NS, "servicemonitors", "adore-operator")
        assert custom.get_namespaced_custom_object("monitoring.coreos.com", "v1", NS, "prometheusrules", "adore-alerts")
    # The example round is valid against the installed CRD's schema.
    r = subprocess.run([KUBECTL, "apply", "--dry-run=server", "-n", NS, "-f",
                        str(REPO / "examples" / "cluster-round.yaml")], capture_output=True, text=True,
                       env=cluster.env(), timeout=60)
    assert r.returncode == 0 and "(server dry run)" in r.stdout, r.stderr


def _wait_round(api, name: str, timeout: float) -> dict:
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    end = time.monotonic() + timeout
    obj: dict = {}
    while time.monotonic() < end:
        obj = custom.get_namespaced_custom_object("adore.dev", "v1alpha1", NS, "adorerounds", name)
        if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            return obj
        time.sleep(1)
    raise AssertionError(f"round {name} not finished after {timeout}s: {json.dumps(obj.get('status'))[:3000]}")


@needs_helm
@needs_cluster
def test_a_round_runs_through_the_installed_chart(installed, tmp_path):
    cluster, _ = installed
    doc = yaml.safe_load((REPO / "examples" / "cluster-round.yaml").read_text())
    doc["metadata"]["namespace"] = NS
    from kubernetes import client

    if cluster.runs_pods:  # kind: the chart's operator Pod and real stage Pods with the worker image
        with cluster.api_client() as api:
            client.CustomObjectsApi(api).create_namespaced_custom_object("adore.dev", "v1alpha1", NS,
                                                                        "adorerounds", doc)
            obj = _wait_round(api, doc["metadata"]["name"], timeout=float(os.environ.get("ADORE_KIND_ROUND_TIMEOUT", 3600)))
        assert obj["status"]["phase"] == "Succeeded", json.dumps(obj["status"])[:3000]
        return
    # Local control plane: the operator as a local process with the chart's ServiceAccount token,
    # stage Pods run by the StandInKubelet, each stage a script reporting success (see module doc).
    cp = cluster.control_plane
    sa_kubeconfig = cp.token_for("adore-operator", NS)
    fake = tmp_path / "fake-adore.sh"
    fake.write_text('#!/bin/sh\necho \'{"ok":true,"metrics":{}}\' > "$ADORE_TERMINATION_LOG"\n')
    fake.chmod(0o755)
    with cluster.api_client() as api:
        kubelet = StandInKubelet(api, NS, argv0_map={"adore": str(fake)}, workdir=tmp_path / "kubelet").start()
        log = (tmp_path / "operator.log").open("ab")
        op = subprocess.Popen([str(Path(sys.executable).parent / "adore-operator"), "--namespace", NS],
                              env={**cp.env(sa_kubeconfig), "ADORE_METRICS_PORT": "0", "ADORE_RECONCILE_INTERVAL": "2"},
                              stdout=log, stderr=subprocess.STDOUT)
        obj: dict = {}
        try:
            client.CustomObjectsApi(api).create_namespaced_custom_object("adore.dev", "v1alpha1", NS,
                                                                        "adorerounds", doc)
            obj = _wait_round(api, doc["metadata"]["name"], timeout=180)
        except AssertionError as e:
            obj = {"status": {"phase": f"not finished: {e}"}}
        finally:
            op.terminate()
            op.wait(15)
            kubelet.stop()
            log.close()
        operator_log = (tmp_path / "operator.log").read_text()[-3000:]
        assert obj["status"]["phase"] == "Succeeded", json.dumps(obj["status"])[:2000] + "\noperator log:\n" + operator_log
        assert "Forbidden" not in operator_log and " 403" not in operator_log, operator_log
        jobs = client.BatchV1Api(api).list_namespaced_job(NS, label_selector="adore.dev/round=cluster").items
        assert len(jobs) == 8
        pod = jobs[0].spec.template.spec
        assert pod.volumes[1].persistent_volume_claim.claim_name == "adore-workdir"
        assert any(v.config_map and v.config_map.name == "adore-rules" for v in pod.volumes)


@needs_helm
@needs_cluster
def test_helm_uninstall_keeps_the_workdir_claim_and_the_crd(installed):
    from kubernetes import client

    cluster, _ = installed
    helm("uninstall", "adore", "-n", NS, "--wait", env=cluster.env())
    with cluster.api_client() as api:
        apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
        with pytest.raises(client.ApiException) as e:
            apps.read_namespaced_deployment("adore-operator", NS)
        assert e.value.status == 404
        with pytest.raises(client.ApiException):
            client.RbacAuthorizationV1Api(api).read_cluster_role("adore-operator")
        # Round outputs and promoted models survive an uninstall; so does the CRD (helm never deletes crds/).
        core.read_namespaced_persistent_volume_claim("adore-workdir", NS)
        client.ApiextensionsV1Api(api).read_custom_resource_definition("adorerounds.adore.dev")


def test_kind_path_skips_with_a_reason_without_a_docker_engine(tmp_path, monkeypatch):
    """STAND-IN binaries: a `kind` that exists and a `docker` whose engine does not answer."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "kind is not installed" in kind_missing_reason()
    for name, body in (("kind", "exit 0"), ("docker", "echo 'Cannot connect to the Docker daemon' >&2; exit 1")):
        (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
        (tmp_path / name).chmod(0o755)
    reason = kind_missing_reason()
    assert "no Docker engine" in reason and "Cannot connect" in reason
    monkeypatch.setenv("ADORE_TEST_CLUSTER", "auto")
    assert chosen_provider() == "local"
    monkeypatch.setenv("ADORE_TEST_CLUSTER", "kind")
    assert missing_cluster_reason() == reason
