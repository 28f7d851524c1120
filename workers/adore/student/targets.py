"""Targets for the auxiliary per-attribute heads: match / mismatch / unknown per attribute.

The teacher's rationale carries a comparison line ("brand match; colour
mismatch"); where it names an attribute, its verdict is the target. Where it
does not (or the rationale did not parse), the fast extractor compares the
query's and the item's attributes, so every pair whose query names an
attribute gets a target. Attributes the query does not name get none.
"""
from __future__ import annotations

import re

from .. import attributes as attr

_SYNONYM = {"color": "colour", "category": "type", "product type": "type", "series": "model", "pack": "quantity",
            "dimensions": "size"}
_VERDICT = {"match": "match", "matches": "match", "same": "match", "mismatch": "mismatch", "differs": "mismatch",
            "different": "mismatch", "unknown": "unknown", "missing": "unknown"}
_LINE = re.compile(r"\b(" + "|".join(sorted(set(attr.HIERARCHY) | set(_SYNONYM), key=len, reverse=True))
                   + r")\b\s*[:=]?\s*(" + "|".join(_VERDICT) + r")\b", re.I)


def parse_comparison(text: str | None) -> dict[str, str]:
    """Verdicts the teacher's comparison line states, by attribute (canonical names)."""
    out: dict[str, str] = {}
    for name, verdict in _LINE.findall(text or ""):
        key = _SYNONYM.get(name.lower(), name.lower())
        out.setdefault(key, _VERDICT[verdict.lower()])
    return out


def aux_targets(annotation: dict | None, query_attrs: dict, item_attrs: dict) -> tuple[dict[str, str], str]:
    """(verdict per attribute, source) with source "teacher", "extractor" or "none"."""
    teacher = parse_comparison(((annotation or {}).get("teacher_attributes") or {}).get("comparison"))
    fast = attr.compare(query_attrs, item_attrs)
    if teacher:
        return {**fast, **teacher}, "teacher"
    return fast, "extractor" if fast else "none"
