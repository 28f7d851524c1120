"""What one custom-metric call costs inside Triton's python backend, the serving path's fixed cost per row.

    .venv/bin/python benchmarks/triton_metric_cost.py [--rows 100,1000] [--repeats 5]

The served model.py recorded every scored row in the adore_score histogram (one Metric.observe per
row) and counted the request in two counters. Each call of the python backend's metric API is a
round trip to the Triton process, so a 100-row request pays 100 of them on top of the work that the
in-process path (benchmarks/triton_throughput.py) measures. A toy python model, served by the real
tritonserver, times N observe calls, N counter increments, for scale a numpy histogram of N values,
and adore.serving.backend.ServingMetrics.record of N rows (buckets counted in numpy) twice: sending
its increments in the request (flush_seconds 0: one per bucket plus four) and as the served models
do now (a flush thread sends them every second, so the request only adds to a numpy total); the
figures are the median over REPEATS requests, printed with the CPU.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

CONFIG = """name: "metric_cost"
backend: "python"
max_batch_size: 0
input [ { name: "N" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "SECONDS" data_type: TYPE_FP64 dims: [ 5 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""

MODEL = '''import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        mf = pb_utils.MetricFamily
        self.families = [mf(name="cost_histogram", description="h", kind=mf.HISTOGRAM),
                         mf(name="cost_counter", description="c", kind=mf.COUNTER)]
        self.histogram = self.families[0].Metric(labels={"m": "x"}, buckets=[0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75])
        self.counter = self.families[1].Metric(labels={"m": "x"})
        from adore.serving import backend  # what the served models record with
        self.sync = backend.ServingMetrics(pb_utils, "metric_cost_sync", "1", 3, 0.5, flush_seconds=0)
        self.served = backend.ServingMetrics(pb_utils, "metric_cost", "1", 3, 0.5)

    def execute(self, requests):
        out = []
        for r in requests:
            n = int(pb_utils.get_input_tensor_by_name(r, "N").as_numpy()[0])
            values = np.random.default_rng(0).random(n) * 2
            t0 = time.perf_counter()
            for v in values:
                self.histogram.observe(float(v))
            t1 = time.perf_counter()
            for _ in range(n):
                self.counter.increment(1.0)
            t2 = time.perf_counter()
            np.histogram(values, bins=8)
            t3 = time.perf_counter()
            probs = np.full((n, 3), 1 / 3, np.float32)
            self.sync.record(probs, values.reshape(-1, 1))
            t4 = time.perf_counter()
            self.served.record(probs, values.reshape(-1, 1))
            t5 = time.perf_counter()
            out.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("SECONDS", np.array([t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]))]))
        return out

    def finalize(self):
        self.sync.close()
        self.served.close()
        self.histogram = self.counter = self.sync = self.served = None
'''


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="100,1000", help="metric calls per request")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import tritonclient.http as http

    from adore import hardware
    from adore.serving.server import TritonServer

    print(f"# {hardware.cpu_summary()}")
    print("| rows | observe ms | µs per observe | counter increments ms | numpy histogram ms "
          "| ServingMetrics.record ms, sent in the request | with the flush thread (served) |\n"
          "|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "metric_cost" / "1").mkdir(parents=True)
        (Path(tmp) / "metric_cost" / "config.pbtxt").write_text(CONFIG)
        (Path(tmp) / "metric_cost" / "1" / "model.py").write_text(MODEL)
        with TritonServer(tmp, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=120) as server:
            server.load("metric_cost")
            client = http.InferenceServerClient(server.http_url.split("://")[-1])
            for n in (int(x) for x in args.rows.split(",")):
                inp = http.InferInput("N", [1], "INT32")
                inp.set_data_from_numpy(np.array([n], np.int32))
                t = np.median([client.infer("metric_cost", [inp]).as_numpy("SECONDS") for _ in range(args.repeats)], axis=0)
                print(f"| {n} | {t[0] * 1e3:.2f} | {t[0] * 1e6 / n:.1f} | {t[1] * 1e3:.2f} | {t[2] * 1e3:.3f} | {t[3] * 1e3:.2f} | {t[4] * 1e3:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
