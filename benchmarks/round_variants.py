"""A round and its variants, each one spec change away from it, over several distill seeds, on the same upstream files.

    python benchmarks/round_variants.py examples/default-round.yaml --workdir runs/variants --seeds 0,1,2 \
        --variant 'grid:stages.distill.interpolation=[0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]' \
        --variant uncertain:dataset.poolSelection=uncertain

The round itself runs first, once per seed (distill.seed), in WORKDIR/base-seedS; every other run starts from a
copy of base-seed<first seed>'s stage folders, and the runner reruns exactly the stages whose fingerprint the
change touches (a distill knob: distill and after; dataset.poolSelection: annotate and after), so all arms share
the first run's prepare, SFT and KTO. A variant is NAME:PATH=VALUE[;PATH=VALUE...], PATH dotted under spec as the
round file spells it (camelCase), VALUE read as YAML. Prints the CPU, then per arm the mean and the range over the
seeds of the student's dev figures from evaluate (report.json), and how many of its students promote let through
the round's gates; WORKDIR/variants.json keeps every run's figures.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
COLUMNS = ["macroF1", "auc", "ndcg@10", "qwk", "rmse", "accuracy"]


def parse_variant(text: str) -> tuple[str, dict]:
    """"NAME:a.b=V;c=W" -> (NAME, {"a.b": V, "c": W}), each V read as YAML."""
    name, sep, rest = text.partition(":")
    if not sep or not name or not rest:
        raise SystemExit(f"--variant {text!r}: expected NAME:PATH=VALUE[;PATH=VALUE...]")
    changes = {}
    for part in rest.split(";"):
        path, eq, value = part.partition("=")
        if not eq or not path.strip():
            raise SystemExit(f"--variant {text!r}: {part!r} is not PATH=VALUE")
        changes[path.strip()] = yaml.safe_load(value)
    return name, changes


def variant_doc(doc: dict, changes: dict, seed: int) -> dict:
    """The round document with the changes made under spec and distill.seed set."""
    out = copy.deepcopy(doc)
    for path, value in {**changes, "stages.distill.seed": seed}.items():
        node = out["spec"]
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def run_arm(doc: dict, source: Path, work: Path, start_from: Path | None) -> dict:
    from adore.runner import run_round
    from adore.schema import parse_round

    round_ = parse_round(doc, str(source), base_dir=source.parent)
    if start_from is not None and not (work / "stages").exists():
        shutil.copytree(start_from / "stages", work / "stages")
    run_round(round_, work)
    report = json.loads((work / "stages" / "evaluate" / "report.json").read_text())
    promoted = json.loads((work / "stages" / "promote" / "metrics.json").read_text()).get("promoted")
    return {**{k: report["student"].get(k) for k in COLUMNS}, "promoted": bool(promoted)}


def summary(runs: list[dict]) -> dict:
    out = {"seeds": len(runs), "promoted": sum(r["promoted"] for r in runs)}
    for k in COLUMNS:
        vals = [r[k] for r in runs if r.get(k) is not None]
        if vals:
            out[k] = {"mean": round(float(np.mean(vals)), 4), "min": round(min(vals), 4), "max": round(max(vals), 4)}
    return out


def table(arms: dict[str, dict]) -> str:
    cols = [c for c in COLUMNS if any(c in s for s in arms.values())]
    lines = ["| arm | " + " | ".join(cols) + " | promoted |", "|---" * (len(cols) + 2) + "|"]
    for name, s in arms.items():
        cells = [f"{s[c]['mean']:.3f} ({s[c]['min']:.3f}-{s[c]['max']:.3f})" if c in s else "–" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['promoted']}/{s['seeds']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("round", type=Path)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--seeds", default="0,1,2", help="distill seeds of every arm")
    ap.add_argument("--variant", action="append", default=[], help="NAME:PATH=VALUE[;PATH=VALUE...] (repeatable)")
    args = ap.parse_args()
    from adore import hardware

    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [("base", {})] + [parse_variant(v) for v in args.variant]
    source = args.round.resolve()
    doc = yaml.safe_load(source.read_text())
    first = args.workdir / f"base-seed{seeds[0]}"
    runs: dict[str, list[dict]] = {}
    for name, changes in variants:
        for seed in seeds:
            work = args.workdir / f"{name}-seed{seed}"
            start = None if work == first else first
            runs.setdefault(name, []).append({"seed": seed, **run_arm(variant_doc(doc, changes, seed), source, work, start)})
    arms = {name: summary(r) for name, r in runs.items()}
    (args.workdir / "variants.json").write_text(json.dumps({"round": str(args.round), "variants": dict(variants),
                                                            "runs": runs, "arms": arms, "cpu": hardware.cpu_summary()},
                                                           indent=1))
    print(f"# {hardware.cpu_summary()}; {args.round}, distill seeds {args.seeds}; mean (min-max) on dev")
    print(table(arms))


if __name__ == "__main__":
    main()
