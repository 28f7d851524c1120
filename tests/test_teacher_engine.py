"""The device and precision policy, and the teacher's judging engine on the real SmolLM2-135M.

The policy is a pure function of what the machine offers, so it is tested for CPUs with and
without native bf16 and for GPUs on any machine. The engine tests compare the fast paths
(direct judging, the shared-prefix KV cache, length sorting) with the plain one in fp32.
CUDA tests run only where torch sees a GPU.
"""
import json

import numpy as np
import pytest
import torch

from adore.data.contract import Item
from adore.hardware import CPU_FP32, Found, Hardware, HardwareError, choose
from adore.schema import AlignSpec, SftSpec
from adore.teacher import training
from adore.teacher.llm import JudgeSettings, Teacher
from adore.teacher.prompt import rule_rationale

from conftest import adore

GRADES = ["irrelevant", "partial", "exact"]
RULES = "- exact: the searched product.\n- partial: same product, other brand or size.\n- irrelevant: anything else."
PAIRS = [("6 dining chairs", Item("a", "Acme Dining Chair Grey, Set of 6")),
         ("garden hose", Item("b", "Brass Door Hinge 3 in.")),
         ("led bulb 60w", Item("c", "Philips 60-Watt Equivalent A19 LED Light Bulb, Soft White, 4-Pack")),
         ("cordless drill", Item("d", "Drill Bit Set 20-Piece")),
         ("elongated toilet seat white", Item("e", "Kohler Cachet Elongated Closed Front Toilet Seat in White"))]
AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})
SAPPHIRE = AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_bf16"}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")


# --- the policy

def test_cpu_without_native_bf16_computes_in_fp32_and_with_it_in_bf16():
    assert choose(Found(False, cpu_flags=AVX2_ONLY)).precision == "fp32"
    assert choose(Found(False, cpu_flags=SAPPHIRE)).precision == "bf16"
    assert choose(Found(False, cpu_flags=SAPPHIRE), precision="fp32").precision == "fp32"  # a setting forces it
    assert choose(Found(False, cpu_flags=AVX2_ONLY), precision="bf16").precision == "bf16"
    with pytest.raises(HardwareError, match="fp16 is for GPUs"):
        choose(Found(False, cpu_flags=AVX2_ONLY), precision="fp16")


def test_native_bf16_flags_alone_do_not_choose_bf16_where_it_measured_slower():
    # An Intel Xeon with AVX512-BF16 whose hypervisor hides AMX: bf16 autocast measured 0.54x fp32.
    slow = Found(False, cpu_flags=SAPPHIRE, cpu_bf16_fast=False)
    assert choose(slow).precision == "fp32"
    assert choose(slow, precision="bf16").precision == "bf16"  # a setting still forces it
    assert choose(Found(False, cpu_flags=SAPPHIRE, cpu_bf16_fast=True)).precision == "bf16"
    assert choose(Found(False, cpu_flags=AVX2_ONLY, cpu_bf16_fast=True)).precision == "fp32"  # emulated: never


def test_the_bf16_measurement_is_taken_once_per_cpu_remembered_and_overridable(tmp_path, monkeypatch):
    from adore import hardware

    monkeypatch.setenv("ADORE_CACHE", str(tmp_path))
    monkeypatch.delenv(hardware.CPU_BF16_ENV, raising=False)
    taken = []
    monkeypatch.setattr(hardware, "cpu_bf16_probe", lambda: taken.append(1) or (0.010, 0.020))  # bf16 twice as slow
    assert hardware.cpu_bf16_fast("Xeon X", SAPPHIRE) is False
    assert hardware.cpu_bf16_fast("Xeon X", SAPPHIRE) is False and len(taken) == 1  # remembered, not measured again
    entry = next(iter(json.loads((tmp_path / "cpu-bf16.json").read_text()).values()))
    assert entry["cpu"] == "Xeon X" and entry["gain"] == 0.5
    monkeypatch.setattr(hardware, "cpu_bf16_probe", lambda: taken.append(1) or (0.020, 0.010))
    assert hardware.cpu_bf16_fast("Xeon Y", SAPPHIRE) is True and len(taken) == 2  # another CPU: its own measurement
    monkeypatch.setenv(hardware.CPU_BF16_ENV, "fast")
    assert hardware.cpu_bf16_fast("Xeon X", SAPPHIRE) is True and len(taken) == 2
    monkeypatch.setenv(hardware.CPU_BF16_ENV, "maybe")
    with pytest.raises(HardwareError, match="ADORE_CPU_BF16 must be fast or slow"):
        hardware.cpu_bf16_fast("Xeon X", SAPPHIRE)
    (tmp_path / "cpu-bf16.json").write_text("not json")  # a damaged memory is measured again, not an error
    monkeypatch.delenv(hardware.CPU_BF16_ENV)
    assert hardware.cpu_bf16_fast("Xeon X", SAPPHIRE) is True and len(taken) == 3


def test_a_bf16_measurement_that_cannot_be_saved_is_not_taken_again_in_the_same_process(tmp_path, monkeypatch):
    from adore import atomic, hardware

    def read_only(*a, **k):
        raise PermissionError("read-only home")

    monkeypatch.setenv("ADORE_CACHE", str(tmp_path))
    monkeypatch.delenv(hardware.CPU_BF16_ENV, raising=False)
    monkeypatch.setattr(atomic, "atomic_write_json", read_only)
    monkeypatch.setattr(hardware, "_UNSAVED_GAINS", {})
    taken = []
    monkeypatch.setattr(hardware, "cpu_bf16_probe", lambda: taken.append(1) or (0.010, 0.020))
    assert hardware.cpu_bf16_gain("Xeon Z", SAPPHIRE) == 0.5
    assert hardware.cpu_bf16_gain("Xeon Z", SAPPHIRE) == 0.5 and len(taken) == 1
    assert not (tmp_path / "cpu-bf16.json").exists()
    assert hardware.cpu_bf16_gain("Xeon W", SAPPHIRE) == 0.5 and len(taken) == 2  # another CPU is its own


def test_the_bf16_probe_times_both_precisions_on_this_cpu():
    from adore.hardware import cpu_bf16_probe

    fp32, bf16 = cpu_bf16_probe(rows=32, width=128, repeats=1, steps=1)
    assert 0 < fp32 < 5 and 0 < bf16 < 5


def test_gpu_gets_bf16_where_it_has_it_else_fp16_and_cpu_when_asked():
    h200 = Found(True, "NVIDIA H200", cuda_bf16=True, cpu_flags=AVX2_ONLY)
    t4 = Found(True, "Tesla T4", cuda_bf16=False, cpu_flags=AVX2_ONLY)
    assert choose(h200).describe() == "cuda:0 (NVIDIA H200), bf16"
    assert choose(t4).precision == "fp16"
    assert choose(h200, device="cpu").device == "cpu"
    with pytest.raises(HardwareError, match="no bf16 support"):
        choose(t4, precision="bf16")


def test_a_stage_that_wants_a_gpu_and_finds_none_fails_unless_fallback_is_allowed():
    cpu_only = Found(False, cpu_name="AMD EPYC", cpu_flags=AVX2_ONLY)
    with pytest.raises(HardwareError, match="asks for 1 nvidia.com/gpu.*allowCpuFallback"):
        choose(cpu_only, expect_gpus=1, stage="stage annotate")
    with pytest.raises(HardwareError, match="spec.runtime.device is cuda"):
        choose(cpu_only, device="cuda")
    assert choose(cpu_only, expect_gpus=1, allow_cpu_fallback=True).describe() == "cpu (AMD EPYC), fp32"


@pytest.mark.parametrize("make", ["kto", "sft"])
@pytest.mark.parametrize("hw,want", [(Hardware("cpu", "fp32", "AVX2-only CPU"), "no"), (Hardware("cpu", "bf16", "AMX CPU"), "bf16")])
def test_trl_trainers_follow_the_policy_not_trls_bf16_default(tmp_path, make, hw, want):
    """On a CPU without native bf16 trl's trainers must not autocast to bf16 (5x slower there)."""
    teacher = Teacher.load("builtin:smollm2-135m", RULES, GRADES, prefill_attributes=True, training=True, hardware=hw)
    q, it = PAIRS[0]
    prompt, good = teacher.prompt(q, it), teacher.completion(q, it, rule_rationale(q, it, "exact").text())
    bad = teacher.completion(q, it, rule_rationale(q, it, "irrelevant").text())
    if make == "kto":
        rows = [{"prompt": prompt, "completion": good, "label": True}, {"prompt": prompt, "completion": bad, "label": False}]
        trainer = training.kto_trainer(teacher, rows, tmp_path, AlignSpec(steps=1, batch_size=2))
    else:
        trainer = training.sft_trainer(teacher, [(prompt, good)], tmp_path, SftSpec(epochs=1))
    assert trainer.accelerator.mixed_precision == want
    assert trainer.args.bf16 is (want == "bf16") and trainer.args.use_cpu


def test_a_stage_whose_job_asks_for_a_gpu_fails_at_once_with_the_reason(tiny_round_file, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the stage would run on it")
    log = tmp_path / "termination-log"
    res = adore("stage", "prepare", "--round", tiny_round_file, "--workdir", tmp_path / "w", check=False,
                env={**__import__("os").environ, "ADORE_EXPECT_GPUS": "1", "ADORE_TERMINATION_LOG": str(log)})
    assert res.returncode == 1
    assert "asks for 1 nvidia.com/gpu" in res.stderr and "allowCpuFallback" in res.stderr
    assert "nvidia.com/gpu" in json.loads(log.read_text())["error"]
    assert not (tmp_path / "w" / "stages" / "prepare").exists(), "nothing may be written"


def test_stage_metrics_and_status_carry_device_and_precision(tiny_run):
    status = json.loads((tiny_run / "status.json").read_text())
    for stage in ("sft", "align", "annotate", "distill", "evaluate"):
        device = status["stages"][stage]["metrics"]["device"]
        assert device.startswith("cpu (") and device.rsplit(", ", 1)[1] in ("fp32", "bf16"), (stage, device)
    assert "device" not in status["stages"]["prepare"]["metrics"]  # no torch there


# --- the engine

@pytest.fixture(scope="module")
def teacher():
    return Teacher.load("builtin:smollm2-135m", RULES, GRADES, prefill_attributes=True,
                        settings=JudgeSettings(max_new_tokens=40, batch_size=2))


def _probs(js):
    return np.array([j.probs for j in js])


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "rationale"])
def test_prefix_reuse_and_length_sorting_change_no_result(teacher, direct):
    plain = teacher.judge(PAIRS, direct=direct, reuse_prefix=False, sort=False)
    fast = teacher.judge(PAIRS, direct=direct)
    one_by_one = [teacher.judge([p], direct=direct, reuse_prefix=False)[0] for p in PAIRS]
    assert np.abs(_probs(plain) - _probs(fast)).max() < 1e-4
    assert np.abs(_probs(one_by_one) - _probs(fast)).max() < 1e-4
    assert [j.rationale for j in plain] == [j.rationale for j in fast]
    assert len({tuple(np.round(p, 3)) for p in _probs(fast)}) > 1, "the same distribution for every pair"


def test_direct_judging_reads_the_grade_after_the_rule_written_rationale(teacher):
    (q, it) = PAIRS[1]
    j = teacher.judge([(q, it)], direct=True)[0]
    assert j.rationale == rule_rationale(q, it, j.grade).text()
    assert GRADES[int(np.argmax(j.probs))] == j.grade and sum(j.probs) == pytest.approx(1, abs=1e-5)


def test_grade_probabilities_cover_each_grades_whole_token_sequence(teacher):
    """Grades of several tokens: p(grade) is the product over its tokens, checked against plain
    forward passes of prompt + grade with no cache."""
    grades = ["bad", "okayish", "perfectmatch"]
    t = Teacher(teacher.model, teacher.tokenizer, RULES, grades, prefill_attributes=True, settings=teacher.settings)
    assert not t.grade_tokens.single_token
    q, it = PAIRS[2]
    prompt = t.prompt(q, it, t.prefix(q, it, direct=True))
    base = t.tokenizer(prompt, add_special_tokens=False).input_ids
    logp = []
    with torch.inference_mode():
        for seq in t.grade_tokens.sequences:
            lp = torch.log_softmax(t.model(input_ids=torch.tensor([base + seq])).logits[0].float(), -1)
            logp.append(sum(float(lp[len(base) - 1 + k, tok]) for k, tok in enumerate(seq)))
    want = np.exp(np.array(logp) - max(logp))
    want /= want.sum()
    for direct in (True, False):
        j = t.judge([(q, it)], direct=direct)[0]
        assert j.grade in grades and j.rationale.endswith(f"Grade: {j.grade}")
        if direct:
            assert np.abs(np.array(j.probs) - want).max() < 1e-4


def test_sft_through_sfttrainer_trains_lora_on_completion_tokens_and_the_loss_falls(tmp_path):
    teacher = Teacher.load("builtin:smollm2-135m", RULES, GRADES, prefill_attributes=True, training=True)
    examples = [(teacher.prompt(q, it), teacher.completion(q, it, rule_rationale(q, it, g).text()))
                for (q, it), g in zip(PAIRS[:4], ["exact", "irrelevant", "exact", "irrelevant"])]
    trainer = training.sft_trainer(teacher, examples, tmp_path, SftSpec(epochs=4, batch_size=4, learning_rate=2e-3))
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    row = trainer.train_dataset[0]
    prompt_len = len(teacher.tokenizer(examples[0][0], add_special_tokens=False).input_ids)
    labels = row["labels"]  # trl folds the completion mask into the labels: -100 where no loss is taken
    assert all(x == -100 for x in labels[:prompt_len - 1]), "prompt tokens must be masked"
    assert all(x != -100 for x in labels[prompt_len + 1:]) and len(labels) > prompt_len + 1
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n not in trainable}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items()), "SFT changed weights outside LoRA"
    assert any(float(after[n].abs().sum()) > 0 for n in trainable if "lora_B" in n)


@cuda
def test_on_cuda_the_teacher_judges_on_the_gpu_like_the_cpu(teacher):
    gpu = Teacher.load("builtin:smollm2-135m", RULES, GRADES, prefill_attributes=True,
                       hardware=Hardware("cuda:0", "fp32", torch.cuda.get_device_name(0)), settings=teacher.settings)
    assert next(gpu.model.parameters()).is_cuda
    assert np.abs(_probs(gpu.judge(PAIRS, direct=True)) - _probs(teacher.judge(PAIRS, direct=True))).max() < 1e-3


def test_cpu_fp32_is_the_default_hardware_of_a_teacher_loaded_alone(teacher):
    assert teacher.hardware == CPU_FP32 and next(teacher.model.parameters()).dtype == torch.float32
