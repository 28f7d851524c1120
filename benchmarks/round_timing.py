"""Run a whole round in a fresh workdir and print wall time per stage and the report.

    python benchmarks/round_timing.py examples/default-round.yaml [--workdir /tmp/bench-default]

Prints one line per stage (seconds, key metrics) and the evaluation table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("round")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    workdir = Path(args.workdir or f"/tmp/adore-bench-{Path(args.round).stem}")
    shutil.rmtree(workdir, ignore_errors=True)
    adore = Path(sys.executable).parent / "adore"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.time()
    res = subprocess.run([str(adore), "run", args.round, "--workdir", str(workdir)], env=env)
    wall = time.time() - t0
    status = json.loads((workdir / "status.json").read_text())
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"round {args.round}: phase {status['phase']}, wall {wall:.0f} s (exit {res.returncode})")
    for name, st in status["stages"].items():
        print(f"  {name:<11} {st.get('durationSeconds') or 0:>7.1f} s  {json.dumps(st.get('metrics', {}))}")
    report = workdir / "stages" / "evaluate" / "report.md"
    if report.is_file():
        print()
        print(report.read_text())
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
