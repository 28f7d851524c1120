"""The operator with many rounds in flight, against the local control plane.

    python benchmarks/operator_scale.py [--rounds 50]

Real: etcd, kube-apiserver, kube-controller-manager (job controller), kopf and
the operator process (with its RBAC token). Stand-ins: the test kubelet
(tests/cluster/kubelet.py) runs each Pod as a local process, and the stage
command is a shell script that writes a termination message and exits, so the
figures measure the operator's hand-offs, not stage work.

Prints: stage hand-off latency (a Job seen Complete -> the next stage's Job
seen created, by this script's own watch), p50/p95; the operator's reconcile
latency (its histogram); its peak resident memory; the wall time until every
round Succeeded.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from cluster import ControlPlane, StandInKubelet, install_adore, missing_reason  # noqa: E402

GROUP, VERSION, PLURAL, NS = "adore.dev", "v1alpha1", "adorerounds", "bench"
STAGES = ["prepare", "sft", "align", "annotate", "synthesize", "distill", "evaluate", "promote"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def histogram_mean(metrics: str, name: str) -> tuple[float, float]:
    vals = {}
    for line in metrics.splitlines():
        if line.startswith(f"{name}_sum") or line.startswith(f"{name}_count"):
            key, v = line.rsplit(" ", 1)
            vals[key.split("{")[0]] = float(v)
    return vals.get(f"{name}_sum", 0.0), vals.get(f"{name}_count", 0.0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    if missing_reason():
        print(missing_reason())
        return 1
    from kubernetes import client, watch

    fake = REPO / "build" / "fake-adore.sh"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\necho \'{"ok":true,"metrics":{}}\' > "$ADORE_TERMINATION_LOG"\n')
    fake.chmod(0o755)
    with ControlPlane() as cp:
        api = cp.api_client()
        kubeconfig = install_adore(cp, [NS])
        seen_complete: dict[str, float] = {}
        seen_created: dict[str, float] = {}
        stop = threading.Event()

        def watch_jobs():
            w = watch.Watch()
            batch = client.BatchV1Api(cp.api_client())
            while not stop.is_set():
                for ev in w.stream(batch.list_namespaced_job, NS, timeout_seconds=5):
                    job = ev["object"]
                    now = time.time()
                    seen_created.setdefault(job.metadata.name, now)
                    if any(c.type == "Complete" and c.status == "True" for c in (job.status.conditions or [])):
                        seen_complete.setdefault(job.metadata.name, now)

        threading.Thread(target=watch_jobs, daemon=True).start()
        port = 18089
        op = subprocess.Popen([str(Path(sys.executable).parent / "adore-operator"), "--namespace", NS],
                              env={**cp.env(kubeconfig), "ADORE_METRICS_PORT": str(port), "ADORE_RECONCILE_INTERVAL": "10"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        doc = yaml.safe_load((REPO / "examples" / "default-round.yaml").read_text())
        doc["spec"]["runtime"] = {"image": "bench", "workdirClaim": "work"}
        kubelet = StandInKubelet(api, NS, argv0_map={"adore": str(fake)}).start()
        custom = client.CustomObjectsApi(api)
        t0 = time.time()
        for i in range(args.rounds):
            custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL,
                                                   {**doc, "metadata": {"name": f"r{i:03d}", "namespace": NS}})
        peak = 0.0
        done = 0
        while time.time() - t0 < args.timeout:
            peak = max(peak, rss_mb(op.pid))
            items = custom.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)["items"]
            done = sum((i.get("status") or {}).get("phase") == "Succeeded" for i in items)
            if done == args.rounds:
                break
            time.sleep(1)
        wall = time.time() - t0
        import urllib.request

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        stop.set()
        kubelet.stop()
        op.terminate()
        op.wait(20)
    handoffs = []
    for i in range(args.rounds):
        for a, b in zip(STAGES, STAGES[1:]):
            ja, jb = f"r{i:03d}-{a}", f"r{i:03d}-{b}"
            if ja in seen_complete and jb in seen_created:
                handoffs.append(seen_created[jb] - seen_complete[ja])
    handoffs.sort()
    s, n = histogram_mean(metrics, "adore_operator_reconcile_seconds")
    print(f"machine: {os.cpu_count()} cores; rounds: {args.rounds}; succeeded: {done}; wall {wall:.0f} s")
    if handoffs:
        q = statistics.quantiles(handoffs, n=20)
        print(f"stage hand-off (Job Complete seen -> next Job seen): n={len(handoffs)} "
              f"p50 {statistics.median(handoffs):.2f} s, p95 {q[18]:.2f} s, max {handoffs[-1]:.2f} s")
    print(f"operator reconcile: {int(n)} reconciles, mean {1000 * s / max(n, 1):.1f} ms")
    print(f"operator peak RSS: {peak:.0f} MiB")
    return 0 if done == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
