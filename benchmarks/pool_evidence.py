"""What choosing the LLM's pairs costs: annotate's evidence (the rule features and the MiniLM cosine) of every
candidate pair, under random and under uncertain pool selection, on a workdir whose prepare stage has run.

    python benchmarks/quality_table.py --dataset homedepot --row bm25 --workdir runs/hd   # runs prepare
    python benchmarks/pool_evidence.py --workdir runs/hd

Per selection: the seconds select_pool takes (uncertain computes the candidates' evidence to choose with,
random none) and the seconds the correction's evidence takes after it (random computes it there; uncertain
reuses what select_pool computed), with the rows encoded in all. Prints the CPU first.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    from adore import hardware
    from adore.schema import load_round
    from adore.stages import annotate, common
    from adore.stages.base import StageContext

    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True, help="a workdir with round.yaml and stages/prepare")
    args = ap.parse_args()
    work = Path(args.workdir)
    print(f"# {hardware.cpu_summary()}")
    print("| selection | candidates | LLM pairs | select_pool s | evidence after it s | rows encoded |")
    print("|---|---|---|---|---|---|")
    for how in ("random", "uncertain"):
        round_ = load_round(work / "round.yaml", check_paths=False)
        round_.spec.dataset.pool_selection = how
        ctx = StageContext(round_, work, work / "scratch", "annotate")
        items = common.catalogue(ctx)
        encoded, real = [], annotate.evidence
        annotate.evidence = lambda c, it, rows: encoded.append(len(rows)) or real(c, it, rows)
        try:
            t0 = time.time()
            chosen = annotate.select_pool(ctx, items)
            t1 = time.time()
            chosen.evidence(ctx, items, "candidates")
            chosen.evidence(ctx, items, "seed")
            t2 = time.time()
        finally:
            annotate.evidence = real
        print(f"| {how} | {len(chosen.candidates)} | {len(chosen.llm)} | {t1 - t0:.1f} | {t2 - t1:.1f} | {sum(encoded)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
