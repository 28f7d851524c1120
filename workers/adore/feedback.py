"""Shopper behaviour events, aggregated into the behaviour contract (data.contract.Behaviour).

The event format (JSON Lines, one event per line; a file, or a folder of
*.jsonl files read in name order):

    {"query": "cordless drill", "item_id": "B0123", "event": "click", "time": "2026-11-30T12:00:00Z"}

event is one of impression, click, add_to_cart, purchase; time is an ISO 8601
timestamp or seconds since the epoch. Per (query, item) the aggregator counts
each kind. A purchase implies a click and a click an impression (shop logs
often drop the impression of a clicked result), so clicks = max(clicks,
purchases) and impressions = max(impressions, clicks). Rows are real
behaviour: simulated is false.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

from .data.contract import Behaviour, DataError, _str, iter_jsonl

EVENTS = ("impression", "click", "add_to_cart", "purchase")


def event_files(path: Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.jsonl"))
        if not files:
            raise DataError(path, None, None, "folder holds no *.jsonl event files")
        return files
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    return [path]


def _time(path, row, v) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise DataError(path, row, "time", f"expected an ISO 8601 timestamp or epoch seconds, got {v!r}")


def read_events(path: Path, since: float | None = None) -> Counter:
    """Counts by (query, item_id, event) over every event at or after `since` (epoch seconds)."""
    counts: Counter = Counter()
    for f in event_files(path):
        for row, rec in iter_jsonl(f):
            query, item = _str(f, row, rec, "query"), _str(f, row, rec, "item_id")
            event = rec.get("event")
            if event not in EVENTS:
                raise DataError(f, row, "event", f"{event!r} is not one of {list(EVENTS)}")
            t = _time(f, row, rec.get("time"))  # checked on every row, used only with since
            if since is not None and t < since:
                continue
            counts[(query, item, event)] += 1
    return counts


def aggregate(counts: Counter) -> list[Behaviour]:
    by_pair: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for (query, item, event), n in counts.items():
        by_pair[(query, item)][event] += n
    out = []
    for (query, item), c in sorted(by_pair.items()):
        clicks = max(c["click"], c["purchase"])
        out.append(Behaviour(query, item, max(c["impression"], clicks), clicks, c["add_to_cart"], c["purchase"],
                             simulated=False))
    return out


def behaviour_from_events(path: Path) -> list[Behaviour]:
    rows = aggregate(read_events(path))
    if not rows:
        raise DataError(path, None, None, "no behaviour events")
    return rows
