import re

import numpy as np
import pytest

from adore.data.contract import Item
from adore.metrics import graded_report, ndcg_at_k
from adore.stages.align import behaviour_grade, build_kto_examples
from adore.data.contract import Behaviour
from adore.teacher.llm import Judgement
from adore.teacher.prompt import PREFILL, RationaleParseError, parse, rule_rationale, user_prompt

GRADES = ["irrelevant", "partial", "exact"]


def test_parse_well_formed():
    r = parse(" type=chair; quantity=6\nItem attributes: type=chair; brand=acme\nComparison: type match\nGrade: Exact.\nextra", GRADES)
    assert r.grade == "exact" and r.query_attributes == "type=chair; quantity=6"
    assert r.text().startswith(PREFILL)
    assert parse(r.text().removeprefix(PREFILL), GRADES) == r


@pytest.mark.parametrize("completion,problem", [
    (" type=chair\nItem attributes: x\nGrade: exact", "missing line(s): Comparison"),
    (" type=chair\nItem attributes: x\nComparison: y\nGrade: great", "not one of"),
    (" 6 dining chairs\nThe item is a chair.", "missing line(s): Item attributes, Comparison, Grade"),
    ("", "missing"),
])
def test_parse_malformed_never_guesses(completion, problem):
    with pytest.raises(RationaleParseError, match=re.escape(problem)):
        parse(completion, GRADES)


def test_rule_rationale_round_trips():
    item = Item("1", "Acme Dining Chairs Grey, 6PCS", attributes={"brand": "Acme"})
    r = rule_rationale("6 dining chairs", item, "exact")
    assert parse(r.text().removeprefix(PREFILL), GRADES) == r
    assert "quantity match" in r.comparison and "brand=acme" in r.item_attributes
    assert "Item fields: brand=Acme" in user_prompt("6 dining chairs", item)


def test_behaviour_verdicts_and_kto_rows():
    strong = Behaviour("q", "a", 1000, 300, 80, 60)
    ignored = Behaviour("q", "b", 1000, 5, 0, 0)
    middling = Behaviour("q", "c", 1000, 100, 5, 3)
    assert behaviour_grade(strong, GRADES, 0.02, 0.02) == "exact"
    assert behaviour_grade(ignored, GRADES, 0.02, 0.02) == "irrelevant"
    assert behaviour_grade(middling, GRADES, 0.02, 0.02) is None
    judged = [Judgement("irrelevant", [0.8, 0.1, 0.1], "R1"), Judgement("exact", [0, 0, 1], "R2"),
              Judgement(None, None, "garbage", "missing")]
    rows, counts = build_kto_examples(judged, ["exact", "exact", "irrelevant"], ["P1", "P2", "P3"],
                                      ["R1", "R2", "garbage"], ["FIX1", "FIX2", "FIX3"], GRADES)
    assert counts == {"agree": 1, "tooStrict": 1, "tooLenient": 0, "unparsed": 1, "other": 0}
    assert {"prompt": "P1", "completion": "R1", "label": False} in rows
    assert {"prompt": "P1", "completion": "FIX1", "label": True} in rows
    assert {"prompt": "P2", "completion": "R2", "label": True} in rows
    assert sum(r["label"] for r in rows) == 3 and len(rows) == 5


def test_ndcg_and_report():
    q = ["a"] * 3 + ["b"] * 3 + ["c"] * 2
    gold = np.array([2, 0, 1, 0, 0, 2, 1, 1])
    perfect = gold.astype(float)
    assert ndcg_at_k(q, gold, perfect) == pytest.approx(1.0)
    worst = -perfect
    assert ndcg_at_k(q, gold, worst) < 0.7
    rep = graded_report(q, gold, gold, perfect, GRADES, raw_gold=gold + 1.0, raw_pred=gold + 1.0)
    assert rep["accuracy"] == 1.0 and rep["macroF1"] == 1.0 and rep["rmse"] == 0.0 and rep["auc"] == 1.0


def test_consistency_filter_for_seed_rationales():
    from adore.teacher.prompt import Rationale, consistent

    ok = Rationale("type=chair", "type=chair; brand=acme", "type match", "exact")
    assert consistent(ok, GRADES)
    assert not consistent(Rationale("type=cover", "type=balm", "type mismatch", "exact"), GRADES)
    assert not consistent(Rationale("type=chair", "type=chair", "type match", "irrelevant"), GRADES)
    assert consistent(Rationale("type=chair", "type=stool", "type mismatch", "irrelevant"), GRADES)
    assert not consistent(Rationale("<key=value; ...>", "x", "y", "partial"), GRADES)
