"""Fast key-attribute extraction from queries and item titles.

Serving must not need the LLM, so the student's attribute input comes from
this extractor: lexicons and regular expressions, plus a brand lexicon built
from the catalogue. Structured catalogue fields (ESCI brand/colour) win over
extraction. Units and spellings are normalised ("2 in." == "2-inch" == "2 in").
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

# Hierarchy order: the student reads attributes in this order.
HIERARCHY = ["type", "brand", "model", "colour", "size", "material", "quantity", "audience"]

COLOURS = {
    "black", "white", "red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "grey", "gray",
    "silver", "gold", "beige", "tan", "navy", "teal", "ivory", "cream", "bronze", "copper", "chrome", "nickel",
    "clear", "olive", "maroon", "charcoal", "khaki", "turquoise", "almond", "biscuit", "espresso", "walnut",
    "oak", "cherry", "mahogany", "multi", "nude", "aqua", "burgundy", "lavender", "mint", "coral",
}
COLOUR_CANON = {"gray": "grey"}
MATERIAL_CANON = {"wooden": "wood", "aluminium": "aluminum", "stainless": "stainless steel"}
MATERIALS = {
    "steel", "stainless", "aluminum", "aluminium", "wood", "wooden", "plastic", "vinyl", "brass", "copper",
    "iron", "glass", "ceramic", "porcelain", "concrete", "leather", "cotton", "polyester", "nylon", "rubber",
    "fiberglass", "pvc", "velvet", "wool", "silicone", "granite", "marble", "bamboo", "cedar", "pine",
    "oak", "acrylic", "metal", "foam", "canvas", "linen", "denim",
}
AUDIENCE = {"men": "men", "mens": "men", "man": "men", "women": "women", "womens": "women", "woman": "women",
            "ladies": "women", "mujer": "women", "kids": "kids", "kid": "kids", "boys": "kids", "girls": "kids",
            "baby": "baby", "toddler": "baby", "infant": "baby", "unisex": "unisex",
            "men's": "men", "women's": "women", "kid's": "kids", "kids'": "kids", "boy's": "kids", "girl's": "kids"}
ACCESSORY_WORDS = {"case", "cover", "charger", "replacement", "part", "parts", "holder", "mount", "adapter",
                   "bracket", "filter", "cartridge", "refill", "strap", "bag", "sleeve", "lid", "cable", "cord",
                   "battery", "batteries", "bulb", "blade", "blades", "nozzle", "hose", "knob", "handle", "skin",
                   "protector", "stand", "accessory", "accessories", "kit"}
NEGATIONS = {"without", "no", "not", "non", "excluding", "except", "free"}
STOP = {"the", "a", "an", "and", "or", "of", "for", "with", "in", "on", "to", "by", "&", "-", "x", "set", "pack",
        "pcs", "piece", "pieces", "new", "inch", "in", "ft", "size"}

_UNIT_CANON = [
    (r"(?:inches|inch|in\.?|\"|'')", "in"), (r"(?:feet|foot|ft\.?|')", "ft"), (r"(?:gallons?|gal\.?)", "gal"),
    (r"(?:ounces?|oz\.?)", "oz"), (r"(?:pounds?|lbs?\.?)", "lb"), (r"(?:watts?|w)", "w"), (r"(?:volts?|v)", "v"),
    (r"(?:amps?|a)", "a"), (r"(?:millimeters?|mm)", "mm"), (r"(?:centimeters?|cm)", "cm"), (r"(?:meters?|m)", "m"),
    (r"(?:liters?|litres?|l)", "l"), (r"(?:gauge|ga\.?)", "gauge"), (r"(?:btu)", "btu"), (r"(?:quarts?|qt\.?)", "qt"),
    (r"(?:sq\.?\s*ft\.?)", "sqft"), (r"(?:cu\.?\s*ft\.?)", "cuft"), (r"(?:mah)", "mah"), (r"(?:gb|tb)", None), (r"(?:yards?|yds?\.?)", "yd"),
]
_NUM = r"(\d+(?:\.\d+)?(?:/\d+)?|\d+\s+\d/\d+)"
_SIZE_RES = [(re.compile(_NUM + r"\s*-?\s*" + pat + r"(?![a-z])", re.I), canon) for pat, canon in _UNIT_CANON]
_DIMS = re.compile(r"\b(\d+(?:\.\d+)?)\s*(?:in\.?|\"|')?\s*x\s*(\d+(?:\.\d+)?)(?:\s*(?:in\.?|\"|')?\s*x\s*(\d+(?:\.\d+)?))?", re.I)
_CLOTHING = re.compile(r"\b(?:size\s+)?(\d{1,2}t(?:-\d{1,2}t)?|x{0,3}[sml]|xx?l|\d{2}x\d{2})\b", re.I)
_QTY = [re.compile(p, re.I) for p in (
    r"\b(?:pack|set|case|box|bag) of (\d+)\b", r"\b(\d+)[- ]?(?:pack|pk|count|ct|pcs|pieces|piece)\b",
    r"\b(\d+)\s*-?\s*(?:pc)\b", r"^(\d+)\s+(?!(?:in|inch|ft|gal|oz|lb|mm|cm|x|ml)\b)(?=[a-z])")]
_MODEL = re.compile(r"\b(?=[a-z0-9-]*\d)(?=[a-z0-9-]*[a-z])[a-z0-9]+(?:-[a-z0-9]+)*\b", re.I)
_SIZE_LIKE = re.compile(r"\d+(?:\.\d+)?-?(?:gal|gauge|in|inch|ft|oz|lb|mm|cm|v|w|t|amp|watt|volt)s?(?:-\d+t)?|\d+x\d+(?:x\d+)?", re.I)
_COMPOUND = re.compile(r"\d+(?:\.\d+)?-[a-z]+", re.I)  # "4-Pack", "1-Part", "3-Light": counts, not model numbers
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?", re.I)


def _norm_num(n: str) -> str:
    n = n.strip()
    return n[:-2] if n.endswith(".0") else n


def sizes(text: str) -> list[str]:
    """Sizes in one normal form: "2 in." / '2"' / "2-inch" -> "2 in"; "9 in. x 11 in." -> "9x11 in"."""
    found, spans = [], []
    for m in _DIMS.finditer(text):
        unit = next((canon for rx, canon in _SIZE_RES if canon and rx.match(text, m.start())), None)
        found.append("x".join(_norm_num(g) for g in m.groups() if g) + (f" {unit}" if unit else ""))
        spans.append((m.start(), m.end()))
    for rx, canon in _SIZE_RES:
        for m in rx.finditer(text):
            if any(a <= m.start() < b for a, b in spans) or re.fullmatch(r"\d+M", m.group(0)):
                continue  # a number of a dimension read above, or a brand like "3M"
            unit = canon or m.group(0)[len(m.group(1)):].strip().lower()
            found.append(f"{_norm_num(m.group(1))} {unit}")
    for m in _CLOTHING.finditer(text):
        if m.group(1).lower() not in {"s", "m", "l"} or "size" in m.group(0).lower():
            found.append(m.group(1).lower())
    return list(dict.fromkeys(found))


def quantity(text: str) -> str | None:
    """Pack count; the first one named wins ("(4-Pack) (Case of 20)" -> "4")."""
    hits = [m for rx in _QTY for m in [rx.search(text)] if m]
    return min(hits, key=lambda m: m.start()).group(1) if hits else None


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def product_type(text: str, exclude: frozenset = frozenset()) -> str | None:
    """Head noun phrase: the last content word before a 'for/with/in' clause."""
    # " in " after a word (not a number: "2 in. pipe") starts a finish clause: "Vanity in White".
    head = re.split(r"\b(?:for|with|by|from|without|compatible)\b|[,(|]|\s-\s|(?<=[a-z])\s+in\s+(?=[a-z])",
                    text, maxsplit=1, flags=re.I)[0]
    toks = [w for w in words(head) if w not in STOP and not any(c.isdigit() for c in w)
            and w not in COLOURS and w not in AUDIENCE and w not in exclude]
    return singular(toks[-1]) if toks else None


def singular(w: str) -> str:
    if len(w) <= 3 or w.endswith("ss") or w.endswith("us"):
        return w
    if w.endswith("ies"):
        return w[:-3] + "y"
    if w.endswith(("sses", "ches", "shes", "xes")):
        return w[:-2]
    return w[:-1] if w.endswith("s") else w


class BrandLexicon:
    """Brands known from structured fields plus title-initial words repeated across the catalogue.

    Title-case catalogues (Home Depot) start many titles with ordinary words ("Garage Door ...");
    a word counts as a brand only if it mostly appears title-initial where it appears at all.
    """

    def __init__(self, brands: Iterable[str] = ()):
        self.brands = {b.lower() for b in brands if b}

    @classmethod
    def from_catalogue(cls, items: Iterable, min_count: int = 2, min_initial_share: float = 0.5) -> "BrandLexicon":
        items = list(items)
        explicit = {i.attributes.get("brand", "") for i in items}
        first, anywhere = Counter(), Counter()
        for i in items:
            w = i.title.split()
            if w and w[0][:1].isupper() and not w[0][:1].isdigit():
                first[w[0].strip(",").lower()] += 1
            anywhere.update(set(words(i.title)))
        common = {w for w in first if w in STOP or w in COLOURS or w in MATERIALS or w in AUDIENCE}
        return cls(explicit | {w for w, c in first.items() if c >= min_count and w not in common
                               and c >= min_initial_share * anywhere.get(w, c)})

    def find(self, text: str) -> str | None:
        """The brand named earliest (titles start with it), the longest on a tie."""
        low = " " + " ".join(words(text)) + " "
        best, best_key = None, None
        for b in self.brands:
            key = " " + " ".join(words(b)) + " "
            at = low.find(key) if key.strip() else -1
            if at >= 0 and (best is None or (at, -len(b)) < best_key):
                best, best_key = b, (at, -len(b))
        return best


def extract(text: str, attributes: dict | None = None, brands: BrandLexicon | None = None) -> dict:
    """Key attributes of a query or an item, in HIERARCHY order, absent ones omitted."""
    attributes = attributes or {}
    ws = words(text)
    out: dict[str, str] = {}
    brand = attributes.get("brand") or (brands.find(text) if brands else None)
    t = product_type(text, frozenset(words(str(brand))) if brand else frozenset())
    if t:
        out["type"] = t
    if brand:
        out["brand"] = str(brand).lower()
    size_list = sizes(text)
    size_words = {w for s_ in size_list for w in words(s_)} | {s_.replace(" ", "-") for s_ in size_list}
    models = [m.lower() for m in _MODEL.findall(text)
              if not re.fullmatch(r"\d+(?:[a-z]{1,3})?", m.lower()) and m.lower() not in size_words
              and not _SIZE_LIKE.fullmatch(m.lower()) and not _COMPOUND.fullmatch(m)]
    if models:
        out["model"] = models[0]
    colour = attributes.get("colour") or attributes.get("color") or next((w for w in ws if w in COLOURS), None)
    if colour:
        c = str(colour).lower()
        out["colour"] = COLOUR_CANON.get(c, c)
    if size_list:
        out["size"] = ", ".join(size_list[:2])
    m = next((w for w in ws if w in MATERIALS), None)
    if m:
        out["material"] = MATERIAL_CANON.get(m, m)
    q = quantity(text)
    if q:
        out["quantity"] = q
    a = next((AUDIENCE[w] for w in ws if w in AUDIENCE), None)
    if a:
        out["audience"] = a
    return out


def is_accessory_of(item_title: str, query: str) -> bool:
    """True when the item reads as an accessory for the queried product ("case for ...")."""
    t = product_type(item_title)
    q = product_type(query)
    return bool(t and t in ACCESSORY_WORDS and q != t)


def has_negation(query: str) -> bool:
    return any(w in NEGATIONS for w in words(query))


def compare(query_attrs: dict, item_attrs: dict) -> dict[str, str]:
    """Per-attribute verdict: match / mismatch (only for attributes the query names)."""
    out = {}
    for k in HIERARCHY:
        if k not in query_attrs:
            continue
        if k not in item_attrs:
            out[k] = "unknown"
        else:
            qv, iv = query_attrs[k], item_attrs[k]
            # whole words, not substrings: "men" must not match "women"
            qw, iw = set(words(qv)), set(words(iv))
            out[k] = "match" if (qv == iv or qw <= iw or iw <= qw) else "mismatch"
    return out


def render(attrs: dict) -> str:
    return "; ".join(f"{k}={attrs[k]}" for k in HIERARCHY if k in attrs) or "none"
