"""adore's data contract: catalogue, query-item pairs, behaviour log.

All three are JSON Lines files in UTF-8, one record per line. Readers check
every row and raise DataError naming the file, the row (1-based line number)
and the column (field) that is wrong. TextLines is the one way text input is
read (here and by the CSV importers): it refuses what is not UTF-8 text with
the encoding or format it looks like, so no reader fails with a bare
UnicodeDecodeError.
"""
from __future__ import annotations

import codecs
import difflib
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional

from ..atomic import atomic_write_text
from ..errors import AdoreError


class DataError(AdoreError, ValueError):
    def __init__(self, path: str | Path, row: Optional[int], column: Optional[str], problem: str):
        self.path, self.row, self.column, self.problem = str(path), row, column, problem
        where = str(path)
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {problem}", field=column, path=path)


log = logging.getLogger(__name__)


def did_you_mean(name: str, found) -> str:
    """' (did you mean 'x'?)' when a present field is a near-miss for `name` (case, spaces, typos)."""
    by_lower = {str(f).lower(): f for f in found}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.75)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


# UTF-32 LE's mark starts with UTF-16 LE's, so the longer marks are tried first.
_BOMS = [(codecs.BOM_UTF32_LE, "UTF-32LE"), (codecs.BOM_UTF32_BE, "UTF-32BE"),
         (codecs.BOM_UTF16_LE, "UTF-16LE"), (codecs.BOM_UTF16_BE, "UTF-16BE")]
# What people hand over instead of a text export: the dataset's download, a spreadsheet.
_MAGIC = [(b"\x1f\x8b", "gzip-compressed: decompress it first (gunzip)"),
          (b"PK\x03\x04", "a ZIP archive or an Excel workbook: unzip it, or export the sheet as CSV UTF-8"),
          (b"\xd0\xcf\x11\xe0", "an old Excel (.xls) workbook: export the sheet as CSV UTF-8"),
          (b"PAR1", "an Apache Parquet file: convert it to text first (e.g. pandas.read_parquet(f).to_csv(...))")]
SNIFF_BYTES = 4096


def _sniff(path: Path, head: bytes) -> None:
    """Refuse, before any parsing, bytes that are not UTF-8 text, naming what they look like."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            raise DataError(path, None, None, f"not UTF-8: the file is {name} (it starts with a {name} byte-order mark); "
                                              f"convert it: iconv -f {name} -t UTF-8")
    for magic, what in _MAGIC:
        if head.startswith(magic):
            raise DataError(path, None, None, f"not a text file: it is {what}")
    if b"\x00" in head:
        # Latin-script text in UTF-16 has a NUL in most odd bytes (little-endian) or even ones (big-endian);
        # binary data has NULs scattered over both.
        odd, even, half = head[1::2].count(0), head[0::2].count(0), len(head) / 2
        guess = ("UTF-16LE" if odd > half / 2 and even < odd / 8 else
                 "UTF-16BE" if even > half / 2 and odd < even / 8 else None)
        if guess is None:
            raise DataError(path, None, None, "not a text file: it holds NUL bytes (binary data)")
        raise DataError(path, None, None, f"not UTF-8: the file is probably {guess} without a byte-order mark; "
                                          f"convert it: iconv -f {guess} -t UTF-8")


def _guess_8bit(raw: bytes) -> str:
    # Windows-1252 leaves five bytes unassigned; a line using one of them is latin-1 (or another code page).
    try:
        raw.decode("cp1252")
        return "CP1252"
    except UnicodeDecodeError:
        return "LATIN1"


def _not_utf8(path: Path, n: int, raw: bytes, e: UnicodeDecodeError) -> DataError:
    if e.reason == "unexpected end of data" and not raw.endswith(b"\n"):
        return DataError(path, None, None, f"line {n} ends in the middle of a UTF-8 character: the file looks truncated")
    enc = _guess_8bit(raw)
    name = "Windows-1252" if enc == "CP1252" else "latin-1, ISO-8859-1"
    return DataError(path, None, None, f"not UTF-8: line {n}, byte {e.start + 1} (0x{raw[e.start]:02x}) is not valid "
                                       f"UTF-8; the file looks like {enc} ({name}): convert it: iconv -f {enc} -t UTF-8")


class TextLines:
    """The lines of a UTF-8 text file, endings kept (for csv), decoded one at a time.

    Decoding line by line is what lets an error name the bad line. A UTF-8
    byte-order mark (Excel, Notepad) is dropped. With `fallback`, a file whose
    first non-ASCII line is not UTF-8 is read in that encoding instead (a
    source's historical encoding); a file that switches encodings part-way
    still fails. `line` is the last line handed out; `blank` says the file
    holds nothing but whitespace.
    """

    def __init__(self, path: Path, fallback: str | None = None):
        self.path, self.fallback = Path(path), fallback
        self.encoding, self.line, self.blank = "utf-8", None, False

    @property
    def torn(self) -> bool:
        """The last line handed out ends without a newline: only a file's last line can."""
        return self.line is not None and not self.line.endswith("\n")

    def __iter__(self) -> Iterator[str]:
        if not self.path.is_file():
            raise DataError(self.path, None, None, "file not found")
        try:
            f = self.path.open("rb")
        except OSError as e:
            raise DataError(self.path, None, None, f"cannot be read: {e.strerror}") from None
        with f:
            head = f.read(SNIFF_BYTES)
            _sniff(self.path, head)
            self.blank = not head.strip() and len(head) < SNIFF_BYTES
            f.seek(len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0)
            all_ascii = True
            for n, raw in enumerate(f, 1):
                self.line = self._decode(n, raw, all_ascii)
                all_ascii = all_ascii and raw.isascii()
                yield self.line

    def _decode(self, n: int, raw: bytes, all_ascii: bool) -> str:
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError as e:
            if not (self.fallback and all_ascii and self.encoding == "utf-8"):
                raise _not_utf8(self.path, n, raw, e) from None
        log.info("%s: line %d is not UTF-8; reading the file as %s", self.path, n, self.fallback)
        self.encoding = self.fallback
        return raw.decode(self.encoding)


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


def _missing(path, row, rec, key) -> DataError:
    return DataError(path, row, key, "missing" + did_you_mean(key, rec))


def _str(path, row, rec, key, required=True) -> str:
    if key not in rec or rec[key] is None:
        if required:
            raise _missing(path, row, rec, key)
        return ""
    v = rec[key]
    if not isinstance(v, (str, int)) or isinstance(v, bool):
        raise DataError(path, row, key, f"expected a string, got {type(v).__name__}")
    v = str(v)
    if required and not v.strip():
        raise DataError(path, row, key, "empty")
    return v


def _count(path, row, rec, key) -> int:
    if key not in rec:
        raise _missing(path, row, rec, key)
    v = rec[key]
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise DataError(path, row, key, f"expected a non-negative integer, got {v!r}")
    return v


def _bad_json(path, row, line: str, e: json.JSONDecodeError) -> DataError:
    problem = f"not valid JSON ({e.msg}: column {e.colno})"
    if not line.endswith("\n"):  # only the last line lacks a newline: the file stops inside a record
        problem += ": the last line is cut off, the file looks truncated"
    elif row == 1 and line.strip() in ("{", "["):
        problem += ": this looks like one pretty-printed JSON document; JSON Lines needs one object per line"
    return DataError(path, row, None, problem)


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    path = Path(path)
    for row, line in enumerate(TextLines(path), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise _bad_json(path, row, line, e) from None
        if not isinstance(rec, dict):
            got = "a JSON array: write one object per line, not one array" if isinstance(rec, list) else type(rec).__name__
            raise DataError(path, row, None, f"each line must be a JSON object, got {got}")
        yield row, rec


def _empty(path) -> DataError:
    return DataError(path, None, None, "empty file: no records (JSON Lines needs one object per line)")


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
        raise _empty(path)
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
    if not out:  # a log the user named but that holds nothing is a mistake, not "no behaviour"
        raise _empty(path)
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
