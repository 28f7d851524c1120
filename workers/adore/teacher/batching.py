"""Batches for the teacher: length-sorted rows, and the shared prompt prefix computed once.

Every prompt starts with the same system text (rules and grade scheme), about four fifths
of its tokens. Its KV cache is computed once per judging call and every batch reuses it:
rows are laid out as [shared prefix][padding][own suffix], the padding masked out, so the
positions of every real token are those of the plain left-padded row and the result is the
same (tests/test_teacher_engine.py checks it on the real SmolLM2).
"""
from __future__ import annotations

import copy

import torch


def common_prefix_length(rows: list[list[int]]) -> int:
    """Length of the token prefix that every row shares."""
    if not rows:
        return 0
    first, n = rows[0], min(map(len, rows))
    for row in rows[1:]:
        k = 0
        while k < n and row[k] == first[k]:
            k += 1
        n = k
    return n


def length_batches(lengths: list[int], batch_size: int, sort: bool = True) -> list[list[int]]:
    """Row indices in batches of batch_size, longest rows first when sorted: rows of a batch are
    then about equally long, so little compute goes to padding."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if sort else list(range(len(lengths)))
    return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]


def pack(rows: list[list[int]], prefix_len: int, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask of [prefix][padding][suffix] rows (plain left padding when prefix_len is 0)."""
    width = max(map(len, rows))
    ids, mask = [], []
    for row in rows:
        pad = width - len(row)
        ids.append(row[:prefix_len] + [pad_id] * pad + row[prefix_len:])
        mask.append([1] * prefix_len + [0] * pad + [1] * (len(row) - prefix_len))
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids from an attention mask with holes: each real token counts the real tokens before it."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


class PrefixCache:
    """The KV cache of a token prefix shared by every row, computed once."""

    def __init__(self, model, prefix: list[int], device):
        self.length = len(prefix)
        out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True, logits_to_keep=1)
        self.cache = out.cache

    def for_batch(self, n: int):
        """A fresh copy for a batch of n rows (generation and scoring write into the cache)."""
        c = copy.deepcopy(self.cache)
        if n > 1:
            c.batch_repeat_interleave(n)
        return c
