"""Run a whole round in a fresh workdir and print wall time per stage and the report.

    python benchmarks/round_timing.py examples/default-round.yaml [--workdir /tmp/bench-default]

Prints the CPU, one line per stage (wall seconds, its share of the round, its work per second:
pairs labelled/s, examples trained/s, ...; adore.stages.costs), each stage's key metrics and the
evaluation table. With --existing it reads a finished workdir instead of running the round.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("round")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--existing", action="store_true", help="report on the finished WORKDIR, do not run")
    args = ap.parse_args()
    workdir = Path(args.workdir or f"/tmp/adore-bench-{Path(args.round).stem}")
    rc, wall = 0, None
    if not args.existing:
        shutil.rmtree(workdir, ignore_errors=True)
        adore = Path(sys.executable).parent / "adore"
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        t0 = time.time()
        rc = subprocess.run([str(adore), "run", args.round, "--workdir", str(workdir)], env=env).returncode
        wall = time.time() - t0
    print_costs(args.round, workdir, wall, rc)
    report = workdir / "stages" / "evaluate" / "report.md"
    if report.is_file():
        print()
        print(report.read_text())
    return rc


def print_costs(round_file: str, workdir: Path, wall: float | None, rc: int) -> None:
    from adore.hardware import cpu_summary
    from adore.schema import load_round
    from adore.stages import costs

    status = json.loads((workdir / "status.json").read_text())
    spec = load_round(Path(round_file), check_paths=False).spec
    stages = {}
    for name, st in status["stages"].items():
        f = workdir / "stages" / name / "metrics.json"
        stages[name] = (st.get("durationSeconds"), json.loads(f.read_text()) if f.is_file() else {})
    print(f"\ncpu: {cpu_summary()}; python {sys.version.split()[0]}")
    took = f"wall {wall:.0f} s" if wall is not None else "read from the workdir"
    print(f"round {round_file}: phase {status['phase']}, {took} (exit {rc})")
    print(f"  {'stage':<11} {'seconds':>8} {'share':>6}  work per second")
    for r in costs(stages, spec):
        rate = f"{r['perSecond']:.3g} {r['unit']}/s ({r['count']:.0f} in all)" if r["perSecond"] else "–"
        share = f"{100 * r['share']:5.1f}%" if r["share"] is not None else "–"
        print(f"  {r['stage']:<11} {r['seconds'] or 0:>8.1f} {share:>6}  {rate}")
    for name, st in status["stages"].items():
        print(f"  {name:<11} {json.dumps(st.get('metrics', {}))}")


if __name__ == "__main__":
    sys.exit(main())
