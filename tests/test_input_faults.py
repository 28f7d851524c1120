"""Faults a user can put into an input file: each is one DataError naming the file and the fault.

Every importer (Home Depot, CrowdFlower, ESCI, the data contract) and the behaviour log is fed
a tiny hand-written file broken on purpose: empty, truncated, in another encoding, with a missing,
misnamed or mis-separated column, or not text at all. Each test asserts the error is a DataError
(a bare UnicodeDecodeError, KeyError or csv.Error fails it, though the first is a ValueError too),
that the message holds the file's path, and that it says what is wrong and where.
"""
import csv
import gzip
import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from adore.data.contract import DataError, read_behaviour
from adore.data.importers import import_contract, import_crowdflower, import_esci, import_homedepot
from adore.schema import load_round
from adore.stages import BY_NAME
from adore.stages.base import COMPLETE, execute, stage_dir
from conftest import TINY_ROUND, EXAMPLES, shared

# Hand-written rows in each source's layout. Each file has non-ASCII text on its second line and on
# its last one (so a cut character lands in the last line), and its last row has no quoted field (so
# a cut there leaves a short row, not an open quote).
HOMEDEPOT = ("id,product_uid,product_title,search_term,relevance\n"
             "2,100001,Crème Paint 1 gal.,white paint,2.33\n"
             "3,100002,\"Tile, 12 in. x 12 in.\",floor tile,1.67\n"
             "9,100003,Angle Bracket 12-Gauge,équerre bracket,3.0\n")
CROWDFLOWER = ("id,query,product_title,product_description,median_relevance,relevance_variance\n"
               "1,café table,Bistro Table – Round,\"<p>Round, 24 in.</p>\",3,0\n"
               "4,projector,ViewSonic Projector,\"Bright, 3000 lumens\",4,0.471\n"
               "7,led tv,Sony 40 in. TV,Full HD – 60 Hz,2,0.5\n")
ESCI = ("example_id,query,query_id,product_id,product_locale,esci_label,small_version,large_version,split,"
        "product_title,product_description,product_bullet_point,product_brand,product_color\n"
        "1,can cooler,10,B01,us,E,1,1,train,Can Cooler – 12 oz,,\"Keeps cans cold, 6 hours\",YETI,Navy\n"
        "2,can cooler,10,B02,us,E,1,1,train,\"Slim Can Cooler, Stainless\",,,BruMate,Black\n"
        "3,dining chairs,11,B03,us,E,1,1,train,Velvet Chair Set of 6,,,Yaheetech,Gris clair é\n")
CATALOGUE = ('{"item_id": "a", "title": "Red mug – 12 oz"}\n'
             '{"item_id": "b", "title": "Café cup", "attributes": {"colour": "white"}}\n'
             '{"item_id": "c", "title": "Tea pot", "description": "Porcelaine émaillée"}\n')
PAIRS = ('{"query": "mug", "item_id": "a", "grade": "exact"}\n'
         '{"query": "café cup", "item_id": "b", "grade": "partial"}\n'
         '{"query": "thé pot", "item_id": "c", "grade": "irrelevant"}\n')
BEHAVIOUR = ('{"query": "mug", "item_id": "a", "impressions": 10, "clicks": 3, "carts": 1, "purchases": 1}\n'
             '{"query": "café cup", "item_id": "b", "impressions": 8, "clicks": 1, "carts": 0, "purchases": 0}\n'
             '{"query": "thé pot", "item_id": "c", "impressions": 5, "clicks": 0, "carts": 0, "purchases": 0}\n')
GRADES = ["irrelevant", "partial", "exact"]


@dataclass
class Source:
    file: str                      # the file of the dataset the fault is put into
    good: str                      # its text when valid
    load: Callable[[Path], object]  # reads the dataset, given that file's path
    column: str                    # a required column (CSV) or field (JSON Lines)
    others: dict                   # the dataset's other files, valid

    @property
    def csv(self) -> bool:
        return self.file.endswith(".csv")


SOURCES = {
    "homedepot": Source("pairs.csv", HOMEDEPOT, import_homedepot, "search_term", {}),
    "crowdflower": Source("pairs.csv", CROWDFLOWER, import_crowdflower, "median_relevance", {}),
    "esci": Source("products_exact.csv", ESCI, import_esci, "esci_label", {}),
    "contract-catalogue": Source("catalogue.jsonl", CATALOGUE, lambda f: import_contract(f.parent, GRADES), "title",
                                 {"pairs.jsonl": PAIRS}),
    "contract-pairs": Source("pairs.jsonl", PAIRS, lambda f: import_contract(f.parent, GRADES), "item_id",
                             {"catalogue.jsonl": CATALOGUE}),
    "behaviour": Source("behaviour.jsonl", BEHAVIOUR, read_behaviour, "clicks", {}),
}
CSV_SOURCES = [k for k, s in SOURCES.items() if s.csv]
JSONL_SOURCES = [k for k, s in SOURCES.items() if not s.csv]
# Home Depot is read as latin-1 when it is not UTF-8 (test_homedepot_reads_kaggles_latin1):
# 8-bit text is no fault there.
NOT_LATIN1_TOLERANT = [k for k in SOURCES if k != "homedepot"]


def _put(tmp_path: Path, src: Source, data: bytes) -> Path:
    for name, text in src.others.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    f = tmp_path / src.file
    f.write_bytes(data)
    return f


def _fails(src: Source, f: Path, *patterns: str) -> DataError:
    """Loading f raises a DataError whose message names f and matches every pattern."""
    with pytest.raises(DataError) as e:
        src.load(f)
    msg = str(e.value)
    assert e.value.path == str(f) and msg.startswith(str(f)), msg
    said = msg[len(str(f)):]  # the path holds the test's name ("empty", "missing"...): match past it
    for p in patterns:
        assert re.search(p, said), f"{p!r} not in {msg!r}"
    return e.value


def _line_of(text: str, pred) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if pred(line))


@pytest.mark.parametrize("name", SOURCES)
def test_the_valid_files_load(tmp_path, name):
    # The baseline every fault below is a change of: without it a fault test could pass for any reason.
    src = SOURCES[name]
    assert src.load(_put(tmp_path, src, src.good.encode()))


def _required_first(src: Source) -> str:
    """The CSV with its required column moved to the front, where a byte-order mark would stick to its name."""
    rows = list(csv.DictReader(io.StringIO(src.good, newline="")))
    out = io.StringIO(newline="")
    w = csv.DictWriter(out, [src.column, *(c for c in rows[0] if c != src.column)], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


@pytest.mark.parametrize("name", SOURCES)
def test_a_utf8_byte_order_mark_is_dropped(tmp_path, name):
    # Excel's "CSV UTF-8" and Notepad write one; it is UTF-8 all the same, and would otherwise stick to the first name.
    src = SOURCES[name]
    text = _required_first(src) if src.csv else src.good
    plain = tmp_path / "plain"
    plain.mkdir()
    want = src.load(_put(plain, src, text.encode()))
    assert src.load(_put(tmp_path, src, b"\xef\xbb\xbf" + text.encode())) == want


# --- empty -----------------------------------------------------------------------------------------

EMPTY_WORDS = {"contract-pairs": "empty file: no pairs"}


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("data", [b"", b"\n  \n"], ids=["zero-bytes", "blank-lines"])
def test_an_empty_file(tmp_path, name, data):
    src = SOURCES[name]
    _fails(src, _put(tmp_path, src, data), EMPTY_WORDS.get(name, "empty file"))


@pytest.mark.parametrize("name", CSV_SOURCES)
def test_a_csv_with_only_its_header(tmp_path, name):
    src = SOURCES[name]
    _fails(src, _put(tmp_path, src, src.good.splitlines(keepends=True)[0].encode()), "no data rows")


# --- truncated -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SOURCES)
def test_a_file_cut_in_its_last_row(tmp_path, name):
    src = SOURCES[name]
    last = src.good.rstrip("\n").rsplit("\n", 1)[1]
    data = src.good[:src.good.rindex(last) + len(last) // 3].encode()
    n_last = len(src.good.splitlines())
    # A CSV's row counts the header as row 1; a JSON Lines row is its line: both are the last line here.
    what = r"wrong number of fields" if src.csv else r"not valid JSON"
    e = _fails(src, _put(tmp_path, src, data), what, r"truncated", rf"row {n_last}\b")
    assert e.row == n_last


@pytest.mark.parametrize("name", CSV_SOURCES)
def test_a_csv_cut_inside_a_quoted_field(tmp_path, name):
    # Without strict quoting the open quote would swallow the rest of the file into one field, silently.
    src = SOURCES[name]
    quote = src.good.index('"')
    row = src.good[:quote].count("\n") + 1
    _fails(src, _put(tmp_path, src, src.good[:quote + 4].encode()), r"inside a quoted field", r"truncated",
           rf"row {row}\b")


@pytest.mark.parametrize("name", SOURCES)
def test_a_file_cut_inside_a_utf8_character(tmp_path, name):
    src = SOURCES[name]
    data = src.good.encode()
    lead = max(i for i, b in enumerate(data) if b >= 0xC0)  # the last multi-byte character starts here
    n_last = len(src.good.splitlines())
    _fails(src, _put(tmp_path, src, data[:lead + 1]), rf"line {n_last} ends in the middle of a UTF-8 character",
           r"truncated")


# --- wrong encoding --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NOT_LATIN1_TOLERANT)
def test_a_windows_1252_file(tmp_path, name):
    src = SOURCES[name]
    line = _line_of(src.good, lambda s: not s.isascii())
    _fails(src, _put(tmp_path, src, src.good.encode("cp1252")), r"not UTF-8", rf"line {line}\b",
           r"iconv -f CP1252 -t UTF-8")


@pytest.mark.parametrize("name", NOT_LATIN1_TOLERANT)
def test_a_latin1_file_with_a_byte_windows_1252_lacks(tmp_path, name):
    # 0x90 is a control character in latin-1 and unassigned in Windows-1252: the guess must say latin-1.
    src = SOURCES[name]
    text = src.good.replace("é", "é\x90").replace("–", "-")
    line = _line_of(text, lambda s: not s.isascii())
    _fails(src, _put(tmp_path, src, text.encode("latin-1")), r"not UTF-8", rf"line {line}\b",
           r"iconv -f LATIN1 -t UTF-8")


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("codec, named", [("utf-16", "UTF-16LE"), ("utf-32", "UTF-32LE")])
def test_a_utf16_or_utf32_file_with_a_byte_order_mark(tmp_path, name, codec, named):
    src = SOURCES[name]
    _fails(src, _put(tmp_path, src, src.good.encode(codec)), rf"not UTF-8: the file is {named}", "byte-order mark",
           rf"iconv -f {named} -t UTF-8")


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("codec, named", [("utf-16-le", "UTF-16LE"), ("utf-16-be", "UTF-16BE")])
def test_a_utf16_file_without_a_byte_order_mark(tmp_path, name, codec, named):
    # NUL is valid UTF-8, so without this check the file would "decode" and fail later as a missing column.
    src = SOURCES[name]
    _fails(src, _put(tmp_path, src, src.good.encode(codec)), rf"probably {named} without a byte-order mark")


def test_homedepot_reads_kaggles_latin1(tmp_path):
    # The competition's train.csv is latin-1; read as such it gives what the UTF-8 copy gives.
    src = SOURCES["homedepot"]
    want = import_homedepot(_put(tmp_path, src, src.good.encode()))
    assert import_homedepot(_put(tmp_path, src, src.good.encode("latin-1"))) == want
    assert any("è" in i.title for i in want[0].values())


def test_homedepot_latin1_matches_the_shared_utf8_copy(tmp_path):
    # The shared copy is Kaggle's latin-1 text re-encoded. Its header, first 200 rows and every row with
    # non-ASCII text (about 230), put back into latin-1 bytes, must import exactly as the UTF-8 rows
    # do; they hold latin-1's C1 controls, which Windows-1252 would have read as other characters.
    with open(shared("homedepot/pairs.csv"), encoding="utf-8") as f:
        text = "".join(line for n, line in enumerate(f) if n <= 200 or not line.isascii())
    assert "\x90" in text and "\x89" in text
    utf8, latin1 = tmp_path / "utf8.csv", tmp_path / "latin1.csv"
    utf8.write_bytes(text.encode())
    latin1.write_bytes(text.encode("latin-1"))
    assert import_homedepot(latin1) == import_homedepot(utf8)


def test_homedepot_refuses_a_file_that_changes_encoding(tmp_path):
    # UTF-8 on one line and latin-1 on a later one is a file spliced from two sources: no single decoding is right.
    src = SOURCES["homedepot"]
    lines = src.good.splitlines(keepends=True)
    data = b"".join(line.encode() for line in lines[:-1]) + lines[-1].encode("latin-1")
    _fails(src, _put(tmp_path, src, data), rf"not UTF-8: line {len(lines)}\b")


# --- wrong columns ---------------------------------------------------------------------------------

def _drop_column(src: Source, col: str) -> str:
    if src.csv:
        rows = list(csv.DictReader(io.StringIO(src.good, newline="")))
        out = io.StringIO(newline="")
        w = csv.DictWriter(out, [c for c in rows[0] if c != col], lineterminator="\n")
        w.writeheader()
        w.writerows({k: v for k, v in r.items() if k != col} for r in rows)
        return out.getvalue()
    return "".join(json.dumps({k: v for k, v in json.loads(line).items() if k != col}, ensure_ascii=False) + "\n"
                   for line in src.good.splitlines())


def _rename_column(src: Source, col: str, new: str) -> str:
    if src.csv:
        header, rest = src.good.split("\n", 1)
        return header.replace(col, new) + "\n" + rest
    return src.good.replace(f'"{col}"', f'"{new}"')


@pytest.mark.parametrize("name", SOURCES)
def test_a_missing_column(tmp_path, name):
    src = SOURCES[name]
    e = _fails(src, _put(tmp_path, src, _drop_column(src, src.column).encode()), rf"column '{src.column}'",
               "missing")
    assert (e.row, e.column) == (1, src.column)


@pytest.mark.parametrize("name", SOURCES)
def test_a_misnamed_column_gets_a_suggestion(tmp_path, name):
    src = SOURCES[name]
    wrong = src.column.replace("_", " ").title()  # "search_term" -> "Search Term", as a spreadsheet might
    e = _fails(src, _put(tmp_path, src, _rename_column(src, src.column, wrong).encode()),
               rf"column '{src.column}'", "missing", rf"did you mean '{wrong}'\?")
    assert (e.row, e.column) == (1, src.column)


@pytest.mark.parametrize("name", CSV_SOURCES)
@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_csv_separated_by_something_else(tmp_path, name, sep):
    src = SOURCES[name]
    rows = list(csv.reader(io.StringIO(src.good, newline="")))
    out = io.StringIO(newline="")
    csv.writer(out, delimiter=sep, lineterminator="\n").writerows(rows)
    _fails(src, _put(tmp_path, src, out.getvalue().encode()), "missing from the header",
           re.escape(f"separated by {sep!r} instead of ','"))


@pytest.mark.parametrize("name", CSV_SOURCES)
def test_a_csv_row_with_an_extra_field(tmp_path, name):
    src = SOURCES[name]
    lines = src.good.splitlines(keepends=True)
    lines[2] = lines[2].rstrip("\n") + ",surplus\n"
    n = len(next(csv.reader([lines[0]])))
    e = _fails(src, _put(tmp_path, src, "".join(lines).encode()),
               rf"wrong number of fields: {n + 1}, the header has {n}")
    assert e.row == 3


@pytest.mark.parametrize("name", CSV_SOURCES)
def test_a_csv_with_a_stray_quote(tmp_path, name):
    src = SOURCES[name]
    lines = src.good.splitlines(keepends=True)
    lines[2] = lines[2].replace(",", ',"x"y', 1)  # text after a closing quote
    e = _fails(src, _put(tmp_path, src, "".join(lines).encode()), r"malformed CSV at line 3")
    assert e.row == 3


# --- not a file of the right kind ------------------------------------------------------------------

def _zip(text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("train.csv", text)
    return buf.getvalue()


@pytest.mark.parametrize("name", SOURCES)
@pytest.mark.parametrize("pack, words", [(lambda t: gzip.compress(t.encode()), "gzip-compressed"),
                                         (_zip, "ZIP archive or an Excel workbook"),
                                         (lambda t: b"PAR1" + bytes(64), "Parquet"),
                                         (lambda t: bytes(range(256)), "NUL bytes")],
                         ids=["gzip", "zip", "parquet", "binary"])
def test_a_file_that_is_not_text(tmp_path, name, pack, words):
    # Kaggle hands its sets out zipped, ESCI as Parquet: passing the download on as is must say so.
    src = SOURCES[name]
    _fails(src, _put(tmp_path, src, pack(src.good)), "not a text file", words)


@pytest.mark.parametrize("name", JSONL_SOURCES)
@pytest.mark.parametrize("doc, words", [(lambda recs: json.dumps(recs, indent=2), "pretty-printed JSON document"),
                                        (lambda recs: json.dumps(recs), "got a JSON array")],
                         ids=["pretty-printed", "one-array"])
def test_a_json_document_instead_of_json_lines(tmp_path, name, doc, words):
    src = SOURCES[name]
    recs = [json.loads(line) for line in src.good.splitlines()]
    e = _fails(src, _put(tmp_path, src, doc(recs).encode()), words, "one object per line")
    assert e.row == 1


@pytest.mark.parametrize("name", CSV_SOURCES)
def test_a_folder_without_the_file(tmp_path, name):
    src = SOURCES[name]
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / src.file}: file not found")):
        src.load(tmp_path)


def test_the_contract_wants_a_folder_not_a_file(tmp_path):
    f = _put(tmp_path, SOURCES["contract-pairs"], PAIRS.encode())
    with pytest.raises(DataError, match=re.escape(f"{f}: source 'contract' needs the folder")):
        import_contract(f, GRADES)


@pytest.mark.parametrize("field, value, words", [("impressions", "10", "expected a non-negative integer, got '10'"),
                                                 ("clicks", -1, "expected a non-negative integer, got -1"),
                                                 ("clicks", 11, "more clicks than impressions")])
def test_a_behaviour_log_with_a_bad_count(tmp_path, field, value, words):
    src = SOURCES["behaviour"]
    recs = [json.loads(line) for line in BEHAVIOUR.splitlines()]
    recs[1][field] = value
    f = _put(tmp_path, src, "".join(json.dumps(r) + "\n" for r in recs).encode())
    e = _fails(src, f, re.escape(words))
    assert (e.row, e.column) == (2, field)


# --- nothing half-written --------------------------------------------------------------------------

def _round(tmp_path: Path, dataset: str) -> object:
    f = tmp_path / "round.yaml"
    f.write_text(TINY_ROUND.format(rules=EXAMPLES / "rules" / "default.txt").replace("    source: bundled\n", dataset))
    return load_round(f)


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_on_a_bad_file_keeps_the_previous_output_whole(tmp_path):
    bad = tmp_path / "pairs.csv"
    bad.write_bytes(HOMEDEPOT.encode("utf-16"))
    r = _round(tmp_path, f"    source: homedepot\n    path: {bad}\n")
    wd = tmp_path / "work"
    old = stage_dir(wd, "prepare")
    old.mkdir(parents=True)
    (old / "catalogue.jsonl").write_text(CATALOGUE)
    (old / COMPLETE).write_text(json.dumps({"fingerprint": "earlier run"}))
    before = _tree(wd)
    with pytest.raises(DataError, match=re.escape(f"{bad}: not UTF-8")):
        execute(BY_NAME["prepare"], r, wd, force=True)
    assert _tree(wd) == before  # no temporary folder, no file of the failed run


def test_align_on_a_bad_behaviour_log_writes_nothing(tmp_path):
    log = tmp_path / "behaviour.jsonl"
    log.write_text(BEHAVIOUR[:-20])
    r = _round(tmp_path, f"    source: bundled\n    behaviourLog: {log}\n")
    wd = tmp_path / "work"
    for name in ("prepare", "sft"):
        stage_dir(wd, name).mkdir(parents=True)
        (stage_dir(wd, name) / COMPLETE).write_text(json.dumps({"fingerprint": name}))
    (stage_dir(wd, "prepare") / "catalogue.jsonl").write_text(CATALOGUE)
    before = _tree(wd)
    with pytest.raises(DataError, match=re.escape(f"{log}, row 3: not valid JSON")):
        execute(BY_NAME["align"], r, wd)
    assert _tree(wd) == before and not stage_dir(wd, "align").exists()
