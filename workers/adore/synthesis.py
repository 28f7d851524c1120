"""Near-miss generators: from a relevant pair, change exactly one key attribute.

Items are never invented: a synthetic item is an edit of a real catalogue
item (its id is derived from the source's and it records the source pair).
Query-side edits are used where the query does not name the attribute.
The implied grade follows the rules (RULE_GRADE): another brand, model,
colour, size, material, audience or pack count of the same product is partial
(second-highest grade); another product type, an accessory for the product,
or an item the query excludes by negation is irrelevant (lowest grade, or
'complement' for accessories where the scheme has it).
"""
from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, get_args

from . import attributes as attr
from .data.contract import Item, Pair
from .schema import ErrorType


@dataclass
class NearMiss:
    query: str
    item: Item
    grade: str
    type: str
    source: tuple[str, str]


def _partial(grades):
    return grades[-2]


def _irrelevant(grades):
    return grades[0]


def _accessory_grade(grades):
    return "complement" if "complement" in grades else grades[0]


RULE_GRADE: dict[str, Callable[[list[str]], str]] = {
    "category": _irrelevant, "brand": _partial, "model": _partial, "colour": _partial, "size": _partial,
    "material": _partial, "quantity": _partial, "audience": _partial, "accessory": _accessory_grade,
    "negation": _irrelevant,
}


def rule_grade(kind: str, grades: list[str]) -> str:
    """The grade the rules imply for a near miss of this kind."""
    return RULE_GRADE[kind](grades)


def _syn_item(item: Item, kind: str, title: str, attributes: dict | None = None) -> Item:
    digest = hashlib.sha1(f"{item.item_id}|{kind}|{title}".encode()).hexdigest()[:10]
    return Item(f"syn-{kind}-{digest}", title, item.description if kind not in ("brand",) else "",
                attributes if attributes is not None else dict(item.attributes))


def _replace_word(text: str, old: str, new: str) -> str | None:
    rx = re.compile(r"(?<![A-Za-z0-9])" + re.escape(old) + r"(?![A-Za-z0-9])", re.I)
    out, n = rx.subn(new, text, count=1)
    return out if n else None


class Generators:
    def __init__(self, catalogue: dict[str, Item], grades: list[str], rng: random.Random):
        self.grades, self.rng = grades, rng
        self.brands = attr.BrandLexicon.from_catalogue(catalogue.values())
        self.brand_names = sorted(self.brands.brands)
        types = Counter(attr.product_type(i.title) for i in catalogue.values())
        self.types = sorted(t for t, c in types.items() if t and c >= 2 and len(t) > 2 and t not in attr.MATERIALS
                            and t not in attr.ACCESSORY_WORDS and t not in self.brands.brands)

    def _near(self, query: str, item: Item, kind: str, source_query: str, source_item: Item) -> NearMiss:
        return NearMiss(query, item, rule_grade(kind, self.grades), kind, (source_query, source_item.item_id))

    def category(self, query: str, item: Item) -> NearMiss | None:
        """The query asks for another product type from the catalogue (same modifiers)."""
        t = attr.product_type(query)
        if not t:
            return None
        word = next((w for w in attr.words(query) if attr.singular(w) == t), None)
        others = [o for o in self.types if o != t and o not in attr.words(query)]
        if word is None or not others:
            return None
        new_query = _replace_word(query, word, self.rng.choice(others))
        return self._near(new_query, item, "category", query, item) if new_query else None

    def model(self, query: str, item: Item) -> NearMiss | None:
        """Another model number of the same product: the last digit of the model moves by one."""
        ia = attr.extract(item.title, item.attributes, self.brands)
        if "model" not in ia:
            return None
        old = ia["model"]
        new = re.sub(r"(\d)(?!.*\d)", lambda m: str((int(m.group(1)) + 1) % 10), old)
        if old in query.lower():
            title = _replace_word(item.title, old, new.upper())
            return self._near(query, _syn_item(item, "model", title), "model", query, item) if title else None
        return self._near(f"{query} {new}", item, "model", query, item)

    def material(self, query: str, item: Item) -> NearMiss | None:
        ia = attr.extract(item.title, item.attributes, self.brands)
        qa = attr.extract(query, brands=self.brands)
        taken = {ia.get("material"), qa.get("material")} | set(attr.COLOURS)
        new = self.rng.choice(sorted(m for m in attr.MATERIALS if m not in taken and m not in attr.MATERIAL_CANON))
        if "material" in qa and "material" in ia:
            word = next(w for w in attr.words(item.title) if attr.MATERIAL_CANON.get(w, w) == ia["material"])
            title = _replace_word(item.title, word, new.title())
            return self._near(query, _syn_item(item, "material", title), "material", query, item) if title else None
        if "material" in ia:
            return self._near(f"{new} {query}", item, "material", query, item)
        return None

    def audience(self, query: str, item: Item) -> NearMiss | None:
        ia = attr.extract(item.title, item.attributes, self.brands)
        qa = attr.extract(query, brands=self.brands)
        if "audience" not in ia or "unisex" == ia["audience"]:
            return None
        new = self.rng.choice(sorted({"men", "women", "kids"} - {ia["audience"]}))
        if "audience" in qa:
            word = next(w for w in attr.words(query) if attr.AUDIENCE.get(w) == qa["audience"])
            new_query = _replace_word(query, word, new)
            return self._near(new_query, item, "audience", query, item) if new_query and qa["audience"] != new else None
        return self._near(f"{new}s {query}" if new != "kids" else f"kids {query}", item, "audience", query, item)

    def brand(self, query: str, item: Item) -> NearMiss | None:
        ia = attr.extract(item.title, item.attributes, self.brands)
        qa = attr.extract(query, brands=self.brands)
        if "brand" not in ia:
            return None
        others = [b for b in self.brand_names if b != ia["brand"] and b not in ia["brand"] and len(b) > 2]
        if not others:
            return None
        new = self.rng.choice(others)
        if "brand" in qa:  # the query names the brand: the item moves to another brand
            title = _replace_word(item.title, ia["brand"], new.title())
            if title is None:
                title = f"{new.title()} {item.title}"
            attrs = {**item.attributes, "brand": new.title()} if "brand" in item.attributes else dict(item.attributes)
            return NearMiss(query, _syn_item(item, "brand", title, attrs), _partial(self.grades), "brand", (query, item.item_id))
        # otherwise the query asks for another brand of the same product
        return NearMiss(f"{new} {query}", item, _partial(self.grades), "brand", (query, item.item_id))

    def colour(self, query: str, item: Item) -> NearMiss | None:
        ia = attr.extract(item.title, item.attributes)
        qa = attr.extract(query)
        if "colour" in qa and "colour" in ia:
            new = self.rng.choice(sorted(attr.COLOURS - {ia["colour"], qa["colour"], "gray", "multi", "clear"}))
            title = _replace_word(item.title, ia["colour"], new.title()) or _replace_word(item.title, item.attributes.get("colour", "~"), new.title())
            if title is None:
                return None
            attrs = {**item.attributes, "colour": new.title()} if "colour" in item.attributes else dict(item.attributes)
            return NearMiss(query, _syn_item(item, "colour", title, attrs), _partial(self.grades), "colour", (query, item.item_id))
        if "colour" in ia:
            new = self.rng.choice(sorted(attr.COLOURS - {ia["colour"], "gray", "multi", "clear", "oak", "cherry", "walnut"}))
            return NearMiss(f"{new} {query}", item, _partial(self.grades), "colour", (query, item.item_id))
        return None

    def quantity(self, query: str, item: Item) -> NearMiss | None:
        ia = attr.extract(item.title, item.attributes)
        qa = attr.extract(query)
        if "quantity" in qa:
            q = int(qa["quantity"])
            new = str(q * 2 if q < 50 else q // 2)
            new_query = re.sub(r"\b" + re.escape(qa["quantity"]) + r"\b", new, query, count=1)
            if new_query != query:
                return NearMiss(new_query, item, _partial(self.grades), "quantity", (query, item.item_id))
        if "quantity" in ia:
            q = int(ia["quantity"])
            return NearMiss(f"{query} pack of {q + 2 if q < 50 else q // 2}", item, _partial(self.grades), "quantity", (query, item.item_id))
        return None

    def size(self, query: str, item: Item) -> NearMiss | None:
        qa = attr.extract(query)
        if "size" not in qa:
            return None
        # the number of the first size the query names (not a pack count before it)
        hits = [m for rx, _ in attr._SIZE_RES for m in [rx.search(query)] if m and re.fullmatch(r"\d+(?:\.\d+)?", m.group(1))]
        if not hits:
            return None
        m = min(hits, key=lambda m: m.start())
        n = float(m.group(1))
        new = str(int(n * 2)) if n.is_integer() else f"{n * 2:g}"
        return NearMiss(query[:m.start(1)] + new + query[m.end(1):], item, _partial(self.grades), "size", (query, item.item_id))

    def accessory(self, query: str, item: Item) -> NearMiss | None:
        t = attr.product_type(item.title)
        if not t or t in attr.ACCESSORY_WORDS:
            return None
        acc = self.rng.choice(["Replacement Cover", "Carrying Case", "Mounting Bracket", "Replacement Parts Kit", "Protective Sleeve"])
        return NearMiss(query, _syn_item(item, "accessory", f"{acc} for {item.title}", {}), _accessory_grade(self.grades), "accessory", (query, item.item_id))

    def negation(self, query: str, item: Item) -> NearMiss | None:
        ia = attr.extract(item.title, item.attributes, self.brands)
        for key in ("brand", "colour", "material"):
            if key in ia and ia[key] not in query:
                return NearMiss(f"{query} without {ia[key]}" if key != "brand" else f"{query} not {ia[key]}", item,
                                _irrelevant(self.grades), "negation", (query, item.item_id))
        return None

    def get(self, kind: str) -> Callable[[str, Item], NearMiss | None] | None:
        return getattr(self, kind, None) if kind in SUPPORTED else None


SUPPORTED = [t for t in get_args(ErrorType) if t != "other"]  # every type but "other", which is profiled only


def mix(rates: dict[str, float], types: list[str], total: int, floor: float) -> dict[str, int]:
    """Pairs per type: each type gets at least `floor` of the budget, the rest goes in proportion to
    its error rate (no rate: no evidence, floor only); largest remainders make the sum exact."""
    base = min(floor, 1.0 / len(types)) * total
    rest = total - base * len(types)
    weights = {t: max(float(rates.get(t) or 0.0), 0.0) for t in types}
    norm = sum(weights.values())
    exact = {t: base + (rest * w / norm if norm else rest / len(types)) for t, w in weights.items()}
    out = {t: int(v) for t, v in exact.items()}
    for t in sorted(types, key=lambda t: (-(exact[t] - out[t]), types.index(t)))[:total - sum(out.values())]:
        out[t] += 1
    return out


def generate(sources: list[Pair], catalogue: dict[str, Item], grades: list[str], per_type: dict[str, int],
             seed: int) -> tuple[list[NearMiss], dict]:
    """Up to per_type[kind] near misses of each kind from the relevant source pairs."""
    rng = random.Random(seed)
    gens = Generators(catalogue, grades, rng)
    out, counts = [], {}
    for kind, n in per_type.items():
        fn = gens.get(kind)
        if fn is None:
            counts[kind] = {"generated": 0, "note": "no generator for this type yet"}
            continue
        order = sources[:]
        rng.shuffle(order)
        made = 0
        for p in order:
            if made >= n:
                break
            nm = fn(p.query, catalogue[p.item_id])
            if nm is not None:
                out.append(nm)
                made += 1
        counts[kind] = {"generated": made}
    return out, counts


def to_records(near: list[NearMiss]) -> tuple[list[Pair], list[Item]]:
    pairs, items = [], {}
    for nm in near:
        pairs.append(Pair(nm.query, nm.item.item_id, nm.grade,
                          synthetic={"type": nm.type, "source_query": nm.source[0], "source_item": nm.source[1]}))
        items[nm.item.item_id] = nm.item
    return pairs, list(items.values())
