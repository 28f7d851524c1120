""""A cluster" for integration tests: a kind cluster or the local control plane.

Tests written against ``TestCluster`` run on either provider:

- ``kind``: a real cluster with a kubelet and a container runtime. Needs the
  ``kind`` binary and a running Docker engine; the adore images are built from
  the repository's Dockerfiles and loaded into the cluster, so Pods run them.
- ``local``: ``ControlPlane`` (etcd, kube-apiserver, kube-controller-manager
  on this machine). No kubelet: Pods stay Pending unless a test runs the
  ``StandInKubelet``, which is a test stand-in (see kubelet.py).

``ADORE_TEST_CLUSTER`` picks one: ``kind``, ``local``, or ``auto`` (the
default: kind when it can run, else local). ``ADORE_KIND_CLUSTER`` names an
existing kind cluster to reuse (it is then neither created nor deleted).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .controlplane import ControlPlane, missing_reason

REPO = Path(__file__).resolve().parents[2]
# The images a kind cluster needs, built from the repository root: the chart's
# operator and the worker that spec.runtime.image defaults to.
KIND_IMAGES = {
    "adore-operator:0.1.0": "operator/Dockerfile",
    "adore-worker:0.1.0": "workers/Dockerfile",
}


def find_tool(name: str) -> str | None:
    """helm/kubectl on PATH, else the copy .ci/install-helm.sh cached."""
    found = shutil.which(name)
    if found:
        return found
    cache = os.environ.get("ADORE_HELM_CACHE")
    pattern = f"{cache}/bin/{name}" if cache else str(Path.home() / f".cache/adore/helm-layer-*/bin/{name}")
    hits = sorted(glob.glob(pattern))
    return hits[-1] if hits else None


def kind_missing_reason() -> str | None:
    """Why a kind cluster cannot run here (for pytest.skip), or None."""
    if shutil.which("kind") is None:
        return "kind is not installed (https://kind.sigs.k8s.io); the kind path runs where kind and Docker exist"
    if shutil.which("docker") is None:
        return "docker is not installed: kind needs a Docker engine"
    r = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"no Docker engine answers `docker info` ({(r.stderr or r.stdout).strip().splitlines()[-1:]}): kind cannot start"
    return None


@dataclass
class TestCluster:
    """What a test needs from a cluster, whichever provider made it."""

    __test__ = False  # not a pytest class

    provider: str
    kubeconfig: str
    runs_pods: bool  # a real kubelet runs images (kind); False: the StandInKubelet is the test's job
    control_plane: ControlPlane | None = None
    _cleanup: list = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": self.kubeconfig}

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig)

    def create_namespace(self, name: str) -> None:
        if self.control_plane is not None:  # waits for the default ServiceAccount's token (1.20)
            self.control_plane.create_namespace(name)
            return
        from kubernetes import client

        with self.api_client() as api:
            try:
                client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
            except client.ApiException as e:
                if e.status != 409:
                    raise

    def close(self) -> None:
        while self._cleanup:
            self._cleanup.pop()()


def chosen_provider() -> str:
    choice = os.environ.get("ADORE_TEST_CLUSTER", "auto")
    if choice not in ("auto", "kind", "local"):
        raise ValueError(f"ADORE_TEST_CLUSTER={choice!r}: must be auto, kind or local")
    if choice == "auto":
        return "kind" if kind_missing_reason() is None else "local"
    return choice


def missing_cluster_reason() -> str | None:
    """Why the chosen provider cannot give a cluster here, or None."""
    provider = chosen_provider()
    return kind_missing_reason() if provider == "kind" else missing_reason()


def open_cluster(workdir: Path | None = None) -> TestCluster:
    """Start (or reuse) a cluster of the chosen provider; call ``close()`` when done."""
    if chosen_provider() == "kind":
        return _open_kind(Path(workdir or tempfile.mkdtemp(prefix="adore-kind-")))
    cp = ControlPlane().start()
    tc = TestCluster("local", cp.kubeconfig, runs_pods=False, control_plane=cp)
    tc._cleanup.append(cp.stop)
    return tc


def _run(*argv: str, **kw) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return r.stdout


def _open_kind(workdir: Path) -> TestCluster:
    name = os.environ.get("ADORE_KIND_CLUSTER") or "adore-test"
    reuse = name in _run("kind", "get", "clusters").split()
    cleanup = []
    if not reuse:
        _run("kind", "create", "cluster", "--name", name, "--wait", "180s", timeout=900)
        if os.environ.get("ADORE_KIND_KEEP") != "1":
            cleanup.append(lambda: subprocess.run(["kind", "delete", "cluster", "--name", name], capture_output=True))
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(_run("kind", "get", "kubeconfig", "--name", name))
    for image, dockerfile in KIND_IMAGES.items():
        _run("docker", "build", "-f", str(REPO / dockerfile), "-t", image, str(REPO), timeout=3600)
        _run("kind", "load", "docker-image", image, "--name", name, timeout=900)
    tc = TestCluster("kind", str(kubeconfig), runs_pods=True)
    tc._cleanup.extend(cleanup)
    return tc
