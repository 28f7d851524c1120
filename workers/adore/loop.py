"""`adore loop`: rounds that feed each other on one machine, as the operator's trigger chains them.

Round 1 runs; its promoted student is served by a real tritonserver; the
traffic file is replayed through it, so the request log fills with what the
student was unsure of; round 2 then builds on round 1 (spec.previousRound):
those pairs enter its pool, its student starts from round 1's, and its
promotion must not regress (gates.mustBeatPrevious). The same stage code as
on a cluster; only the trigger is replaced by "after the replay".

Rounds are named as the trigger names them (NAME, NAME-r2, ...) and lie side
by side in the loop's folder, with one Triton repository and one request log
shared by the lineage (WORKDIR/triton-repo, WORKDIR/request-log) unless the
round file gives absolute paths.

The traffic file: JSON Lines, one candidate per line,
{"query": ..., "title": ..., "attributes": {...}} (attributes optional),
sent to Triton 100 candidates of one query at a time, as a search page would.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import yaml

from .atomic import atomic_write_text
from .data.contract import DataError, _str, iter_jsonl

REQUEST_ROWS = 100  # candidates per request: one search page


def round_doc(base: dict, i: int, loop_dir: Path) -> dict:
    """Round i's document: named as the trigger names it, chained to round i-1, sharing the lineage's
    repository and request log."""
    doc = copy.deepcopy(base)
    name = base["metadata"]["name"]
    doc["metadata"]["name"] = name if i == 1 else f"{name}-r{i}"
    spec = doc["spec"]
    if i > 1:
        spec["previousRound"] = name if i == 2 else f"{name}-r{i - 1}"
    promo = spec.setdefault("promotion", {})
    repo = Path(promo.get("repository", "triton-repo"))
    promo["repository"] = str(repo if repo.is_absolute() else (loop_dir / repo).resolve())
    log = dict(promo.get("requestLog") or {})
    path = Path(log.get("path", "request-log"))
    log["path"] = str(path if path.is_absolute() else (loop_dir / path).resolve())
    promo["requestLog"] = log
    return doc


def read_traffic(path: Path) -> list[tuple[str, list[str], list[dict]]]:
    """(query, titles, attributes) per query, in first-seen order, from the traffic file."""
    by_query: dict[str, tuple[list[str], list[dict]]] = {}
    for row, rec in iter_jsonl(Path(path)):
        query, title = _str(path, row, rec, "query"), _str(path, row, rec, "title")
        attrs = rec.get("attributes") or {}
        if not isinstance(attrs, dict):
            raise DataError(path, row, "attributes", "expected an object")
        titles, a = by_query.setdefault(query, ([], []))
        titles.append(title)
        a.append(attrs)
    if not by_query:
        raise DataError(path, None, None, "no traffic rows")
    return [(q, t, a) for q, (t, a) in by_query.items()]


def replay(url: str, model: str, traffic, progress=None) -> dict:
    """Send the traffic through a served student, REQUEST_ROWS candidates of one query per request."""
    from .serving.client import Scorer

    t0, requests, pairs = time.time(), 0, 0
    with Scorer(url, model) as scorer:  # one connection for the whole replay, as a search front end keeps one
        for n, (query, titles, attrs) in enumerate(traffic, 1):
            for s in range(0, len(titles), REQUEST_ROWS):
                chunk = titles[s:s + REQUEST_ROWS]
                scorer.score([query] * len(chunk), chunk, attrs[s:s + REQUEST_ROWS])
                requests, pairs = requests + 1, pairs + len(chunk)
            if progress and (n % 50 == 0 or n == len(traffic)):
                progress(f"replay: {n}/{len(traffic)} queries, {pairs} pairs")
    return {"queries": len(traffic), "requests": requests, "pairs": pairs, "seconds": round(time.time() - t0, 1)}


def serve_and_replay(round_, workdir: Path, traffic, progress) -> dict:
    """Serve the lineage's latest student with a real Triton and replay the traffic through it."""
    from .serving.server import TritonServer

    promo = round_.spec.promotion
    repo = Path(promo.repository)
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=120,
                      workdir=workdir / "triton") as server:
        server.load(promo.model_name)
        return replay(server.http_url, promo.model_name, traffic, progress)


def run_loop(round_file: Path, loop_dir: Path, rounds: int, traffic_file: Path) -> list[dict]:
    """Run `rounds` chained rounds; returns one summary per round."""
    from .runner import run_round
    from .schema import parse_round
    from .serving.request_log import read_request_log

    round_file, loop_dir = Path(round_file), Path(loop_dir)
    base = yaml.safe_load(round_file.read_text())
    traffic = read_traffic(traffic_file)  # checked before hours of rounds, not after the first
    say = lambda msg: print(f"loop: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    out = []
    for i in range(1, rounds + 1):
        doc = round_doc(base, i, loop_dir)
        name = doc["metadata"]["name"]
        round_ = parse_round(doc, f"{round_file} (round {i})", base_dir=round_file.parent)
        workdir = loop_dir / name
        say(f"round {i}/{rounds}: {name}" + (f", building on {doc['spec']['previousRound']}" if i > 1 else ""))
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(workdir / "round.yaml", yaml.safe_dump(doc, sort_keys=False))
        status = run_round(round_, workdir)
        stages = status.stages
        summary = {"round": name, "phase": status.phase, "promotedVersion": status.promoted_version,
                   "quality": status.quality, "message": status.message,
                   "servedPairs": stages["prepare"].metrics.get("servedPairs"),
                   "initFrom": stages["distill"].metrics.get("initFrom")}
        if i < rounds:
            if status.promoted_version is None:
                say(f"{name} promoted no student: the next round gets no served pairs from it")
            else:
                summary["replay"] = serve_and_replay(round_, workdir, traffic, say)
                log = read_request_log(round_.spec.promotion.request_log.path)
                summary["requestLogRows"] = len(log.rows)
                say(f"served v{status.promoted_version}: {summary['replay']['pairs']} pairs replayed, "
                    f"{len(log.rows)} rows in the request log")
        out.append(summary)
        atomic_write_text(loop_dir / "loop.json", json.dumps(out, indent=2) + "\n")
    return out
