"""Importers from public relevance datasets into adore's data contract.

Each importer returns (catalogue, pairs, grade scheme). CSV problems raise
DataError with the file, the row (the header is row 1) and the column.
"""
from __future__ import annotations

import csv
import html
import re
import sys
from pathlib import Path
from typing import Callable

from .contract import DataError, Item, Pair, read_catalogue, read_pairs

BUNDLED_DIR = Path(__file__).parent / "bundled" / "esci_default"

HOMEDEPOT_GRADES = ["irrelevant", "partial", "exact"]
CROWDFLOWER_GRADES = ["irrelevant", "somewhat", "mostly", "exact"]
ESCI_GRADES = ["irrelevant", "complement", "substitute", "exact"]
BUNDLED_GRADES = ["irrelevant", "partial", "exact"]

csv.field_size_limit(sys.maxsize)
_TAGS = re.compile(r"<[^>]+>")


def clean_text(text: str, limit: int = 600) -> str:
    text = html.unescape(_TAGS.sub(" ", text or ""))
    return " ".join(text.split())[:limit]


def _csv_rows(path: Path, required: list[str]):
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "file not found")
    f = path.open(encoding="utf-8", newline="")
    reader = csv.DictReader(f)
    if reader.fieldnames is None:
        raise DataError(path, 1, None, "empty file: no header row")
    missing = [c for c in required if c not in reader.fieldnames]
    if missing:
        raise DataError(path, 1, missing[0], f"column missing from the header (found {reader.fieldnames})")
    try:
        for i, rec in enumerate(reader, 2):
            if None in rec or any(rec.get(c) is None for c in required):
                raise DataError(path, i, None, f"wrong number of fields (expected {len(reader.fieldnames)})")
            yield i, rec
    except csv.Error as e:
        raise DataError(path, reader.line_num, None, f"malformed CSV: {e}") from None
    finally:
        f.close()


def _float(path, row, rec, col, lo, hi) -> float:
    raw = rec[col]
    try:
        v = float(raw)
    except ValueError:
        raise DataError(path, row, col, f"expected a number, got {raw!r}") from None
    if not lo <= v <= hi:
        raise DataError(path, row, col, f"{v} is outside [{lo}, {hi}]")
    return v


def _text(path, row, rec, col) -> str:
    v = rec[col].strip()
    if not v:
        raise DataError(path, row, col, "empty")
    return v


def homedepot_grade(mean: float) -> str:
    return "irrelevant" if mean < 1.5 else ("partial" if mean < 2.5 else "exact")


def import_homedepot(path: Path):
    path = Path(path)
    if path.is_dir():
        path = path / "pairs.csv"
    items: dict[str, Item] = {}
    pairs = []
    for row, rec in _csv_rows(path, ["product_uid", "product_title", "search_term", "relevance"]):
        uid = _text(path, row, rec, "product_uid")
        items.setdefault(uid, Item(uid, clean_text(_text(path, row, rec, "product_title"), 300)))
        score = _float(path, row, rec, "relevance", 1.0, 3.0)
        pairs.append(Pair(_text(path, row, rec, "search_term").lower(), uid, homedepot_grade(score), score))
    return items, pairs, HOMEDEPOT_GRADES


def import_crowdflower(path: Path):
    path = Path(path)
    if path.is_dir():
        path = path / "pairs.csv"
    items: dict[str, Item] = {}
    pairs = []
    key_to_id: dict[tuple, str] = {}
    for row, rec in _csv_rows(path, ["query", "product_title", "product_description", "median_relevance"]):
        title = clean_text(_text(path, row, rec, "product_title"), 300)
        desc = clean_text(rec["product_description"])
        # CrowdFlower has no product ids: the same title+description is one item.
        key = (title, desc)
        if key not in key_to_id:
            key_to_id[key] = f"cf{len(key_to_id)}"
            items[key_to_id[key]] = Item(key_to_id[key], title, desc)
        score = _float(path, row, rec, "median_relevance", 1, 4)
        if score != int(score):
            raise DataError(path, row, "median_relevance", f"expected an integer grade 1-4, got {rec['median_relevance']!r}")
        pairs.append(Pair(_text(path, row, rec, "query").lower(), key_to_id[key], CROWDFLOWER_GRADES[int(score) - 1], score))
    return items, pairs, CROWDFLOWER_GRADES


_ESCI = {"E": "exact", "S": "substitute", "C": "complement", "I": "irrelevant"}


def esci_item(row, rec, path) -> Item:
    attrs = {}
    if rec.get("product_brand", "").strip():
        attrs["brand"] = rec["product_brand"].strip()
    if rec.get("product_color", "").strip():
        attrs["colour"] = rec["product_color"].strip()
    desc = clean_text(rec.get("product_bullet_point") or "", 300) or clean_text(rec.get("product_description") or "", 300)
    return Item(_text(path, row, rec, "product_id"), clean_text(_text(path, row, rec, "product_title"), 300), desc, attrs)


def import_esci(path: Path):
    path = Path(path)
    if path.is_dir():
        path = path / "products_exact.csv"
    items: dict[str, Item] = {}
    pairs = []
    for row, rec in _csv_rows(path, ["query", "product_id", "esci_label", "product_title"]):
        item = esci_item(row, rec, path)
        items.setdefault(item.item_id, item)
        label = rec["esci_label"].strip()
        if label not in _ESCI:
            raise DataError(path, row, "esci_label", f"expected one of E, S, C, I, got {label!r}")
        pairs.append(Pair(_text(path, row, rec, "query").lower(), item.item_id, _ESCI[label], None, rec.get("query_id") or None))
    return items, pairs, ESCI_GRADES


def import_contract(path: Path, grades: list[str] | None = None):
    path = Path(path)
    catalogue = read_catalogue(path / "catalogue.jsonl")
    pairs = read_pairs(path / "pairs.jsonl", grades, catalogue)
    seen = [g for g in dict.fromkeys(p.grade for p in pairs) if g is not None]
    return catalogue, pairs, grades or seen


def import_bundled(_path=None):
    catalogue, pairs, _ = import_contract(BUNDLED_DIR, BUNDLED_GRADES)
    return catalogue, pairs, BUNDLED_GRADES


IMPORTERS: dict[str, Callable] = {
    "homedepot": import_homedepot,
    "crowdflower": import_crowdflower,
    "esci": import_esci,
    "bundled": import_bundled,
}


def import_dataset(source: str, path: Path | None, grades: list[str]):
    if source == "contract":
        catalogue, pairs, scheme = import_contract(path, grades)
    else:
        catalogue, pairs, scheme = IMPORTERS[source](path)
    if scheme != grades:
        raise DataError(path or BUNDLED_DIR, None, None,
                        f"dataset {source!r} uses the grades {scheme} (lowest first) but spec.grades is {grades}")
    return catalogue, pairs
