"""The roofline figures printed beside every speed benchmark (adore.roofline)."""
from __future__ import annotations

import os

import pytest
import torch

from adore.roofline import (EncoderShape, achieved_share, encoder_flops, gemm_throughput, seq_lens, split_flops,
                            student_flops)
from adore.student.model import Student
from adore.student.text import BI_ENCODER

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def bi_student():
    return Student.create("builtin:minilm-l6", ["irrelevant", "partial", "exact"], True, 48, [], architecture=BI_ENCODER)


def test_encoder_flops_match_what_torch_counts_for_the_real_backbone(bi_student):
    """The analytical count agrees with torch's own FLOP counter on MiniLM-L6 to within 5%."""
    from torch.utils.flop_counter import FlopCounterMode

    encoder = bi_student.model.encoder
    ids = torch.ones(4, 40, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        encoder(input_ids=ids, attention_mask=torch.ones_like(ids))
    counted = counter.get_total_flops() / 4
    ours = encoder_flops(EncoderShape.of(encoder.config), 40)
    assert abs(ours - counted) / counted < 0.05, (ours, counted)


def test_a_bi_encoder_pair_costs_both_towers(bi_student):
    enc = bi_student.encode(["cordless drill"] * 2, ["drill 18v", "hammer"], [{}, {}])
    lens = seq_lens({k: v.numpy() for k, v in enc.items()})
    assert set(lens) == {"query", "item"} and lens["query"] < lens["item"]
    shape = EncoderShape.of(bi_student.model.config)
    assert student_flops(bi_student, lens) == encoder_flops(shape, lens["query"]) + encoder_flops(shape, lens["item"])
    # Served as its split: one query per request, items from the table cost nothing; a cold item costs a tower.
    q, i = encoder_flops(shape, lens["query"]), encoder_flops(shape, lens["item"])
    assert split_flops(shape, lens["query"], lens["item"], 100, 1, 0) == pytest.approx(q / 100)
    assert split_flops(shape, lens["query"], lens["item"], 100, 2, 100) == pytest.approx(2 * q / 100 + i)


def test_gemm_throughput_is_measured_on_both_paths_and_shares_follow():
    peak = gemm_throughput(threads=1, m=256, k=128, n=256, seconds=0.2)
    assert peak["fp32"] > 0 and peak["int8"] > 0
    # A rate that uses exactly the peak is a share of 1; half the rate, half the share.
    flops = 1e9
    assert achieved_share(peak["fp32"], flops, peak["fp32"]) == 1.0
    assert achieved_share(peak["fp32"] / 2, flops, peak["fp32"]) == 0.5
