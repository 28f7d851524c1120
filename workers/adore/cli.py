"""The `adore` command."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import termination
from .errors import AdoreError
from .schema import RoundFileError, load_round

EXIT_INVALID = 2


def _load(path: str, check_paths: bool = True):
    try:
        return load_round(path, check_paths)
    except RoundFileError as e:
        print(f"{e.path}: {len(e.problems)} problem(s)", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        termination.write(termination.failed("invalid round: " + "; ".join(e.problems)))
        sys.exit(EXIT_INVALID)


def _workdir(args, round_) -> Path:
    return Path(args.workdir) if args.workdir else Path("runs") / round_.metadata.name


def cmd_validate(args) -> int:
    r = _load(args.round, check_paths=not args.no_files)
    print(f"{args.round}: valid AdoreRound {r.metadata.name!r}")
    return 0


def cmd_run(args) -> int:
    from .runner import run_round

    r = _load(args.round)
    workdir = _workdir(args, r)
    print(f"round {r.metadata.name}: workdir {workdir}", file=sys.stderr)
    try:
        status = run_round(r, workdir, Path(args.round))
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (AdoreError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0 if status.phase == "Succeeded" else 1


def cmd_loop(args) -> int:
    from .loop import run_loop

    r = _load(args.round)
    loop_dir = Path(args.workdir) if args.workdir else Path("runs") / f"{r.metadata.name}-loop"
    print(f"loop {r.metadata.name}: {args.rounds} rounds in {loop_dir}", file=sys.stderr)
    try:
        rounds = run_loop(Path(args.round), loop_dir, args.rounds, Path(args.traffic))
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (AdoreError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(rounds, indent=2))
    return 0 if all(x["phase"] == "Succeeded" for x in rounds) else 1


def _run_shard(r, workdir: Path, args) -> dict:
    from .schema import SHARDED_STAGES, parse_shard
    from .stages import BY_NAME
    from .stages.base import execute

    if args.name not in SHARDED_STAGES:
        raise ValueError(f"--shard applies to the {' and '.join(SHARDED_STAGES)} stages only, not {args.name!r}")
    i, n = parse_shard(args.shard)
    want = getattr(r.spec.stages, args.name).shards
    if n != want:
        raise ValueError(f"--shard {args.shard}: spec.stages.{args.name}.shards is {want}")
    _, metrics = execute(BY_NAME[args.name].shard(i, n), r, workdir, force=args.force)
    return metrics


def cmd_stage(args) -> int:
    from .runner import stage_summary, run_stage

    r = _load(args.round)
    try:
        if args.shard:
            metrics = _run_shard(r, _workdir(args, r), args)
        else:
            metrics = run_stage(r, _workdir(args, r), args.name, force=args.force)
    except (AdoreError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        termination.write(termination.failed(str(e), args.name))
        return 1
    except Exception as e:
        termination.write(termination.failed(f"{type(e).__name__}: {e}", args.name))
        raise
    termination.write(termination.succeeded(args.name, stage_summary(args.name, metrics)))
    print(json.dumps(metrics, indent=1))
    return 0


def cmd_crd(args) -> int:
    from .crd import render_crd

    text = render_crd()
    if args.check:
        current = Path(args.check).read_text() if Path(args.check).is_file() else ""
        if current != text:
            print(f"{args.check} is out of date: regenerate with `adore crd > {args.check}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


def cmd_status(args) -> int:
    path = Path(args.workdir) / "status.json"
    if not path.is_file():
        print(f"no status in {args.workdir}", file=sys.stderr)
        return 1
    print(path.read_text(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    p = argparse.ArgumentParser(prog="adore", description="ADORE relevance rounds, locally or as Kubernetes Jobs.")
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check a round file; exit 2 with every problem found")
    v.add_argument("round")
    v.add_argument("--no-files", action="store_true", help="do not check that referenced files exist")
    v.set_defaults(fn=cmd_validate)
    r = sub.add_parser("run", help="run a whole round locally (resumes where it stopped)")
    r.add_argument("round")
    r.add_argument("--workdir", help="default: runs/ROUND-NAME")
    r.set_defaults(fn=cmd_run)
    lp = sub.add_parser("loop", help="run N rounds that feed each other: serve each promoted student with a real "
                                     "Triton, replay traffic through it, start the next round from its request log")
    lp.add_argument("round")
    lp.add_argument("--rounds", type=int, default=2, help="rounds in the lineage (default 2)")
    lp.add_argument("--traffic", required=True, help="JSON Lines of {query, title, attributes} candidates to replay")
    lp.add_argument("--workdir", help="folder of the lineage's rounds (default: runs/ROUND-NAME-loop)")
    lp.set_defaults(fn=cmd_loop)
    from .stages import NAMES

    s = sub.add_parser("stage", help="run one stage (what a Kubernetes Job runs)")
    s.add_argument("name", choices=NAMES)
    s.add_argument("--round", required=True)
    s.add_argument("--workdir")
    s.add_argument("--force", action="store_true", help="run even if outputs are current")
    s.add_argument("--shard", metavar="i/N", help="annotate: label shard i of N (0-based); synthesize: teacher-check shard i of N; as one of N Jobs")
    s.set_defaults(fn=cmd_stage)
    c = sub.add_parser("crd", help="print the AdoreRound CRD generated from the schema")
    c.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from the generated CRD")
    c.set_defaults(fn=cmd_crd)
    st = sub.add_parser("status", help="print a workdir's status.json")
    st.add_argument("--workdir", required=True)
    st.set_defaults(fn=cmd_status)
    from .serving.commands import add_parsers as add_serving_parsers

    add_serving_parsers(sub)  # score, rollback
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if os.environ.get("ADORE_VERBOSE") else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
