"""The student's input text (kept free of torch: Triton's python backend imports it)."""
from __future__ import annotations

from .. import attributes as attr


def item_text(title: str, attributes: dict, meta_brands: attr.BrandLexicon | None, use_attributes: bool) -> str:
    if not use_attributes:
        return title
    a = attr.extract(title, attributes, meta_brands)
    return title + "".join(f" | {k}: {a[k]}" for k in attr.HIERARCHY if k in a)


CROSS_ENCODER, BI_ENCODER = "cross-encoder", "bi-encoder"
# A bi-encoder version's serving split (export.export_embedder): the tower alone, its head, and the
# item embeddings computed at promotion (adore.serving.bi_encoder).
EMBEDDER_ONNX, EMBEDDER_JSON, ITEM_TABLE = "embedder.onnx", "embedder.json", "item_embeddings.npz"


def encode(tokenizer, architecture: str, max_length: int, queries, texts, return_tensors: str, pad_to_max: bool = False):
    """The student's encoder inputs for (query, item text) rows, the same in training and in serving.

    cross-encoder: one sequence per pair (query, item), the item cut first when too long.
    bi-encoder: query and item encoded apart, their inputs prefixed q_ and d_."""
    padding = "max_length" if pad_to_max else True
    if architecture == BI_ENCODER:
        q = encode_one_side(tokenizer, max_length, queries, return_tensors, pad_to_max)
        d = encode_one_side(tokenizer, max_length, texts, return_tensors, pad_to_max)
        return {**{f"q_{k}": v for k, v in q.items()}, **{f"d_{k}": v for k, v in d.items()}}
    return dict(tokenizer(list(queries), list(texts), padding=padding, truncation="only_second", max_length=max_length,
                          return_tensors=return_tensors))


def encode_one_side(tokenizer, max_length: int, texts, return_tensors: str, pad_to_max: bool = False) -> dict:
    """One bi-encoder tower's inputs (queries, or item texts), padded to the longest row unless pad_to_max."""
    return dict(tokenizer(list(texts), padding="max_length" if pad_to_max else True, truncation=True,
                          max_length=max_length, return_tensors=return_tensors))
