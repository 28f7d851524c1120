import random

import pytest

from adore import attributes as attr
from adore.behaviour import simulate
from adore.data.contract import Item, Pair
from adore.schema import ClickModelSpec
from adore.synthesis import Generators, generate

GRADES = ["irrelevant", "partial", "exact"]


@pytest.mark.parametrize("text,expected", [
    ("BEHR Premium Textured DeckOver 1-gal. #SC-141 Tugboat Wood and Concrete Coating",
     {"type": "coating", "brand": "behr", "size": "1 gal", "material": "wood"}),
    ("Yaheetech Dining Chairs Velvet Armchairs Gray, 6PCS",
     {"type": "armchair", "brand": "yaheetech", "colour": "grey", "material": "velvet", "quantity": "6"}),
    ("2 in. x 4 in. x 8 ft. stud", {"type": "stud"}),
    ("Wintergreen Lighting Christmas LED Light Bulb (Pack of 25)", {"type": "bulb", "quantity": "25"}),
    ("christmas dresses size 3t-4t", {"type": "dress", "size": "3t-4t"}),
])
def test_extract(text, expected):
    got = attr.extract(text, brands=attr.BrandLexicon(["behr", "yaheetech"]))
    for k, v in expected.items():
        assert got.get(k) == v, (k, got)


def test_units_normalise():
    assert attr.sizes("2 in. pipe") == attr.sizes('2" pipe') == attr.sizes("2-inch pipe") == ["2 in"]
    assert attr.sizes("5 Gallon bucket") == ["5 gal"]


def test_structured_fields_win():
    got = attr.extract("Tall can cooler black", {"brand": "YETI", "colour": "Navy"})
    assert got["brand"] == "yeti" and got["colour"] == "navy"


def test_brand_lexicon_from_catalogue():
    items = [Item("1", "Acme Drill 18V"), Item("2", "Acme Saw"), Item("3", "Red Saw"), Item("4", "Solo Hammer", attributes={"brand": "Bolt"})]
    lex = attr.BrandLexicon.from_catalogue(items)
    assert "acme" in lex.brands and "bolt" in lex.brands and "red" not in lex.brands and "solo" not in lex.brands


CATALOGUE = {
    "a": Item("a", "YETI Rambler Slim Can Cooler, Black", attributes={"brand": "YETI", "colour": "Black"}),
    "b": Item("b", "BruMate Hopsulator Slim Can Cooler", attributes={"brand": "BruMate"}),
    "c": Item("c", "Acme Dining Chairs Grey, 6PCS", attributes={"brand": "Acme"}),
}


def _diff_keys(before: dict, after: dict) -> set:
    return {k for k in set(before) | set(after) if before.get(k) != after.get(k)}


def test_brand_generator_changes_only_the_brand():
    g = Generators(CATALOGUE, GRADES, random.Random(0))
    nm = g.brand("yeti slim can cooler", CATALOGUE["a"])
    assert nm.type == "brand" and nm.grade == "partial" and nm.query == "yeti slim can cooler"
    assert nm.item.item_id.startswith("syn-brand-") and nm.source == ("yeti slim can cooler", "a")
    before = attr.extract(CATALOGUE["a"].title, CATALOGUE["a"].attributes, g.brands)
    after = attr.extract(nm.item.title, nm.item.attributes, g.brands)
    assert _diff_keys(before, after) == {"brand"}


def test_colour_generator_item_and_query_side():
    g = Generators(CATALOGUE, GRADES, random.Random(1))
    nm = g.colour("black slim can cooler", CATALOGUE["a"])
    before = attr.extract(CATALOGUE["a"].title, CATALOGUE["a"].attributes)
    after = attr.extract(nm.item.title, nm.item.attributes)
    assert _diff_keys(before, after) == {"colour"} and nm.grade == "partial"
    nm = g.colour("slim can cooler", CATALOGUE["a"])
    assert nm.item is CATALOGUE["a"] and _diff_keys(attr.extract("slim can cooler"), attr.extract(nm.query)) == {"colour"}


def test_quantity_accessory_negation_grades():
    g = Generators(CATALOGUE, GRADES, random.Random(2))
    nm = g.quantity("6 dining chairs", CATALOGUE["c"])
    assert nm.query == "12 dining chairs" and nm.grade == "partial"
    nm = g.accessory("slim can cooler", CATALOGUE["a"])
    assert nm.grade == "irrelevant" and attr.is_accessory_of(nm.item.title, "slim can cooler")
    assert Generators(CATALOGUE, ["irrelevant", "complement", "substitute", "exact"], random.Random(0)).accessory(
        "slim can cooler", CATALOGUE["a"]).grade == "complement"
    nm = g.negation("slim can cooler", CATALOGUE["a"])
    assert nm.grade == "irrelevant" and attr.has_negation(nm.query)


def test_generate_respects_budget_per_type():
    sources = [Pair("yeti slim can cooler", "a", "exact"), Pair("6 dining chairs", "c", "exact")]
    near, counts = generate(sources, CATALOGUE, GRADES, {"brand": 1, "accessory": 2, "audience": 3}, seed=0)
    assert counts["brand"]["generated"] == 1 and counts["accessory"]["generated"] == 2
    assert counts["audience"]["generated"] == 0 and "no generator" in counts["audience"]["note"]
    assert len(near) == 3


def test_click_model_rates_follow_parameters():
    cm = ClickModelSpec(impressions=2000, position_decay=0.0, click_prob=[0.05, 0.3, 0.6], purchase_prob=[0.0, 0.1, 0.3], noise=0.0)
    pairs = [Pair(f"q{i}", f"i{i}", GRADES[i % 3]) for i in range(300)]
    log = simulate(pairs, GRADES, cm, seed=0)
    assert all(b.simulated for b in log)
    grade_of = {(p.query, p.item_id): p.grade for p in pairs}
    for g, grade in enumerate(GRADES):
        rows = [b for b in log if grade_of[(b.query, b.item_id)] == grade]
        ctr = sum(b.clicks for b in rows) / sum(b.impressions for b in rows)
        assert ctr == pytest.approx(cm.click_prob[g], abs=0.01)
        if g:
            cvr = sum(b.purchases for b in rows) / sum(b.clicks for b in rows)
            assert cvr == pytest.approx(cm.purchase_prob[g], abs=0.02)


def test_click_model_position_bias():
    cm = ClickModelSpec(impressions=5000, position_decay=1.0, noise=0.0)
    pairs = [Pair("q", f"i{i}", "exact") for i in range(4)]
    log = simulate(pairs, GRADES, cm, seed=3)
    ctrs = sorted((b.clicks / b.impressions for b in log), reverse=True)
    assert ctrs[0] == pytest.approx(0.6, abs=0.03) and ctrs[3] == pytest.approx(0.6 / 4, abs=0.02)
