"""Error-type profiler: where does a model err, and what kind of error is it?

Each pair gets one type from the key-attribute hierarchy by comparing the
extracted attributes of query and item: negation in the query first, then an
accessory item for the queried product, then the first attribute in hierarchy
order that the query names and the item contradicts ("category" is the product
type), else "other". An error is a pair whose predicted grade differs from the
reference grade; a type's error rate is its errors over its pairs, so a type
the reference data rarely shows is not mistaken for one the model handles well.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from typing import get_args

from . import attributes as attr
from .schema import ErrorType

TAXONOMY = list(get_args(ErrorType))  # the one list: schema.ErrorType (the CRD's enum too)
_ATTR_TYPE = {"type": "category"}   # attribute name -> error type name where they differ
MAX_EXAMPLES = 3


def pair_type(query: str, title: str, attributes: dict | None = None, brands: attr.BrandLexicon | None = None,
              types: list[str] | None = None) -> str:
    """The error type a pair would fall under, restricted to `types` (the catalogue's taxonomy) + other."""
    allowed = set(types or TAXONOMY) | {"other"}
    if "negation" in allowed and attr.has_negation(query):
        return "negation"
    if "accessory" in allowed and attr.is_accessory_of(title, query):
        return "accessory"
    verdict = attr.compare(attr.extract(query, brands=brands), attr.extract(title, attributes, brands))
    for key in attr.HIERARCHY:
        kind = _ATTR_TYPE.get(key, key)
        if verdict.get(key) == "mismatch" and kind in allowed:
            return kind
    return "other"


def profile(records: list[dict], source: str, types: list[str] | None = None,
            brands: attr.BrandLexicon | None = None) -> dict:
    """records: {query, title, attributes?, gold, pred} with grade names (pred None = unknown, counted wrong).

    Returns {source, pairs, errors, errorRate, perType: {type: {pairs, errors, rate, share, examples}}}.
    """
    pairs, errs, examples = Counter(), Counter(), defaultdict(list)
    for r in records:
        t = pair_type(r["query"], r["title"], r.get("attributes"), brands, types)
        pairs[t] += 1
        if r["pred"] != r["gold"]:
            errs[t] += 1
            if len(examples[t]) < MAX_EXAMPLES:
                examples[t].append({"query": r["query"], "title": r["title"], "gold": r["gold"], "pred": r["pred"]})
    total_err = sum(errs.values())
    per_type = {t: {"pairs": pairs[t], "errors": errs[t], "rate": round(errs[t] / pairs[t], 4) if pairs[t] else None,
                    "share": round(errs[t] / total_err, 4) if total_err else 0.0, "examples": examples[t]}
                for t in dict.fromkeys([*(types or TAXONOMY), "other"])}
    n = sum(pairs.values())
    return {"source": source, "pairs": n, "errors": total_err, "errorRate": round(total_err / n, 4) if n else None,
            "perType": per_type}


def rates(prof: dict) -> dict[str, float]:
    """Error rate per type (types with no pairs in the profile have no evidence and are left out)."""
    return {t: v["rate"] for t, v in prof.get("perType", {}).items() if v.get("rate") is not None}


def summary(prof: dict) -> dict:
    """The small form that goes into metrics and the round status: rate and count per type."""
    return {"source": prof.get("source"), "errorRate": prof.get("errorRate"),
            "perType": {t: {"errors": v.get("errors"), "rate": v.get("rate")} for t, v in prof["perType"].items()
                        if v.get("pairs", 1)}}


def load(path: Path) -> dict:
    """Read an error_profile.json, with an error naming the file when it is not one."""
    try:
        prof = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable error profile ({e})") from None
    if not isinstance(prof, dict) or not isinstance(prof.get("perType"), dict):
        raise ValueError(f"{path}: an error profile needs a 'perType' object")
    for t, v in prof["perType"].items():
        if t not in TAXONOMY:
            raise ValueError(f"{path}: perType.{t}: not an error type (types are {TAXONOMY})")
        if not isinstance(v, dict) or not (v.get("rate") is None or isinstance(v.get("rate"), (int, float))):
            raise ValueError(f"{path}: perType.{t}.rate: needs a number or null")
    return prof
