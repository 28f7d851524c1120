"""The teacher's own machinery on the real SmolLM2-135M: grade probabilities, SFT and KTO.

Small on purpose (a few pairs, one or two optimisation steps); the quality of
the teacher is measured by benchmarks/teacher_quality.py, not here.
"""
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from adore.data.contract import Item
from adore.schema import AlignSpec, SftSpec
from adore.teacher import training
from adore.teacher.llm import JudgeSettings, Teacher
from adore.teacher.prompt import PREFILL, parse, rule_rationale

pytestmark = pytest.mark.slow
GRADES = ["irrelevant", "partial", "exact"]
RULES = "- exact: the searched product.\n- partial: same product, other brand or size.\n- irrelevant: anything else."
PAIRS = [("6 dining chairs", Item("a", "Acme Dining Chair Grey, Set of 6")),
         ("garden hose", Item("b", "Brass Door Hinge 3 in.")),
         ("led bulb 60w", Item("c", "Philips 60-Watt Equivalent A19 LED Light Bulb")),
         ("cordless drill", Item("d", "Drill Bit Set 20-Piece"))]


@pytest.fixture(scope="module")
def teacher():
    return Teacher.load("builtin:smollm2-135m", RULES, GRADES, prefill_attributes=True)


def _lora_b_norm(adapter_dir: Path) -> float:
    w = load_file(str(adapter_dir / "adapter_model.safetensors"))
    b = [v for k, v in w.items() if "lora_B" in k]
    assert b, "no LoRA B matrices in the adapter"
    return float(sum(np.abs(x).sum() for x in b))


def test_grade_probabilities_come_from_the_grade_step(teacher):
    teacher.settings = JudgeSettings(max_new_tokens=48, batch_size=4)
    judged = teacher.judge(PAIRS)
    for j in judged:
        assert j.grade is not None, j.error  # constrained decoding always yields the structure
        assert len(j.probs) == 3 and sum(j.probs) == pytest.approx(1, abs=1e-4)
        # Greedy decoding restricted to the grade tokens picks the most probable grade.
        assert GRADES[int(np.argmax(j.probs))] == j.grade
        assert parse(j.rationale.removeprefix(PREFILL), GRADES).grade == j.grade
    assert len({tuple(np.round(j.probs, 4)) for j in judged}) > 1, "the same distribution for every pair"


def test_sft_then_kto_change_the_adapter_weights(teacher, tmp_path):
    # LoRA B starts at zero: any update makes it non-zero.
    examples = [(teacher.prompt(q, it), teacher.completion(q, it, rule_rationale(q, it, g, teacher.brands).text()))
                for (q, it), g in zip(PAIRS, ["exact", "irrelevant", "exact", "irrelevant"])]
    teacher.settings = JudgeSettings(batch_size=2)
    before = teacher.judge(PAIRS[:2])
    res = training.sft(teacher, examples, tmp_path / "sft",
                       SftSpec(epochs=1, learning_rate=1e-3, batch_size=2, lora_rank=4, lora_alpha=8))
    assert res["sftSteps"] == 2 and _lora_b_norm(tmp_path / "sft") > 0
    after = teacher.judge(PAIRS[:2])
    assert any(not np.allclose(a.probs, b.probs, atol=1e-4) for a, b in zip(after, before)), \
        "the merged SFT adapter did not change the teacher's grade probabilities"
    rows = []
    for (prompt, good), (q, it) in zip(examples, PAIRS):
        bad = teacher.completion(q, it, rule_rationale(q, it, "partial", teacher.brands).text())
        rows += [{"prompt": prompt, "completion": good, "label": True},
                 {"prompt": prompt, "completion": bad, "label": False}]
    m = training.kto(teacher, rows, tmp_path / "kto", AlignSpec(steps=1, batch_size=4, learning_rate=1e-3))
    assert m["ktoSteps"] == 1 and m["ktoFirstLoss"] is not None
    assert _lora_b_norm(tmp_path / "kto") > 0
