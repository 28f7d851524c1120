"""StandInKubelet: a TEST STAND-IN for the kubelet. It is not a kubelet.

This machine cannot run container images (no container runtime), so a real
kubelet cannot run here. To let integration tests see the *real* Job
controller (and the operator) drive Pods to completion, this stand-in:

1. registers one fake Node (default name ``stand-in-kubelet``, status Ready)
   so the Pod GC does not treat its Pods as orphans;
2. polls the Pods of the given namespace(s); every Pending Pod with no node
   (there is no scheduler either) is bound to that Node with a real Binding;
3. runs the Pod's init containers and then its FIRST container as a local
   subprocess (``command`` + ``args``; the image is ignored, see
   ``image_entrypoints`` for images that rely on their entrypoint), with:
   - the environment of the test process, plus the container's ``env``:
     ``value`` (with ``$(VAR)`` expansion), ``valueFrom.fieldRef``
     (metadata.name/namespace/uid/labels/annotations, spec.nodeName,
     spec.serviceAccountName, status.podIP/hostIP), ``secretKeyRef``,
     ``configMapKeyRef``, and ``envFrom``;
   - volume mounts mapped to local directories: a PVC by claim name through
     the ``volumes`` mapping given by the test (else one directory per claim,
     shared by all Pods of this stand-in, so stages can hand files on), a
     hostPath to the same path (or the mapping's entry), emptyDir to a
     per-Pod directory, configMap/secret written out as files. A process
     cannot see a mount, so every occurrence of a ``mountPath`` in the
     command, args, env values and workingDir is REWRITTEN to the local
     directory;
   - ``terminationMessagePath`` likewise rewritten to a local file, which is
     also put in the env var ``TERMINATION_MESSAGE_PATH`` (configurable);
   - ``python``/``python3`` as argv[0] replaced by ``sys.executable``;
4. patches the Pod status like the kubelet does: Running with a running
   container state, then Succeeded/Failed with a terminated state (exitCode,
   reason, and ``message`` = last 4 KiB of the termination-message file if
   the container wrote one, else the tail of its stdout/stderr). With
   restartPolicy OnFailure/Always a failing container is restarted in place
   and restartCount counts up, as the Job controller's backoff expects;
5. when a bound Pod gets a deletionTimestamp (Job deleted, deadline passed,
   ...), kills the process group and deletes the Pod with grace 0, as the
   kubelet confirms a deletion.

Not done: probes, resources/limits, security contexts, more than one main
container (only the first runs), ``kubectl logs``/``exec`` (there is no
kubelet server; use ``StandInKubelet.logs()``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from adore.timestamps import now_iso as _now

MESSAGE_LIMIT = 4096


def _tail_bytes(path: Path, limit: int = MESSAGE_LIMIT) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def _expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined vars replaced, $$ -> $, the rest kept."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_RE.sub(sub, s)


@dataclass
class PodRun:
    """What the stand-in did for one Pod (for assertions in tests)."""

    namespace: str
    name: str
    uid: str
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # the container's env only
    cwd: str = ""
    mounts: dict[str, str] = field(default_factory=dict)  # mountPath -> local dir
    log: Path | None = None
    termination_message_file: Path | None = None
    exit_codes: list[int] = field(default_factory=list)
    message: str = ""
    phase: str = "Pending"
    done: threading.Event = field(default_factory=threading.Event)
    proc: subprocess.Popen | None = None
    deleting: bool = False


class _PodGone(Exception):
    pass


class StandInKubelet:
    """Runs Pods of ``namespace`` as local processes; see the module docstring. A TEST STAND-IN."""

    def __init__(
        self,
        api_client,
        namespace: str | Iterable[str] | None,
        *,
        volumes: dict[str, str | Path] | None = None,
        node_name: str = "stand-in-kubelet",
        workdir: str | Path | None = None,
        poll_interval: float = 0.2,
        argv0_map: dict[str, str] | None = None,
        image_entrypoints: dict[str, list[str]] | None = None,
        cwd: str | Path | None = None,
        extra_env: dict[str, str] | None = None,
        termination_message_env: str | None = "TERMINATION_MESSAGE_PATH",
        restart_delay: float = 0.5,
    ) -> None:
        from kubernetes import client

        # Own ApiClient (own connection pool) for the background thread.
        self._api = client.ApiClient(api_client.configuration)
        self._core = client.CoreV1Api(self._api)
        if namespace is None:
            self.namespaces: list[str] | None = None
        elif isinstance(namespace, str):
            self.namespaces = [namespace]
        else:
            self.namespaces = list(namespace)
        self.volumes = {k: str(v) for k, v in (volumes or {}).items()}
        self.node_name = node_name
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="stand-in-kubelet-"))
        self.poll_interval = poll_interval
        self.argv0_map = {"python": sys.executable, "python3": sys.executable}
        self.argv0_map.update(argv0_map or {})
        self.image_entrypoints = dict(image_entrypoints or {})
        self.cwd = str(cwd) if cwd else None
        self.extra_env = dict(extra_env or {})
        self.termination_message_env = termination_message_env
        self.restart_delay = restart_delay

        self.runs: dict[str, PodRun] = {}  # "ns/name" -> PodRun
        self._by_uid: dict[str, PodRun] = {}
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        self.errors: list[str] = []  # unexpected errors of the poll loop (tests may assert it is empty)

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> "StandInKubelet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "StandInKubelet":
        self._ensure_node()
        self._loop = threading.Thread(target=self._poll_loop, name="stand-in-kubelet", daemon=True)
        self._loop.start()
        return self

    def stop(self) -> None:
        """Stop polling and kill the processes still running (their Pods end up Failed, exit 143)."""
        self._stop.set()
        for run in list(self._by_uid.values()):
            self._kill(run, grace=1.0)
        if self._loop:
            self._loop.join(timeout=10)
        for t in self._threads:
            t.join(timeout=10)
        self._api.close()
        if self._own_workdir and os.environ.get("ADORE_KEEP_CONTROLPLANE") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------- helpers
    def logs(self, pod_name: str, namespace: str | None = None) -> str:
        """stdout+stderr of a Pod's container (all restarts), like ``kubectl logs``."""
        run = self._find(pod_name, namespace)
        return run.log.read_text(errors="replace") if run and run.log and run.log.exists() else ""

    def wait_for(self, pod_name: str, namespace: str | None = None, timeout: float = 30.0) -> PodRun:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self._find(pod_name, namespace)
            if run and run.done.wait(timeout=0.1):
                return run
            time.sleep(0.05)
        raise TimeoutError(f"pod {pod_name} did not finish in {timeout}s")

    def _find(self, pod_name: str, namespace: str | None) -> PodRun | None:
        for key, run in list(self.runs.items()):
            if run.name == pod_name and (namespace is None or run.namespace == namespace):
                return run
        return None

    # ----------------------------------------------------------- API calls
    def _raw(self, method: str, path: str, body=None, content_type: str = "application/json"):
        """One REST call with plain JSON in and out (camelCase, exactly the manifests' shape)."""
        url = self._api.configuration.host + path
        headers = {"Accept": "application/json", "Content-Type": content_type}
        self._api.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
        r = self._api.rest_client.request(method, url, headers=headers, body=body)
        data = r.read() if hasattr(r, "read") else r.data
        if r.status == 404:
            raise _PodGone(path)
        if not 200 <= r.status < 300:
            raise RuntimeError(f"{method} {path}: {r.status} {data[:500]!r}")
        return json.loads(data) if data else None

    def _ensure_node(self) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {"kubernetes.io/hostname": self.node_name, "adore.test/stand-in-kubelet": "true"},
            },
        }
        try:
            self._raw("POST", "/api/v1/nodes", node)
        except RuntimeError as e:
            if " 409 " not in str(e):
                raise
        now = _now()
        status = {
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "StandInKubeletReady",
                     "message": "test stand-in for the kubelet", "lastHeartbeatTime": now,
                     "lastTransitionTime": now},
                ],
                "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                              {"type": "Hostname", "address": self.node_name}],
                "capacity": {"cpu": str(os.cpu_count() or 1), "memory": "16Gi", "pods": "110"},
                "allocatable": {"cpu": str(os.cpu_count() or 1), "memory": "16Gi", "pods": "110"},
            }
        }
        self._raw("PATCH", f"/api/v1/nodes/{self.node_name}/status", status,
                  "application/strategic-merge-patch+json")

    def _patch_status(self, run: PodRun, status: dict) -> None:
        self._raw("PATCH", f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/status",
                  {"status": status}, "application/strategic-merge-patch+json")

    # ----------------------------------------------------------- poll loop
    def _list_pods(self) -> list[dict]:
        if self.namespaces is None:
            return self._raw("GET", "/api/v1/pods")["items"]
        items: list[dict] = []
        for ns in self.namespaces:
            try:
                items += self._raw("GET", f"/api/v1/namespaces/{ns}/pods")["items"]
            except _PodGone:
                pass
        return items

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                for pod in self._list_pods():
                    self._handle(pod)
            except Exception as e:  # keep polling; record for the test
                msg = f"{type(e).__name__}: {e}"
                if not self.errors or self.errors[-1] != msg:
                    self.errors.append(msg)
            self._stop.wait(self.poll_interval)

    def _handle(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        node = spec.get("nodeName")
        if node and node != self.node_name:
            return
        uid = meta["uid"]
        run = self._by_uid.get(uid)
        if meta.get("deletionTimestamp"):
            if run is None:
                if node == self.node_name:  # ours, but not running (finished, or an earlier stand-in)
                    self._force_delete(meta["namespace"], meta["name"], uid)
                return
            if not run.deleting:
                run.deleting = True
                grace = float(meta.get("deletionGracePeriodSeconds") or 0)
                t = threading.Thread(target=self._delete_run, args=(run, min(grace, 5.0)), daemon=True)
                self._threads.append(t)
                t.start()
            return
        if run is not None or pod.get("status", {}).get("phase", "Pending") != "Pending":
            return
        run = PodRun(namespace=meta["namespace"], name=meta["name"], uid=uid)
        self._by_uid[uid] = run
        self.runs[f"{run.namespace}/{run.name}"] = run
        if not node:
            binding = {
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": run.name, "namespace": run.namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
            }
            try:
                self._raw("POST", f"/api/v1/namespaces/{run.namespace}/pods/{run.name}/binding", binding)
            except (_PodGone, RuntimeError):
                del self._by_uid[uid]  # deleted or bound elsewhere meanwhile; look again next poll
                self.runs.pop(f"{run.namespace}/{run.name}", None)
                return
        t = threading.Thread(target=self._run_pod, args=(run, pod), name=f"pod-{run.name}", daemon=True)
        self._threads.append(t)
        t.start()

    def _force_delete(self, namespace: str, name: str, uid: str) -> None:
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": uid}}
        try:
            self._raw("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body)
        except (_PodGone, RuntimeError):
            pass

    def _kill(self, run: PodRun, grace: float) -> None:
        p = run.proc
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)

    def _delete_run(self, run: PodRun, grace: float) -> None:
        self._kill(run, grace)
        run.done.wait(timeout=15)
        self._force_delete(run.namespace, run.name, run.uid)

    # ------------------------------------------------------------- one pod
    def _run_pod(self, run: PodRun, pod: dict) -> None:
        try:
            self._run_pod_inner(run, pod)
        except _PodGone:
            pass
        except Exception as e:
            self.errors.append(f"pod {run.namespace}/{run.name}: {type(e).__name__}: {e}")
            try:
                self._patch_status(run, {"phase": "Failed", "reason": "StandInKubeletError", "message": str(e)[:1000]})
            except Exception:
                pass
        finally:
            run.done.set()

    def _run_pod_inner(self, run: PodRun, pod: dict) -> None:
        spec = pod["spec"]
        podtmp = self.workdir / "pods" / f"{run.namespace}_{run.name}_{run.uid[:8]}"
        podtmp.mkdir(parents=True, exist_ok=True)
        volumes = self._volumes(pod, podtmp)
        restart_policy = spec.get("restartPolicy", "Always")
        start_time = _now()
        init_statuses: list[dict] = []

        for ic in spec.get("initContainers") or []:
            while True:
                code, message, started, finished = self._run_container(run, pod, ic, volumes, podtmp, init=True)
                st = {"name": ic["name"], "image": ic.get("image", ""), "imageID": "", "ready": code == 0,
                      "restartCount": 0,
                      "state": {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                               "message": message, "startedAt": started, "finishedAt": finished}}}
                if code == 0 or restart_policy == "Never" or run.deleting or self._stop.is_set():
                    break
                time.sleep(self.restart_delay)
            init_statuses.append(st)
            if code != 0:
                run.phase = "Failed"
                self._patch_status(run, {
                    "phase": "Failed", "startTime": start_time, "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                    "initContainerStatuses": init_statuses,
                    "conditions": [{"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized",
                                    "lastTransitionTime": _now()}],
                })
                return

        c = spec["containers"][0]
        restarts = 0
        delay = self.restart_delay
        while True:
            code, message, started, finished = self._run_container(
                run, pod, c, volumes, podtmp, restarts=restarts, init_statuses=init_statuses, start_time=start_time)
            terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                          "message": message, "startedAt": started, "finishedAt": finished,
                          "containerID": f"stand-in://{run.uid}"}
            if code == 128:
                terminated["reason"] = "StartError"
            again = (not run.deleting and not self._stop.is_set()
                     and (restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0)))
            if not again:
                break
            restarts += 1
            self._patch_status(run, {"containerStatuses": [{
                "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "started": False,
                "restartCount": restarts,
                "state": {"waiting": {"reason": "CrashLoopBackOff" if code else "Completed"}},
                "lastState": {"terminated": terminated}}]})
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

        phase = "Succeeded" if code == 0 else "Failed"
        run.phase = phase
        now = _now()
        self._patch_status(run, {
            "phase": phase,
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
            ],
            "containerStatuses": [{
                "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "started": False,
                "restartCount": restarts, "containerID": f"stand-in://{run.uid}",
                "state": {"terminated": terminated}}],
        })

    # --------------------------------------------------------- one process
    def _run_container(self, run: PodRun, pod: dict, c: dict, volumes: dict[str, Path], podtmp: Path, *,
                       init: bool = False, restarts: int = 0, init_statuses=None, start_time=None):
        """Run one container to its end. Returns (exitCode, message, startedAt, finishedAt)."""
        mounts: dict[str, str] = {}
        for vm in c.get("volumeMounts") or []:
            local = volumes.get(vm["name"])
            if local is None:
                continue
            if vm.get("subPath"):
                local = local / vm["subPath"]
                if not local.exists():
                    local.mkdir(parents=True, exist_ok=True)
            mounts[vm["mountPath"].rstrip("/") or "/"] = str(local)
        term_path = c.get("terminationMessagePath") or "/dev/termination-log"
        term_file = podtmp / f"{c['name']}.termination-log"
        term_file.write_bytes(b"")
        rewrites = dict(mounts)
        rewrites[term_path] = str(term_file)
        rw = _Rewriter(rewrites)

        pod_env = self._container_env(pod, c)
        pod_env = {k: rw(v) for k, v in pod_env.items()}
        env = dict(os.environ)
        env.update(self.extra_env)
        env["HOSTNAME"] = run.name
        env.update(pod_env)
        if self.termination_message_env:
            env[self.termination_message_env] = str(term_file)

        command = list(c.get("command") or [])
        if not command:
            command = list(self.image_entrypoints.get(c.get("image", ""), []))
        argv = [rw(_expand(a, pod_env)) for a in command + list(c.get("args") or [])]
        if argv and argv[0] in self.argv0_map:
            argv[0] = self.argv0_map[argv[0]]
        cwd = rw(c["workingDir"]) if c.get("workingDir") else (self.cwd or str(podtmp))
        log = self.workdir / "logs" / f"{run.namespace}_{run.name}_{c['name']}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if not init:
            run.argv, run.env, run.cwd, run.mounts = argv, pod_env, cwd, mounts
            run.log, run.termination_message_file = log, term_file

        started = _now()
        if not init:
            self._patch_status(run, {
                "phase": "Running", "startTime": start_time or started, "hostIP": "127.0.0.1",
                "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                "initContainerStatuses": init_statuses or None,
                "conditions": [
                    {"type": "Initialized", "status": "True", "lastTransitionTime": started},
                    {"type": "Ready", "status": "True", "lastTransitionTime": started},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": started},
                ],
                "containerStatuses": [{
                    "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True, "started": True,
                    "restartCount": restarts, "containerID": f"stand-in://{run.uid}",
                    "state": {"running": {"startedAt": started}}}],
            })
        if not argv:
            msg = (f"stand-in kubelet: container {c['name']} has no command and image "
                   f"{c.get('image')!r} has no entry in image_entrypoints")
            return 128, msg, started, _now()
        if run.deleting or self._stop.is_set():
            return 137, "deleted before start", started, _now()
        with open(log, "ab") as out:
            try:
                proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as e:
                return 128, f"stand-in kubelet: cannot start {argv[0]!r}: {e}", started, _now()
            run.proc = proc
            code = proc.wait()
        if code < 0:  # killed by a signal: report like a container runtime does
            code = 128 - code
        if not init:
            run.exit_codes.append(code)
        message = _tail_bytes(term_file).strip() or _tail_bytes(log)
        if not init:
            run.message = message
        return code, message, started, _now()

    def _container_env(self, pod: dict, c: dict) -> dict[str, str]:
        meta, spec = pod["metadata"], pod["spec"]
        env: dict[str, str] = {}
        ns = meta["namespace"]
        for ef in c.get("envFrom") or []:
            prefix = ef.get("prefix", "")
            if "configMapRef" in ef:
                data = self._get_data("configmaps", ns, ef["configMapRef"]["name"],
                                      ef["configMapRef"].get("optional", False), b64=False)
            elif "secretRef" in ef:
                data = self._get_data("secrets", ns, ef["secretRef"]["name"],
                                      ef["secretRef"].get("optional", False), b64=True)
            else:
                continue
            env.update({prefix + k: v for k, v in data.items()})
        for e in c.get("env") or []:
            name = e["name"]
            if "valueFrom" not in e:
                env[name] = _expand(e.get("value", ""), env)
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                env[name] = self._field(vf["fieldRef"]["fieldPath"], meta, spec)
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                is_secret = "secretKeyRef" in vf
                ref = vf["secretKeyRef" if is_secret else "configMapKeyRef"]
                data = self._get_data("secrets" if is_secret else "configmaps", ns, ref["name"],
                                      ref.get("optional", False), b64=is_secret)
                if ref["key"] in data:
                    env[name] = data[ref["key"]]
                elif not ref.get("optional", False):
                    raise RuntimeError(f"env {name}: key {ref['key']} not in {ref['name']}")
            elif "resourceFieldRef" in vf:
                res = vf["resourceFieldRef"]["resource"]  # e.g. limits.cpu
                kind, _, rname = res.partition(".")
                env[name] = str(((c.get("resources") or {}).get(kind) or {}).get(rname, "0"))
        return env

    @staticmethod
    def _field(path: str, meta: dict, spec: dict) -> str:
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return (meta.get(m.group(1)) or {}).get(m.group(2), "")
        return {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": spec.get("nodeName") or "",
            "spec.serviceAccountName": spec.get("serviceAccountName") or "",
            "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }.get(path, "")

    def _get_data(self, kind: str, ns: str, name: str, optional: bool, b64: bool) -> dict[str, str]:
        try:
            obj = self._raw("GET", f"/api/v1/namespaces/{ns}/{kind}/{name}")
        except _PodGone:
            if optional:
                return {}
            raise RuntimeError(f"{kind[:-1]} {ns}/{name} not found") from None
        data = obj.get("data") or {}
        if b64:
            return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in data.items()}
        return dict(data)

    def _volumes(self, pod: dict, podtmp: Path) -> dict[str, Path]:
        """volume name -> local directory."""
        ns = pod["metadata"]["namespace"]
        out: dict[str, Path] = {}
        for v in pod["spec"].get("volumes") or []:
            name = v["name"]
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                local = self.volumes.get(claim) or self.volumes.get(name)
                d = Path(local) if local else self.workdir / "pvc" / ns / claim
            elif "hostPath" in v:
                d = Path(self.volumes.get(name) or self.volumes.get(v["hostPath"]["path"]) or v["hostPath"]["path"])
            elif name in self.volumes:
                d = Path(self.volumes[name])
            else:
                d = podtmp / "volumes" / name
                if "configMap" in v or "secret" in v:
                    is_secret = "secret" in v
                    src = v["secret" if is_secret else "configMap"]
                    data = self._get_data("secrets" if is_secret else "configmaps", ns,
                                          src["secretName"] if is_secret else src["name"],
                                          src.get("optional", False), b64=is_secret)
                    d.mkdir(parents=True, exist_ok=True)
                    items = src.get("items") or [{"key": k, "path": k} for k in data]
                    for it in items:
                        if it["key"] in data:
                            f = d / it["path"]
                            f.parent.mkdir(parents=True, exist_ok=True)
                            f.write_text(data[it["key"]])
            d.mkdir(parents=True, exist_ok=True)
            out[name] = d
        return out


class _Rewriter:
    """Replace container paths (mountPaths, the termination-message path) by local ones inside strings."""

    def __init__(self, mapping: dict[str, str]) -> None:
        self.items = sorted(((k, v) for k, v in mapping.items() if k and k != "/"), key=lambda kv: -len(kv[0]))
        if self.items:
            alt = "|".join(re.escape(k) for k, _ in self.items)
            self.re = re.compile(r"(?<![\w./\-])(" + alt + r")(?=$|[/\s\"',;:=)\]}])")
            self.map = dict(self.items)

    def __call__(self, s: str) -> str:
        if not self.items or not s:
            return s
        return self.re.sub(lambda m: self.map[m.group(1)], s)
