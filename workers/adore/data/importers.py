"""Importers from public relevance datasets into adore's data contract.

Each importer returns (catalogue, pairs, grade scheme). CSV problems raise
DataError with the file, the row (the header is row 1) and the column; files
must be UTF-8, except Home Depot's (see import_homedepot). Importers only read:
nothing is written until a stage has the whole dataset in memory.
"""
from __future__ import annotations

import csv
import html
import re
import sys
from pathlib import Path
from typing import Callable

from .contract import DataError, Item, Pair, TextLines, did_you_mean, read_catalogue, read_pairs

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


def _cut(lines: TextLines) -> str:
    return "; the file ends mid-line: it looks truncated" if lines.torn else ""


def _delimiter_hint(found: list[str]) -> str:
    # A one-column header holding ';' or a tab is a file saved with another separator (a spreadsheet's locale).
    for d in (";", "\t", "|"):
        if len(found) == 1 and d in found[0]:
            return f"; the header is one column: is the file separated by {d!r} instead of ','?"
    return ""


def _header(path: Path, reader: csv.DictReader, lines: TextLines, required: list[str]) -> list[str]:
    found = reader.fieldnames
    if not found or not any(f.strip() for f in found):
        raise DataError(path, None, None, "empty file: no header row" if lines.blank else
                        "line 1 is blank: the header row must come first")
    missing = [c for c in required if c not in found]
    if missing:
        names = ", ".join(f"{c!r}{did_you_mean(c, found)}" for c in missing)
        raise DataError(path, 1, missing[0], f"required column {names} missing from the header "
                                             f"(found {found}){_delimiter_hint(found)}{_cut(lines)}")
    return found


def _field_count(rec: dict) -> int:
    # DictReader pads a short row with None and gathers a long row's extra fields under the key None.
    return sum(v is not None for k, v in rec.items() if k is not None) + len(rec.get(None) or [])


def _csv_rows(path: Path, required: list[str], fallback: str | None = None):
    """(row, record) of a CSV file, the header being row 1; every fault is a DataError."""
    path = Path(path)
    lines = TextLines(path, fallback)
    # strict: a stray or unclosed quote is an error, not a field that silently swallows the rows after it.
    reader = csv.DictReader(lines, strict=True)
    row = 1
    try:
        header = _header(path, reader, lines, required)
        for row, rec in enumerate(reader, 2):
            if None in rec or any(rec.get(c) is None for c in required):
                raise DataError(path, row, None, f"wrong number of fields: {_field_count(rec)}, the header has "
                                                 f"{len(header)}{_cut(lines)}")
            yield row, rec
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise DataError(path, row + 1, None, "the file ends inside a quoted field: it looks truncated "
                                                 "(or a quote is never closed)") from None
        raise DataError(path, row + 1, None, f"malformed CSV at line {reader.reader.line_num}: {e}") from None
    if row == 1:
        raise DataError(path, None, None, "no data rows: the file holds only its header")


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
    # Kaggle's own train.csv is latin-1: a copy straight from the competition reads as is. (The shared
    # UTF-8 copy is that text re-encoded: its C1 control characters show latin-1, not Windows-1252.)
    for row, rec in _csv_rows(path, ["product_uid", "product_title", "search_term", "relevance"], "latin-1"):
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
    if path.is_file():
        raise DataError(path, None, None, "source 'contract' needs the folder holding catalogue.jsonl and "
                                          "pairs.jsonl, not a file")
    catalogue = read_catalogue(path / "catalogue.jsonl")
    pairs = read_pairs(path / "pairs.jsonl", grades, catalogue)
    if not pairs:
        raise DataError(path / "pairs.jsonl", None, None, "empty file: no pairs")
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
