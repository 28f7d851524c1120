"""A real local Kubernetes control plane: etcd + kube-apiserver + kube-controller-manager.

No containers and no kubelet: this is the API and the controllers (Job,
garbage collector, service accounts and their tokens, ...) exactly as a
cluster runs them. Pods that controllers create stay Pending unless a test
runs ``tests.cluster.kubelet.StandInKubelet``.

Binaries are looked up in ``$KUBEBUILDER_ASSETS`` (the envtest convention),
then in ``${ADORE_K8S_CACHE:-~/.cache/adore/k8s-1.20}/bin``, which
``.ci/controlplane.sh`` fills (Kubernetes 1.20.2 from Debian's source package).

Usage::

    with ControlPlane() as cp:
        core = kubernetes.client.CoreV1Api(cp.api_client())
        cp.create_namespace("demo")          # waits for the default ServiceAccount token
        kubeconfig = cp.token_for("worker", "demo")

Everything lives in one temporary directory (certs, etcd data, logs of each
process under ``logs/``), removed by ``stop()``; set
``ADORE_KEEP_CONTROLPLANE=1`` to keep it for debugging.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
DEFAULT_CACHE = Path(os.environ.get("ADORE_K8S_CACHE") or Path.home() / ".cache/adore/k8s-1.20")

# Controllers that make sense without nodes, cloud or volumes. Node lifecycle
# would taint and evict the stand-in kubelet's fake Node (it sends no
# heartbeats); nodeipam/route/service/cloud-node-lifecycle need a cloud;
# attachdetach needs real volume plugins.
DEFAULT_CONTROLLERS = (
    "*",
    "-nodelifecycle",
    "-nodeipam",
    "-route",
    "-service",
    "-cloud-node-lifecycle",
    "-attachdetach",
)
# Alpha in 1.20 (GA later, so kind clusters have it on): let Jobs with
# ttlSecondsAfterFinished clean up here as they do there.
DEFAULT_FEATURE_GATES = {"TTLAfterFinished": True}


class ControlPlaneError(RuntimeError):
    """The control plane could not start (the message has the failing log's tail)."""


def _has_all(d: Path | str | None) -> bool:
    if not d:
        return False
    return all(os.access(Path(d) / b, os.X_OK) and (Path(d) / b).is_file() for b in BINARIES)


def find_binaries() -> Path | None:
    """Directory with etcd, kube-apiserver and kube-controller-manager, or None."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if _has_all(assets):
        return Path(assets)
    cache_bin = DEFAULT_CACHE / "bin"
    if _has_all(cache_bin):
        return cache_bin
    return None


def missing_reason() -> str | None:
    """Why a ControlPlane cannot start here (for pytest.skip), or None if it can."""
    if find_binaries() is None:
        where = [str(DEFAULT_CACHE / "bin")]
        if os.environ.get("KUBEBUILDER_ASSETS"):
            where.insert(0, f"KUBEBUILDER_ASSETS={os.environ['KUBEBUILDER_ASSETS']}")
        return (
            "no local Kubernetes control-plane binaries (etcd, kube-apiserver, "
            f"kube-controller-manager) in {' or '.join(where)}; run .ci/controlplane.sh "
            "(builds them, ~10 min once) or set KUBEBUILDER_ASSETS"
        )
    if shutil.which("openssl") is None:
        return "openssl is not installed (needed to make the control plane's certificates)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, nbytes: int = 6000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            return f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"<no log: {e}>"


def _log_excerpt(path: Path) -> str:
    """Error lines (flag errors, klog E/F lines) plus the log's tail, without a usage dump."""
    text = _tail(path, 200_000)
    errors = [ln for ln in text.splitlines() if re.match(r"(Error:|F\d{4} |E\d{4} )", ln)][-15:]
    usage = text.find("\nUsage:")
    tail = text[:usage] if usage >= 0 else text
    out = ""
    if errors:
        out += "error lines:\n" + "\n".join(errors) + "\n"
    return out + "tail:\n" + tail[-4000:]


def _pdeathsig() -> None:  # runs in the child between fork and exec
    # If the test process dies without stop() (SIGKILL, crash), take the
    # control plane down with it instead of leaving orphans holding ports.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed:\n{r.stderr}")


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1, as a context manager."""

    def __init__(
        self,
        bin_dir: str | Path | None = None,
        *,
        workdir: str | Path | None = None,
        startup_timeout: float = 90.0,
        controllers: Iterable[str] = DEFAULT_CONTROLLERS,
        feature_gates: dict[str, bool] | None = None,
        extra_apiserver_args: Iterable[str] = (),
        extra_controller_manager_args: Iterable[str] = (),
        keep: bool | None = None,
    ) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir else find_binaries()
        if self.bin_dir is None or not _has_all(self.bin_dir):
            raise ControlPlaneError(missing_reason() or f"binaries missing in {self.bin_dir}")
        self._workdir_arg = Path(workdir) if workdir else None
        self.startup_timeout = startup_timeout
        self.controllers = ",".join(controllers)
        self.feature_gates = DEFAULT_FEATURE_GATES if feature_gates is None else feature_gates
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_controller_manager_args = list(extra_controller_manager_args)
        self.keep = (os.environ.get("ADORE_KEEP_CONTROLPLANE") == "1") if keep is None else keep

        self.dir: Path | None = None
        self.kubeconfig: str | None = None
        self.server: str | None = None
        self.ca_file: str | None = None
        self.admin_token = secrets.token_hex(16)
        self.etcd_url: str | None = None
        self.startup_seconds: float | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._logs: dict[str, Path] = {}
        self._lock = threading.Lock()
        self._help_cache: dict[str, str] = {}
        self._saved_default: tuple | None = None
        self.version = self._version()
        self.minor_version = int(self.version.split(".")[1])

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> "ControlPlane":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ControlPlane":
        t0 = time.monotonic()
        if self._workdir_arg:
            self._workdir_arg.mkdir(parents=True, exist_ok=True)
            self.dir = self._workdir_arg
        else:
            self.dir = Path(tempfile.mkdtemp(prefix="adore-controlplane-"))
        (self.dir / "logs").mkdir(exist_ok=True)
        try:
            self._make_certs()
            self._start_etcd()
            self._start_apiserver()
            self._write_kubeconfigs()
            self._start_controller_manager()
            self._wait_controller_manager()
        except BaseException:
            self.stop(keep_dir=True)  # the error names the log; keep it to read
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self, keep_dir: bool = False) -> None:
        self._restore_default()
        with self._lock:
            for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
                p = self._procs.pop(name, None)
                if p is None or p.poll() is not None:
                    continue
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)
            if self.dir and not (self.keep or keep_dir) and self._workdir_arg is None:
                shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ accessors
    def log_path(self, process: str) -> Path:
        return self._logs[process]

    def api_client(self, kubeconfig: str | None = None):
        """A kubernetes.client.ApiClient for the admin (or the given kubeconfig)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=kubeconfig or self.kubeconfig)

    def set_default(self, kubeconfig: str | None = None) -> None:
        """Make this control plane the process-wide default until ``stop()``.

        Sets ``KUBECONFIG`` and also the kubernetes client's default kubeconfig
        location, which the client reads from the environment only once, at
        import time: without this, ``kubernetes.config.load_kube_config()`` --
        and so kopf's login in an in-process ``kopf.testing.KopfRunner`` --
        keeps looking at ~/.kube/config ("Ran out of valid credentials").
        """
        from kubernetes import client, config
        from kubernetes.config import kube_config

        path = kubeconfig or self.kubeconfig
        if self._saved_default is None:
            self._saved_default = (os.environ.get("KUBECONFIG"), kube_config.KUBE_CONFIG_DEFAULT_LOCATION,
                                   client.Configuration.get_default_copy())
        os.environ["KUBECONFIG"] = path
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = path
        config.load_kube_config(config_file=path)

    def _restore_default(self) -> None:
        if self._saved_default is None:
            return
        from kubernetes import client
        from kubernetes.config import kube_config

        env, location, default = self._saved_default
        self._saved_default = None
        if env is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = env
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = location
        client.Configuration.set_default(default)

    def env(self, kubeconfig: str | None = None) -> dict[str, str]:
        """os.environ plus KUBECONFIG for this control plane (for subprocesses like kopf/helm/kubectl)."""
        e = dict(os.environ)
        e["KUBECONFIG"] = kubeconfig or self.kubeconfig
        return e

    def create_namespace(self, name: str, timeout: float = 30.0) -> None:
        """Create a namespace and wait until its default ServiceAccount has a token.

        On 1.20 the ServiceAccount admission plugin rejects Pods until the
        token controller has made that Secret; waiting here keeps the Job
        controller from backing off on its first Pod.
        """
        from kubernetes import client

        with self.api_client() as api:
            core = client.CoreV1Api(api)
            try:
                core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
            except client.ApiException as e:
                if e.status != 409:
                    raise
            deadline = time.monotonic() + timeout
            while True:
                try:
                    sa = core.read_namespaced_service_account("default", name)
                    if sa.secrets:
                        return
                except client.ApiException as e:
                    if e.status != 404:
                        raise
                if time.monotonic() > deadline:
                    raise ControlPlaneError(
                        f"namespace {name}: no default ServiceAccount token after {timeout}s\n"
                        + _tail(self._logs["kube-controller-manager"])
                    )
                time.sleep(0.1)

    def token_for(self, service_account: str, namespace: str, timeout: float = 30.0) -> str:
        """Kubeconfig path that authenticates as ``system:serviceaccount:<ns>:<sa>``.

        Creates the ServiceAccount if it does not exist, then a Secret of type
        ``kubernetes.io/service-account-token`` for it (the 1.20 way; on
        >= 1.24 the same Secret still works), waits for the token controller
        to fill it, and writes a kubeconfig with that bearer token whose
        context namespace is ``namespace``. Permissions come from whatever
        RBAC the test (or a Helm chart) binds to the ServiceAccount.
        """
        from kubernetes import client

        with self.api_client() as api:
            core = client.CoreV1Api(api)
            try:
                core.create_namespaced_service_account(
                    namespace, {"metadata": {"name": service_account}}
                )
            except client.ApiException as e:
                if e.status != 409:
                    raise
            secret_name = f"{service_account}-token-{secrets.token_hex(3)}"
            core.create_namespaced_secret(
                namespace,
                {
                    "metadata": {
                        "name": secret_name,
                        "annotations": {"kubernetes.io/service-account.name": service_account},
                    },
                    "type": "kubernetes.io/service-account-token",
                },
            )
            deadline = time.monotonic() + timeout
            while True:
                s = core.read_namespaced_secret(secret_name, namespace)
                if s.data and s.data.get("token"):
                    token = base64.b64decode(s.data["token"]).decode()
                    break
                if time.monotonic() > deadline:
                    raise ControlPlaneError(
                        f"token controller did not fill secret {namespace}/{secret_name} in {timeout}s\n"
                        + _tail(self._logs["kube-controller-manager"])
                    )
                time.sleep(0.1)
        path = self.dir / f"kubeconfig-{namespace}-{service_account}"
        self._write_kubeconfig(path, user=f"{namespace}-{service_account}", token=token, namespace=namespace)
        return str(path)

    # ------------------------------------------------------------- internals
    def _version(self) -> str:
        """'1.20.2' from ``kube-apiserver --version`` ('Kubernetes v1.20.2')."""
        r = subprocess.run([str(self.bin_dir / "kube-apiserver"), "--version"], capture_output=True, text=True)
        out = (r.stdout + r.stderr).strip()
        try:
            return out.split("v", 1)[1].split()[0].split("-")[0].split("+")[0]
        except IndexError:
            raise ControlPlaneError(f"cannot read kube-apiserver version from {out!r}") from None

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = self.dir / "logs" / f"{name}.log"
        self._logs[name] = log
        with open(log, "ab") as f:
            f.write(("$ " + " ".join(args) + "\n").encode())
            f.flush()
            use_pdeathsig = threading.current_thread() is threading.main_thread()
            p = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                preexec_fn=_pdeathsig if use_pdeathsig else None,
            )
        self._procs[name] = p
        return p

    def _fail(self, name: str, what: str) -> ControlPlaneError:
        p = self._procs.get(name)
        state = f"exited with {p.returncode}" if p is not None and p.poll() is not None else "still running"
        return ControlPlaneError(f"{name} {what} ({state}); log {self._logs.get(name)}:\n{_log_excerpt(self._logs[name])}")

    def _make_certs(self) -> None:
        d = self.dir / "pki"
        d.mkdir(exist_ok=True)
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                 "-days", "30", "-subj", "/CN=adore-test-ca", cwd=d)
        (d / "apiserver.ext").write_text(
            "basicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
        )
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
                 "-subj", "/CN=kube-apiserver", cwd=d)
        _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", "apiserver.crt", "-days", "30", "-extfile", "apiserver.ext", cwd=d)
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
        self.ca_file = str(d / "ca.crt")
        self._cm_token = secrets.token_hex(16)
        # token,user,uid,"group1,group2"
        (d / "tokens.csv").write_text(
            f'{self.admin_token},admin,admin-uid,"system:masters"\n'
            f"{self._cm_token},system:kube-controller-manager,kcm-uid\n"
        )

    def _start_etcd(self) -> None:
        client_port, peer_port = _free_port(), _free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        p = self._spawn("etcd", [
            str(self.bin_dir / "etcd"),
            "--name=default",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync",
            "--logger=zap",
            "--log-level=warn",
        ])
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if p.poll() is not None:
                raise self._fail("etcd", "failed to start")
            try:
                with urllib.request.urlopen(self.etcd_url + "/health", timeout=2) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise self._fail("etcd", f"not healthy after {self.startup_timeout}s")
            time.sleep(0.1)

    def _help(self, binary: str) -> str:
        if binary not in self._help_cache:
            r = subprocess.run([str(self.bin_dir / binary), "--help"], capture_output=True, text=True)
            self._help_cache[binary] = r.stdout + r.stderr
        return self._help_cache[binary]

    def _if_flag(self, binary: str, flag: str, value: str) -> list[str]:
        """``--flag=value`` only if this binary still has the flag (lets newer KUBEBUILDER_ASSETS work)."""
        return [f"--{flag}={value}"] if f"--{flag} " in self._help(binary) else []

    def _gates(self) -> list[str]:
        gates = dict(self.feature_gates or {})
        if self.minor_version >= 21:
            # beta/GA from 1.21 (on by default), and naming it fails once removed
            gates.pop("TTLAfterFinished", None)
        if not gates:
            return []
        return ["--feature-gates=" + ",".join(f"{k}={str(v).lower()}" for k, v in gates.items())]

    def _start_apiserver(self) -> None:
        pki = self.dir / "pki"
        port = _free_port()
        self.server = f"https://127.0.0.1:{port}"
        p = self._spawn("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={port}",
            *self._if_flag("kube-apiserver", "insecure-port", "0"),  # no plain-HTTP port (gone in newer versions)
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            *self._gates(),
            *self.extra_apiserver_args,
        ])
        ctx = ssl.create_default_context(cafile=self.ca_file)
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        while True:
            if p.poll() is not None:
                raise self._fail("kube-apiserver", "failed to start")
            req = urllib.request.Request(
                self.server + "/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
            )
            try:
                with urllib.request.urlopen(req, timeout=3, context=ctx) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:
                last = f"/readyz {e.code}: {e.read()[-2000:].decode('utf-8', 'replace')}"
            except OSError as e:
                last = f"/readyz: {e}"
            if time.monotonic() > deadline:
                raise self._fail("kube-apiserver", f"not ready after {self.startup_timeout}s (last {last})")
            time.sleep(0.2)

    def _write_kubeconfig(self, path: Path, *, user: str, token: str, namespace: str | None = None) -> None:
        ctx: dict = {"cluster": "adore-local", "user": user}
        if namespace:
            ctx["namespace"] = namespace
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "adore-local", "cluster": {"server": self.server, "certificate-authority": self.ca_file}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": ctx}],
            "current-context": user,
        }
        path.write_text(json.dumps(cfg, indent=2))  # JSON is valid YAML for every kubeconfig reader
        path.chmod(0o600)

    def _write_kubeconfigs(self) -> None:
        admin = self.dir / "kubeconfig"
        self._write_kubeconfig(admin, user="admin", token=self.admin_token)
        self.kubeconfig = str(admin)
        self._write_kubeconfig(self.dir / "kube-controller-manager.kubeconfig",
                               user="system:kube-controller-manager", token=self._cm_token)

    def _start_controller_manager(self) -> None:
        pki = self.dir / "pki"
        kc = str(self.dir / "kube-controller-manager.kubeconfig")
        self._spawn("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kc}",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--controllers={self.controllers}",
            "--leader-elect=false",
            *self._if_flag("kube-controller-manager", "port", "0"),  # no insecure serving (1.20 default 10252)
            "--secure-port=0",   # no HTTPS either: nothing to collide with other test runs
            "--v=1",
            *self._gates(),
            *self.extra_controller_manager_args,
        ])

    def _wait_controller_manager(self) -> None:
        """Ready when the service-account and token controllers have done their first work."""
        from kubernetes import client

        deadline = time.monotonic() + self.startup_timeout
        p = self._procs["kube-controller-manager"]
        with self.api_client() as api:
            core = client.CoreV1Api(api)
            while True:
                if p.poll() is not None:
                    raise self._fail("kube-controller-manager", "failed to start")
                try:
                    sa = core.read_namespaced_service_account("default", "default")
                    if sa.secrets:
                        return
                except client.ApiException as e:
                    if e.status != 404:
                        raise
                if time.monotonic() > deadline:
                    raise self._fail(
                        "kube-controller-manager",
                        f"no default ServiceAccount token after {self.startup_timeout}s",
                    )
                time.sleep(0.1)
