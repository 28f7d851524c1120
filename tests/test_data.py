import json

import pytest

from adore.data.contract import DataError, read_behaviour, read_catalogue, read_pairs
from adore.data.importers import (BUNDLED_GRADES, CROWDFLOWER_GRADES, ESCI_GRADES, HOMEDEPOT_GRADES, import_bundled,
                                  import_crowdflower, import_dataset, import_esci, import_homedepot)
from adore.data.contract import Pair
from adore.stages.prepare import split_by_query
from conftest import shared


def _head(src, dst, n_lines):
    with open(src, encoding="utf-8") as f:
        dst.write_text("".join(line for _, line in zip(range(n_lines), f)), encoding="utf-8")
    return dst


def test_homedepot_import(tmp_path):
    src = shared("homedepot/pairs.csv")
    items, pairs, grades = import_homedepot(_head(src, tmp_path / "hd.csv", 400))
    assert grades == HOMEDEPOT_GRADES
    assert len(pairs) == 399
    assert all(1.0 <= p.score <= 3.0 for p in pairs)
    # The label mapping of the dataset README: round the mean of three raters.
    for p in pairs:
        assert p.grade == ("irrelevant" if p.score < 1.5 else "partial" if p.score < 2.5 else "exact")
    assert pairs[0].item_id in items and items[pairs[0].item_id].title


def test_crowdflower_import():
    items, pairs, grades = import_crowdflower(shared("crowdflower"))
    assert grades == CROWDFLOWER_GRADES
    assert len(pairs) == 8204 and len({p.query for p in pairs}) == 209
    assert {p.grade for p in pairs} == set(CROWDFLOWER_GRADES)
    assert all("<" not in items[p.item_id].description for p in pairs[:200])


def test_esci_import_keeps_structured_attributes():
    items, pairs, grades = import_esci(shared("esci-sample"))
    assert grades == ESCI_GRADES
    assert len(pairs) == 485 and {p.grade for p in pairs} == {"exact"}
    yeti = [i for i in items.values() if i.attributes.get("brand") == "YETI"]
    assert yeti and all(i.title for i in yeti)


def test_bundled_default():
    items, pairs, grades = import_bundled()
    assert grades == BUNDLED_GRADES
    assert {p.grade for p in pairs} == set(BUNDLED_GRADES)
    assert all(p.item_id in items for p in pairs)


def test_missing_column_names_file_and_column(tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text("id,product_uid,product_title,relevance\n1,100,Hammer,3\n")
    with pytest.raises(DataError) as e:
        import_homedepot(f)
    assert e.value.path == str(f) and e.value.column == "search_term" and e.value.row == 1


def test_bad_value_names_row_and_column(tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text("id,product_uid,product_title,search_term,relevance\n"
                 "1,100,Hammer,hammer,3\n2,101,Saw,saw,2.5\n3,102,Nail,nails,high\n")
    with pytest.raises(DataError) as e:
        import_homedepot(f)
    assert (e.value.row, e.value.column) == (4, "relevance")
    assert "pairs.csv, row 4, column 'relevance': expected a number, got 'high'" in str(e.value)
    f.write_text("id,product_uid,product_title,search_term,relevance\n1,100,Hammer,hammer,7\n")
    with pytest.raises(DataError, match="outside"):
        import_homedepot(f)


def test_short_row_and_missing_file(tmp_path):
    f = tmp_path / "pairs.csv"
    f.write_text("id,query,product_title,product_description,median_relevance,relevance_variance\n1,tv,Sony TV\n")
    with pytest.raises(DataError) as e:
        import_crowdflower(f)
    assert e.value.row == 2 and "wrong number of fields" in str(e.value)
    with pytest.raises(DataError, match="file not found"):
        import_crowdflower(tmp_path / "nope.csv")


def test_contract_readers_name_row_and_column(tmp_path):
    cat = tmp_path / "catalogue.jsonl"
    cat.write_text('{"item_id": "a", "title": "Red mug"}\n{"item_id": "b"}\n')
    with pytest.raises(DataError) as e:
        read_catalogue(cat)
    assert (e.value.row, e.value.column, e.value.problem) == (2, "title", "missing")
    cat.write_text('{"item_id": "a", "title": "Red mug"}\n')
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "mug", "item_id": "a", "grade": "exact"}\n{"query": "mug", "item_id": "a", "grade": "great"}\n')
    with pytest.raises(DataError) as e:
        read_pairs(pairs, ["irrelevant", "partial", "exact"])
    assert (e.value.row, e.value.column) == (2, "grade")
    pairs.write_text('{"query": "mug", "item_id": "zz"}\n')
    with pytest.raises(DataError, match="not in the catalogue"):
        read_pairs(pairs, None, read_catalogue(cat))
    pairs.write_text('{"query": "mug", "item_id": "a"}\n{not json\n')
    with pytest.raises(DataError) as e:
        read_pairs(pairs)
    assert e.value.row == 2 and "not valid JSON" in str(e.value)
    beh = tmp_path / "b.jsonl"
    beh.write_text(json.dumps({"query": "mug", "item_id": "a", "impressions": 10, "clicks": 3, "carts": 1, "purchases": 5}) + "\n")
    with pytest.raises(DataError) as e:
        read_behaviour(beh)
    assert e.value.column == "purchases"


def test_grade_scheme_mismatch_is_reported(tmp_path):
    with pytest.raises(DataError, match="spec.grades"):
        import_dataset("bundled", None, ["bad", "good"])


def test_split_by_query_is_disjoint_and_stable():
    pairs = [Pair(f"q{i % 40}", f"i{i}", "exact") for i in range(400)]
    train, dev = split_by_query(pairs, 0.25, 13)
    assert {p.query for p in train}.isdisjoint({p.query for p in dev})
    assert len(train) + len(dev) == 400 and 0.1 < len(dev) / 400 < 0.4
    assert split_by_query(pairs, 0.25, 13) == (train, dev)


def test_cap_per_query_keeps_at_most_cap_pairs_of_each_query_and_their_order():
    import random

    from adore.stages.prepare import cap_per_query

    pairs = [Pair(f"q{i % 5}", f"i{i}", "exact") for i in range(100)] + [Pair("rare", "x", "exact")]
    kept = cap_per_query(pairs, 3, random.Random(13))
    per_query = {q: [p for p in kept if p.query == q] for q in {p.query for p in pairs}}
    assert all(len(v) == 3 for q, v in per_query.items() if q != "rare") and len(per_query["rare"]) == 1
    assert kept == [p for p in pairs if p in kept]  # input order kept
    assert cap_per_query(pairs, 3, random.Random(13)) == kept
