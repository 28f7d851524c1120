"""`adore score` and `adore rollback`: the serving side of the command line."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parsers(sub) -> None:
    s = sub.add_parser("score", help="score query-item pairs with a student served by Triton")
    s.add_argument("--url", required=True, help="Triton host:port (HTTP port, or gRPC port with --protocol grpc)")
    s.add_argument("--model", default="adore-student")
    s.add_argument("--protocol", choices=["http", "grpc"], default="http")
    s.add_argument("--version", type=int, help="a specific version (default: what Triton serves)")
    s.add_argument("--query", help="one pair: the query (with --title)")
    s.add_argument("--title", help="one pair: the item title")
    s.add_argument("--attributes", default="{}", help="one pair: the item's attributes as a JSON object")
    s.add_argument("--input", help="JSONL file of {query, title, attributes?} rows ('-' for stdin)")
    s.set_defaults(fn=score_command)
    r = sub.add_parser("rollback", help="serve the previous (or a given) version of a promoted student")
    r.add_argument("--repository", required=True, help="the Triton model repository promote writes")
    r.add_argument("--model", default="adore-student")
    r.add_argument("--to", type=int, help="version to serve (default: the one before the version served now)")
    r.add_argument("--triton-url", help="HTTP host:port of a Triton serving the repository: load and check it")
    r.add_argument("--tolerance", type=float, default=1e-3, help="max abs difference on the golden rows")
    r.add_argument("--from", dest="from_version", type=int,
                   help="roll back only while this version is served (safe to retry: once an older one is served, no change)")
    r.add_argument("--unpin", action="store_true", help="undo a rollback: serve the latest two versions again")
    r.set_defaults(fn=rollback_command)


def _rows(args) -> list[dict]:
    if args.input:
        lines = sys.stdin if args.input == "-" else Path(args.input).open(encoding="utf-8")
        rows = []
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    rows.append({"query": str(row["query"]), "title": str(row["title"]),
                                 "attributes": row.get("attributes") or {}})
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{args.input}:{n}: each line needs a JSON object with query and title ({e})")
        return rows
    if args.query is None or args.title is None:
        raise ValueError("give --query and --title, or --input FILE")
    try:
        attributes = json.loads(args.attributes)
    except ValueError as e:
        raise ValueError(f"--attributes: not JSON ({e})")
    if not isinstance(attributes, dict):
        raise ValueError("--attributes: must be a JSON object, e.g. '{\"brand\": \"YETI\"}'")
    return [{"query": args.query, "title": args.title, "attributes": attributes}]


def score_command(args) -> int:
    from .client import score

    try:
        rows = _rows(args)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        probs, scores = score(args.url, args.model, [r["query"] for r in rows], [r["title"] for r in rows],
                              [r["attributes"] for r in rows], protocol=args.protocol, version=args.version)
    except Exception as e:  # noqa: BLE001 - tritonclient raises its own and the transport's errors
        print(f"error: scoring with {args.model!r} at {args.url} ({args.protocol}) failed: {e}", file=sys.stderr)
        return 1
    for row, p, s in zip(rows, probs, scores):
        print(json.dumps({"query": row["query"], "title": row["title"], "probs": [round(float(x), 6) for x in p],
                          "score": round(float(s), 6)}, ensure_ascii=False))
    return 0


def rollback_command(args) -> int:
    from .control import TritonControl, TritonError
    from .repository import pin_version, served_version
    from .rollout import PromotionFailed, rollback

    try:
        if args.unpin:
            pin_version(Path(args.repository), args.model, None)
            if args.triton_url:
                TritonControl(args.triton_url).load(args.model)
            print(json.dumps({"version": served_version(Path(args.repository), args.model), "pinned": False}))
            return 0
        done = rollback(Path(args.repository), args.model, args.to, args.triton_url, args.tolerance,
                        args.from_version)
    except (ValueError, PromotionFailed, TritonError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({**done, "pinned": True}))
    return 0
