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
    near, counts = generate(sources, CATALOGUE, GRADES, {"brand": 1, "accessory": 2, "other": 3}, seed=0)
    assert counts["brand"]["generated"] == 1 and counts["accessory"]["generated"] == 2
    assert counts["other"]["generated"] == 0 and "no generator" in counts["other"]["note"]
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


# --- the full hierarchy on real titles (Home Depot, CrowdFlower, ESCI sample in ../shared/data)

def _titles(name: str, column: str) -> set[str]:
    import csv

    from conftest import shared

    with open(shared(name), encoding="utf-8") as f:
        return {r[column] for r in csv.DictReader(f)}


REAL = [
    ("homedepot/pairs.csv", "Virtu USA Tavian 60 in. Double Vanity in White with Stone Vanity Top in White and Mirror",
     {"type": "vanity", "brand": "virtu", "colour": "white", "size": "60 in"}),
    ("homedepot/pairs.csv", "Dolle Prova PA98 Wood Handrail Connector",
     {"type": "connector", "brand": "dolle", "model": "pa98", "material": "wood"}),
    ("homedepot/pairs.csv", "3M Scotch 1.88 in. x 54.6 yds. Long Lasting Moving and Storage Packaging Tape (3-Pack)",
     {"type": "tape", "size": "1.88x54.6 in", "quantity": "3"}),
    ("homedepot/pairs.csv", "Philips 60-Watt Incandescent A19 Garage Door Light Bulb (2-Pack)",
     {"type": "bulb", "brand": "philips", "model": "a19", "size": "60 w", "quantity": "2"}),
    ("homedepot/pairs.csv", "1-Spray 16 in. Raincan Square Ceiling Mount Rain Ultra Thin Showerhead in Stainless Steel",
     {"type": "showerhead", "size": "16 in", "material": "stainless steel"}),
    ("crowdflower/pairs.csv", "Mizuno 320432 9-Spike Advanced Classic 7 Mid Men's Metal Baseball Cleats Size 11 1/2",
     {"type": "cleat", "material": "metal", "audience": "men"}),
    ("crowdflower/pairs.csv", "Logitech Wireless Mouse M320", {"type": "mouse", "model": "m320"}),
]


@pytest.fixture(scope="module")
def homedepot_brands():
    import csv

    from conftest import shared

    with open(shared("homedepot/pairs.csv"), encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:20000]
    return attr.BrandLexicon.from_catalogue(Item(r["product_uid"], r["product_title"]) for r in rows)


@pytest.mark.parametrize("source,title,expected", REAL)
def test_hierarchy_on_real_titles(source, title, expected, homedepot_brands):
    column = "product_title"
    assert title in _titles(source, column), "the test title must be a real one"
    got = attr.extract(title, brands=homedepot_brands)
    for k, v in expected.items():
        assert got.get(k) == v, (k, got)
    assert list(got) == [k for k in attr.HIERARCHY if k in got]   # hierarchy order for the student


def test_title_case_words_are_not_brands(homedepot_brands):
    # Home Depot titles are Title Case; words that open some titles but mostly sit inside others are not brands.
    for word in ("garage", "single", "corner", "square"):
        assert word not in homedepot_brands.brands
    assert {"behr", "philips", "virtu"} <= homedepot_brands.brands


def test_esci_structured_brand_and_colour():
    import csv

    from conftest import shared

    with open(shared("esci-sample/products_exact.csv"), encoding="utf-8") as f:
        row = next(r for r in csv.DictReader(f) if r["product_brand"] == "WENYU")
    got = attr.extract(row["product_title"], {"brand": row["product_brand"], "colour": row["product_color"]})
    assert got["brand"] == "wenyu" and got["colour"] == "grey" and got["type"] == "chair"


def test_dimensions_and_brands_like_3m():
    assert attr.sizes("9 in. x 11 in. sheet") == ["9x11 in"]
    assert attr.sizes("3M tape") == [] and attr.sizes("3 m cable") == ["3 m"]
    assert attr.extract("Wooden stool")["material"] == attr.extract("wood stool")["material"] == "wood"


# --- every generator: exactly its attribute, the rule grade, and the profiler agrees on the type

from adore.error_profile import pair_type  # noqa: E402
from adore.synthesis import rule_grade  # noqa: E402

GEN_CATALOGUE = {
    **CATALOGUE,
    "d": Item("d", "Logitech Wireless Mouse M320", attributes={"brand": "Logitech"}),
    "e": Item("e", "Nike Men's Running Shoes"),
    "f": Item("f", "Acme Steel Folding Table 6 ft"),
    "g": Item("g", "Acme Folding Chair"),
    "h": Item("h", "Logitech Wireless Keyboard K270", attributes={"brand": "Logitech"}),
    "i": Item("i", "Nike Men's Running Jacket"),
}

GEN_CASES = [   # kind, query, item, which side changes
    ("category", "folding table", "f", "query"),
    ("brand", "yeti slim can cooler", "a", "item"),
    ("model", "logitech wireless mouse m320", "d", "item"),
    ("model", "logitech wireless mouse", "d", "query"),
    ("colour", "black slim can cooler", "a", "item"),
    ("size", "6 ft folding table", "f", "query"),
    ("material", "steel folding table", "f", "item"),
    ("material", "folding table", "f", "query"),
    ("quantity", "6 dining chairs", "c", "query"),
    ("audience", "mens running shoes", "e", "query"),
    ("accessory", "slim can cooler", "a", "item"),
    ("negation", "slim can cooler", "a", "query"),
]


@pytest.mark.parametrize("kind,query,item_id,side", GEN_CASES)
def test_each_generator_changes_exactly_its_attribute(kind, query, item_id, side):
    g = Generators(GEN_CATALOGUE, GRADES, random.Random(3))
    src = GEN_CATALOGUE[item_id]
    nm = g.get(kind)(query, src)
    assert nm is not None and nm.type == kind and nm.source == (query, item_id)
    assert nm.grade == rule_grade(kind, GRADES)
    assert nm.grade == ("irrelevant" if kind in ("category", "accessory", "negation") else "partial")
    key = {"category": "type"}.get(kind, kind)
    if side == "query":
        assert nm.item is src
        if kind != "negation":
            assert _diff_keys(attr.extract(query, brands=g.brands), attr.extract(nm.query, brands=g.brands)) == {key}
    else:
        assert nm.query == query and nm.item.item_id.startswith(f"syn-{kind}-")   # an edit of a real item
        if kind != "accessory":
            before = attr.extract(src.title, src.attributes, g.brands)
            assert _diff_keys(before, attr.extract(nm.item.title, nm.item.attributes, g.brands)) == {key}
    assert pair_type(nm.query, nm.item.title, nm.item.attributes, g.brands) == kind
