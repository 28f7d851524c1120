"""Does the loop pay? Round 2 from round 1's logged low-confidence traffic against round 2 from random pairs.

    python benchmarks/loop_gain.py --dataset homedepot --workdir runs/loop-gain
    python benchmarks/loop_gain.py --dataset bundled --workdir runs/loop-gain-bundled   # the default round

Round 1 is examples/DATASET-round.yaml (default-round.yaml for bundled) with its gates off, run by
`adore run` in WORKDIR/r1. Its student is served by a real tritonserver and the traffic is replayed
through it: every training-split pair of round 1's prepare (train labels, pool, evidence pool; query
and candidate title, never a dev query), 100 candidates of one query per request. Two rounds then
build on round 1 (previousRound r1: the same teacher chain, the same student start, the same split,
seed and LLM budget dataset.poolSize), and differ in one thing:
  (a) r2-logged: the pool starts with the logged low-confidence pairs (dataset.maxServedPairs: poolSize);
  (b) r2-random: dataset.maxServedPairs 0, the pool is random training pairs as in round 1.
Every student is scored on the same dev pairs by its own evaluate stage (seed cut-offs); BM25 beside.
The loop pays only if (a) beats (b) and round 1; the script says which.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
COLUMNS = ("macroF1", "auc", "ndcg@10")


def base_doc(args, work: Path) -> dict:
    name = "default" if args.dataset == "bundled" else args.dataset
    doc = yaml.safe_load((ROOT / "examples" / f"{name}-round.yaml").read_text())
    spec = doc["spec"]
    if args.dataset != "bundled":
        spec["dataset"]["path"] = str((Path(args.data) / args.dataset / "pairs.csv").resolve())
        if args.max_pairs:
            spec["dataset"]["maxPairs"] = args.max_pairs
    if args.pool:
        spec["dataset"]["poolSize"] = args.pool
    if args.teacher:  # the same teacher in every round and arm: the arms differ only in the pool
        spec["teacher"]["model"] = args.teacher
    spec["teacher"]["rulesFile"] = str((ROOT / "examples" / spec["teacher"]["rulesFile"]).resolve())
    spec["promotion"].update({"repository": str((work / "triton-repo").resolve()),
                              "requestLog": {"path": str((work / "request-log").resolve()), "sampleRate": 0.0},
                              "gates": {"minMacroF1": 0.0, "mustBeatBm25": False, "mustBeatPrevious": False}})
    return doc


def run_round(doc: dict, work: Path, name: str) -> dict:
    doc = {**doc, "metadata": {"name": name}}
    f = work / f"{name}.yaml"
    f.write_text(yaml.safe_dump(doc, sort_keys=False))
    adore = Path(sys.executable).with_name("adore")
    subprocess.run([str(adore), "run", str(f), "--workdir", str(work / name)], check=True)
    report = json.loads((work / name / "stages" / "evaluate" / "report.json").read_text())
    prep = json.loads((work / name / "stages" / "prepare" / "metrics.json").read_text())
    return {"round": name, **{k: report["student"].get(k) for k in COLUMNS},
            "bm25": {k: report["bm25"].get(k) for k in COLUMNS}, "servedPairs": prep.get("servedPairs"),
            "devPairs": prep["devPairs"], "poolPairs": prep["poolPairs"]}


def traffic(work: Path) -> Path:
    """Every training-split pair of round 1 as {query, title, attributes} (prepare never puts a dev query there)."""
    prep = work / "r1" / "stages" / "prepare"
    rows = lambda name: [json.loads(x) for x in (prep / name).read_text().splitlines() if x.strip()]  # noqa: E731
    items = {r["item_id"]: r for r in rows("catalogue.jsonl")}
    out = work / "traffic.jsonl"
    seen = set()
    with out.open("w") as f:
        for p in rows("train_labels.jsonl") + rows("pool.jsonl") + rows("evidence_pool.jsonl"):
            if (p["query"], p["item_id"]) not in seen:
                seen.add((p["query"], p["item_id"]))
                it = items[p["item_id"]]
                f.write(json.dumps({"query": p["query"], "title": it["title"], "attributes": it.get("attributes") or {}}) + "\n")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=["bundled", "homedepot", "crowdflower"], required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--max-pairs", type=int, help="override dataset.maxPairs")
    ap.add_argument("--pool", type=int, help="override dataset.poolSize (the LLM budget of every round)")
    ap.add_argument("--teacher", help="override teacher.model (e.g. builtin:smollm2-135m: a round in minutes, not an hour)")
    args = ap.parse_args()
    from adore.hardware import cpu_summary
    from adore.loop import read_traffic, serve_and_replay
    from adore.schema import load_round

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    doc = base_doc(args, work)
    results = [run_round(doc, work, "r1")]
    r1 = load_round(work / "r1.yaml")
    replay = serve_and_replay(r1, work / "r1", read_traffic(traffic(work)), lambda m: print(m, file=sys.stderr))
    pool = doc["spec"]["dataset"].get("poolSize", 160)
    for name, served in (("r2-logged", pool), ("r2-random", 0)):
        d2 = json.loads(json.dumps(doc))
        d2["spec"]["previousRound"] = "r1"
        d2["spec"]["dataset"]["maxServedPairs"] = served
        results.append(run_round(d2, work, name))
    (work / "loop_gain.json").write_text(json.dumps({"replay": replay, "rounds": results, "cpu": cpu_summary()}, indent=1))
    print(f"# {args.dataset}, teacher {doc['spec']['teacher']['model']}, dev {results[0]['devPairs']} pairs, "
          f"LLM budget {pool} pairs per round; "
          f"replayed {replay['pairs']} pairs in {replay['seconds']} s; {cpu_summary()}")
    print("| round | served pairs in pool | macro-F1 | AUC | NDCG@10 |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['round']} | {r['servedPairs']} | {r['macroF1']:.4f} | {r['auc']:.4f} | {r['ndcg@10']:.4f} |")
    b = results[0]["bm25"]
    print(f"| BM25 | | {b['macroF1']:.4f} | {b['auc']:.4f} | {b['ndcg@10']:.4f} |")
    a, rnd, one = results[1], results[2], results[0]
    pays = all(a[k] > rnd[k] and a[k] > one[k] for k in ("macroF1", "ndcg@10"))
    print(f"the loop {'pays' if pays else 'does NOT pay'} here: (a) {'beats' if pays else 'does not beat'} "
          f"both (b) and round 1 on macro-F1 and NDCG@10")
    return 0


if __name__ == "__main__":
    sys.exit(main())
