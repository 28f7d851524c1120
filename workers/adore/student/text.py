"""The student's input text (kept free of torch: Triton's python backend imports it)."""
from __future__ import annotations

from .. import attributes as attr


def item_text(title: str, attributes: dict, meta_brands: attr.BrandLexicon | None, use_attributes: bool) -> str:
    if not use_attributes:
        return title
    a = attr.extract(title, attributes, meta_brands)
    return title + "".join(f" | {k}: {a[k]}" for k in attr.HIERARCHY if k in a)
