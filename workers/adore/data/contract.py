"""adore's data contract: catalogue, query-item pairs, behaviour log.

All three are JSON Lines files, one record per line. Readers check every row
and raise DataError naming the file, the row (1-based line number) and the
column (field) that is wrong.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from ..atomic import atomic_write_text


class DataError(ValueError):
    def __init__(self, path: str | Path, row: Optional[int], column: Optional[str], problem: str):
        self.path, self.row, self.column, self.problem = str(path), row, column, problem
        where = str(path)
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {problem}")


@dataclass
class Item:
    item_id: str
    title: str
    description: str = ""
    attributes: dict = field(default_factory=dict)


@dataclass
class Pair:
    query: str
    item_id: str
    grade: Optional[str] = None      # grade name from the round's scheme, None when unlabelled
    score: Optional[float] = None    # raw human score where the source has one (e.g. Home Depot's mean)
    query_id: Optional[str] = None
    synthetic: Optional[dict] = None  # for synthesised pairs: {"type": ..., "source": ...}


@dataclass
class Behaviour:
    query: str
    item_id: str
    impressions: int
    clicks: int
    carts: int
    purchases: int
    simulated: bool = False


def _str(path, row, rec, key, required=True) -> str:
    if key not in rec or rec[key] is None:
        if required:
            raise DataError(path, row, key, "missing")
        return ""
    v = rec[key]
    if not isinstance(v, (str, int)) or isinstance(v, bool):
        raise DataError(path, row, key, f"expected a string, got {type(v).__name__}")
    v = str(v)
    if required and not v.strip():
        raise DataError(path, row, key, "empty")
    return v


def _count(path, row, rec, key) -> int:
    v = rec.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise DataError(path, row, key, f"expected a non-negative integer, got {v!r}")
    return v


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    with path.open(encoding="utf-8") as f:
        for row, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, row, None, f"not valid JSON ({e.msg} at char {e.pos})") from None
            if not isinstance(rec, dict):
                raise DataError(path, row, None, "each line must be a JSON object")
            yield row, rec


def read_catalogue(path: Path) -> dict[str, Item]:
    items: dict[str, Item] = {}
    for row, rec in iter_jsonl(path):
        item_id = _str(path, row, rec, "item_id")
        if item_id in items:
            raise DataError(path, row, "item_id", f"duplicate item id {item_id!r}")
        attrs = rec.get("attributes") or {}
        if not isinstance(attrs, dict):
            raise DataError(path, row, "attributes", "expected an object")
        items[item_id] = Item(item_id, _str(path, row, rec, "title"), _str(path, row, rec, "description", False), attrs)
    if not items:
        raise DataError(path, None, None, "no items")
    return items


def read_pairs(path: Path, grades: list[str] | None = None, catalogue: dict[str, Item] | None = None) -> list[Pair]:
    pairs = []
    for row, rec in iter_jsonl(path):
        grade = rec.get("grade")
        if grade is not None and grades is not None and grade not in grades:
            raise DataError(path, row, "grade", f"{grade!r} is not in the grade scheme {grades}")
        score = rec.get("score")
        if score is not None and (not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score)):
            raise DataError(path, row, "score", f"expected a number, got {score!r}")
        item_id = _str(path, row, rec, "item_id")
        if catalogue is not None and item_id not in catalogue:
            raise DataError(path, row, "item_id", f"item {item_id!r} is not in the catalogue")
        pairs.append(Pair(_str(path, row, rec, "query"), item_id, grade, score,
                          rec.get("query_id"), rec.get("synthetic")))
    return pairs


def read_behaviour(path: Path) -> list[Behaviour]:
    out = []
    for row, rec in iter_jsonl(path):
        b = Behaviour(_str(path, row, rec, "query"), _str(path, row, rec, "item_id"),
                      *(_count(path, row, rec, k) for k in ("impressions", "clicks", "carts", "purchases")),
                      bool(rec.get("simulated", False)))
        if b.clicks > b.impressions:
            raise DataError(path, row, "clicks", "more clicks than impressions")
        if b.purchases > b.clicks:
            raise DataError(path, row, "purchases", "more purchases than clicks")
        out.append(b)
    return out


def _dump(rec) -> str:
    d = asdict(rec)
    return json.dumps({k: v for k, v in d.items() if v not in (None, {}, "")}, ensure_ascii=False)


def write_jsonl(path: Path, records: Iterable) -> int:
    lines = [r if isinstance(r, str) else (_dump(r) if hasattr(r, "__dataclass_fields__") else json.dumps(r, ensure_ascii=False)) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_records(path: Path) -> list[dict]:
    """Plain JSONL records (stage artefacts such as annotations)."""
    return [rec for _, rec in iter_jsonl(path)]
