"""The student's input text (kept free of torch: Triton's python backend imports it)."""
from __future__ import annotations

from .. import attributes as attr


def item_text(title: str, attributes: dict, meta_brands: attr.BrandLexicon | None, use_attributes: bool) -> str:
    if not use_attributes:
        return title
    a = attr.extract(title, attributes, meta_brands)
    return title + "".join(f" | {k}: {a[k]}" for k in attr.HIERARCHY if k in a)


CROSS_ENCODER, BI_ENCODER = "cross-encoder", "bi-encoder"


def encode(tokenizer, architecture: str, max_length: int, queries, texts, return_tensors: str, pad_to_max: bool = False):
    """The student's encoder inputs for (query, item text) rows, the same in training and in serving.

    cross-encoder: one sequence per pair (query, item), the item cut first when too long.
    bi-encoder: query and item encoded apart, their inputs prefixed q_ and d_."""
    padding = "max_length" if pad_to_max else True
    if architecture == BI_ENCODER:
        q = tokenizer(list(queries), padding=padding, truncation=True, max_length=max_length, return_tensors=return_tensors)
        d = tokenizer(list(texts), padding=padding, truncation=True, max_length=max_length, return_tensors=return_tensors)
        return {**{f"q_{k}": v for k, v in q.items()}, **{f"d_{k}": v for k, v in d.items()}}
    return dict(tokenizer(list(queries), list(texts), padding=padding, truncation="only_second", max_length=max_length,
                          return_tensors=return_tensors))
