import re

import numpy as np
import pytest

from adore.data.contract import Item
from adore.metrics import graded_report, ndcg_at_k
from adore.stages.align import behaviour_grade, build_kto_examples
from adore.data.contract import Behaviour
from adore.teacher.llm import Judgement
from adore.teacher.prompt import PREFILL, RationaleParseError, parse, rule_rationale, user_prompt

GRADES = ["irrelevant", "partial", "exact"]


def test_parse_well_formed():
    r = parse(" type=chair; quantity=6\nItem attributes: type=chair; brand=acme\nComparison: type match\nGrade: Exact.\nextra", GRADES)
    assert r.grade == "exact" and r.query_attributes == "type=chair; quantity=6"
    assert r.text().startswith(PREFILL)
    assert parse(r.text().removeprefix(PREFILL), GRADES) == r


@pytest.mark.parametrize("completion,problem", [
    (" type=chair\nItem attributes: x\nGrade: exact", "missing line(s): Comparison"),
    (" type=chair\nItem attributes: x\nComparison: y\nGrade: great", "not one of"),
    (" 6 dining chairs\nThe item is a chair.", "missing line(s): Item attributes, Comparison, Grade"),
    ("", "missing"),
])
def test_parse_malformed_never_guesses(completion, problem):
    with pytest.raises(RationaleParseError, match=re.escape(problem)):
        parse(completion, GRADES)


def test_rule_rationale_round_trips():
    item = Item("1", "Acme Dining Chairs Grey, 6PCS", attributes={"brand": "Acme"})
    r = rule_rationale("6 dining chairs", item, "exact")
    assert parse(r.text().removeprefix(PREFILL), GRADES) == r
    assert "quantity match" in r.comparison and "brand=acme" in r.item_attributes
    assert "Item fields: brand=Acme" in user_prompt("6 dining chairs", item)


def test_behaviour_verdicts_and_kto_rows():
    strong = Behaviour("q", "a", 1000, 300, 80, 60)
    ignored = Behaviour("q", "b", 1000, 5, 0, 0)
    middling = Behaviour("q", "c", 1000, 100, 5, 3)
    assert behaviour_grade(strong, GRADES, 0.02, 0.02) == "exact"
    assert behaviour_grade(ignored, GRADES, 0.02, 0.02) == "irrelevant"
    assert behaviour_grade(middling, GRADES, 0.02, 0.02) is None
    judged = [Judgement("irrelevant", [0.8, 0.1, 0.1], "R1"), Judgement("exact", [0, 0, 1], "R2"),
              Judgement(None, None, "garbage", "missing")]
    rows, counts = build_kto_examples(judged, ["exact", "exact", "irrelevant"], ["P1", "P2", "P3"],
                                      ["R1", "R2", "garbage"], ["FIX1", "FIX2", "FIX3"], GRADES)
    assert counts == {"agree": 1, "tooStrict": 1, "tooLenient": 0, "unparsed": 1, "other": 0}
    assert {"prompt": "P1", "completion": "R1", "label": False} in rows
    assert {"prompt": "P1", "completion": "FIX1", "label": True} in rows
    assert {"prompt": "P2", "completion": "R2", "label": True} in rows
    assert sum(r["label"] for r in rows) == 3 and len(rows) == 5


def test_ndcg_and_report():
    q = ["a"] * 3 + ["b"] * 3 + ["c"] * 2
    gold = np.array([2, 0, 1, 0, 0, 2, 1, 1])
    perfect = gold.astype(float)
    assert ndcg_at_k(q, gold, perfect) == pytest.approx(1.0)
    worst = -perfect
    assert ndcg_at_k(q, gold, worst) < 0.7
    rep = graded_report(q, gold, gold, perfect, GRADES, raw_gold=gold + 1.0, raw_pred=gold + 1.0)
    assert rep["accuracy"] == 1.0 and rep["macroF1"] == 1.0 and rep["rmse"] == 0.0 and rep["auc"] == 1.0


def test_consistency_filter_for_seed_rationales():
    from adore.teacher.prompt import Rationale, consistent

    ok = Rationale("type=chair", "type=chair; brand=acme", "type match", "exact")
    assert consistent(ok, GRADES)
    assert not consistent(Rationale("type=cover", "type=balm", "type mismatch", "exact"), GRADES)
    assert not consistent(Rationale("type=chair", "type=chair", "type match", "irrelevant"), GRADES)
    assert consistent(Rationale("type=chair", "type=stool", "type mismatch", "irrelevant"), GRADES)
    assert not consistent(Rationale("<key=value; ...>", "x", "y", "partial"), GRADES)


def test_click_model_rates_match_its_parameters():
    """With no position decay and no noise, observed rates estimate the configured probabilities."""
    from adore.behaviour import simulate
    from adore.data.contract import Pair
    from adore.schema import ClickModelSpec

    cm = ClickModelSpec(impressions=4000, position_decay=0.0, noise=0.0)
    pairs = [Pair(f"q{i % 20}", f"i{i}", GRADES[i % 3]) for i in range(300)]
    rows = simulate(pairs, GRADES, cm, seed=3)
    assert len(rows) == 300 and all(r.simulated for r in rows)
    for g, grade in enumerate(GRADES):
        mine = [r for r, p in zip(sorted(rows, key=lambda r: r.item_id), sorted(pairs, key=lambda p: p.item_id))
                if p.grade == grade]
        clicks = sum(r.clicks for r in mine) / sum(r.impressions for r in mine)
        buys = sum(r.purchases for r in mine) / max(sum(r.clicks for r in mine), 1)
        assert clicks == pytest.approx(cm.click_prob[g], rel=0.05), grade
        assert buys == pytest.approx(cm.purchase_prob[g], rel=0.15, abs=0.005), grade


def test_click_model_position_bias_and_noise():
    from adore.behaviour import simulate
    from adore.data.contract import Pair
    from adore.schema import ClickModelSpec

    # One query with 10 equally relevant items: click rates fall with rank as 1/r.
    pairs = [Pair("q", f"i{i}", "exact") for i in range(10)]
    cm = ClickModelSpec(impressions=20000, position_decay=1.0, noise=0.0)
    rates = sorted((r.clicks / r.impressions for r in simulate(pairs, GRADES, cm, seed=1)), reverse=True)
    for rank, rate in enumerate(rates, 1):
        assert rate == pytest.approx(cm.click_prob[2] / rank, rel=0.1), rank
    noisy = ClickModelSpec(impressions=20000, position_decay=0.0, noise=0.5)
    r2 = [r.clicks / r.impressions for r in simulate(pairs, GRADES, noisy, seed=1)]
    top = noisy.click_prob[2]
    assert max(r2) - min(r2) > 0.1 and all(top * 0.5 * 0.95 < r < top * 1.5 * 1.05 for r in r2)


def test_seed_fitted_grade_offsets_correct_a_lenient_teacher_on_held_out_pairs():
    from adore.teacher.calibration import apply_offsets, fit_offsets, nll

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 3, 400)
    # Weak signal for the right grade under a strong prior for the top grade.
    logits = np.array([0.0, 0.0, 2.0]) + 1.5 * np.eye(3)[gold] + rng.normal(0, 0.5, (400, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    fit, held = slice(0, 40), slice(40, None)  # a seed-sized fit, checked on the rest
    b = fit_offsets(probs[fit], gold[fit])
    assert abs(b.sum()) < 1e-9 and b[2] < b[0] and b[2] < b[1]
    fixed = apply_offsets(probs[held], b)
    assert np.allclose(fixed.sum(1), 1)
    assert nll(fixed, gold[held]) < nll(probs[held], gold[held]) - 0.1
    assert (fixed.argmax(1) == gold[held]).mean() > (probs[held].argmax(1) == gold[held]).mean() + 0.2
    # An already calibrated teacher is left nearly alone.
    fair = np.exp(1.5 * np.eye(3)[gold]) / np.exp(1.5 * np.eye(3)[gold]).sum(1, keepdims=True)
    assert np.abs(fit_offsets(fair[fit], gold[fit])).max() < 0.3
    with pytest.raises(ValueError, match="need an"):
        fit_offsets(probs[:3], gold[:2])


def test_rule_evidence_outweighs_a_teacher_without_signal_on_held_out_pairs():
    """A teacher whose probabilities ignore the pair (a 135M model after a small SFT) plus rule
    features that carry the grade: the seed-fitted weights let the features decide."""
    from adore.teacher.calibration import apply_correction, fit_correction, nll

    rng = np.random.default_rng(1)
    gold = rng.integers(0, 3, 400)
    probs = np.tile([0.05, 0.4, 0.55], (400, 1))
    coverage = np.clip(0.15 + 0.35 * gold + rng.normal(0, 0.15, 400), 0, 1)
    mismatches = (gold == 0) * rng.integers(0, 3, 400)
    x = np.stack([coverage, np.zeros(400), mismatches], 1)
    fit, held = slice(0, 40), slice(40, None)
    b, w = fit_correction(probs[fit], gold[fit], x[fit])
    assert w.shape == (3, 3) and w[2, 0] > w[0, 0]  # coverage speaks for "exact", against "irrelevant"
    fixed = apply_correction(probs[held], b, w, x[held])
    offsets_only = apply_correction(probs[held], fit_correction(probs[fit], gold[fit], None)[0])
    acc = lambda p: (p.argmax(1) == gold[held]).mean()
    assert acc(fixed) > acc(offsets_only) + 0.2
    assert nll(fixed, gold[held]) < nll(offsets_only, gold[held]) - 0.2
    with pytest.raises(ValueError, match="feature rows"):
        fit_correction(probs[:5], gold[:5], x[:4])


def test_evidence_weights_do_not_depend_on_the_units_of_a_feature():
    """The penalty is on standardised weights: a feature given in other units (a cosine in
    hundredths) gets the same corrected labels, where a raw penalty would shrink it away."""
    from adore.teacher.calibration import apply_correction, fit_correction

    rng = np.random.default_rng(2)
    gold = rng.integers(0, 3, 60)
    probs = np.tile([0.2, 0.3, 0.5], (60, 1))
    x = np.stack([0.4 + 0.1 * gold + rng.normal(0, 0.05, 60), rng.integers(0, 2, 60)], 1)
    small = x * [0.01, 1.0]
    b, w = fit_correction(probs, gold, x)
    b2, w2 = fit_correction(probs, gold, small)
    assert np.allclose(apply_correction(probs, b, w, x), apply_correction(probs, b2, w2, small), atol=1e-3)
    assert (apply_correction(probs, b2, w2, small).argmax(1) == gold).mean() > 0.6


def test_signed_ordinal_evidence_keeps_its_meaning_when_the_seed_contradicts_it():
    """A CrowdFlower-like seed: 32 pairs, mostly the top grade, one of the lowest, and two
    correlated pieces of evidence of which the seed happens to contradict one (as the 32-pair
    CrowdFlower seed did for query coverage). Unsigned weights learn the contradiction and order
    unseen pairs worse; signed ordinal weights hold that feature at zero."""
    from scipy.stats import spearmanr

    from adore.teacher.calibration import apply_correction, fit_correction

    rng = np.random.default_rng(3)
    n = 2000
    gold = rng.choice(4, n, p=[0.09, 0.16, 0.17, 0.58])
    signal = gold / 3 + rng.normal(0, 0.35, n)
    x = np.stack([signal + rng.normal(0, 0.3, n), signal + rng.normal(0, 0.3, n)], 1)
    probs = np.tile([0.02, 0.03, 0.1, 0.85], (n, 1))  # a teacher that says "exact" to everything
    seed = np.concatenate([np.flatnonzero(gold == 0)[:1], np.flatnonzero(gold == 1)[:3],
                           np.flatnonzero(gold == 2)[:6], np.flatnonzero(gold == 3)[:22]])
    held = np.setdiff1d(np.arange(n), seed)
    seen = x[seed].copy()
    seen[:, 1] = seen[:, 1].mean() - (seen[:, 1] - seen[:, 1].mean())  # the seed's view of feature 2 is reversed
    order = lambda b, w: spearmanr(apply_correction(probs[held], b, w, x[held]) @ np.arange(4), gold[held]).correlation

    b, w = fit_correction(probs[seed], gold[seed], seen, signs=[1, 1])
    assert np.all(np.diff(w, axis=0) >= -1e-9) and w[-1, 0] > 0  # one weight per feature, rising with the grade
    assert np.allclose(w[:, 1], 0, atol=1e-6)  # held at zero, not flipped
    unsigned = fit_correction(probs[seed], gold[seed], seen, signs=[0, 0])
    per_grade = fit_correction(probs[seed], gold[seed], seen, ordinal=False)
    assert unsigned[1][-1, 1] < 0  # what the constraint prevents
    assert order(b, w) > 0.3 and order(b, w) > order(*unsigned) + 0.05 and order(b, w) > order(*per_grade) + 0.05
    with pytest.raises(ValueError, match="1 signs for 2 features"):
        fit_correction(probs[seed], gold[seed], x[seed], signs=[1])


def test_embedding_evidence_is_the_bi_encoder_cosine_on_real_titles():
    from adore import models
    from adore.similarity import embedder

    enc = embedder(models.MINILM)
    q = ["cordless drill", "cordless drill", "bath towel"]
    t = ["DEWALT 20-Volt MAX Lithium-Ion Cordless Drill", "Glacier Bay Bath Towel Bar in Chrome",
         "Glacier Bay Bath Towel Bar in Chrome"]
    c = enc.cosine(q, t)
    assert c.shape == (3,) and np.all(np.abs(c) <= 1 + 1e-6)
    assert c[0] > c[1] + 0.2 and c[2] > c[1] + 0.2
    e = enc.embed(["cordless drill"])
    assert np.isclose(np.linalg.norm(e[0]), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="2 queries for 1 texts"):
        enc.cosine(q[:2], t[:1])


def test_rule_features_on_real_titles():
    from adore.attributes import BrandLexicon, extract
    from adore.teacher.calibration import rule_features

    brands = BrandLexicon(["dewalt", "makita"])
    features = lambda q, t: rule_features(q, t, extract(q, brands=brands), extract(t, {}, brands))
    same = features("dewalt drill", "DEWALT 20-Volt MAX Lithium-Ion Cordless Drill")
    other = features("dewalt drill", "Makita 18-Volt LXT Lithium-Ion Cordless Drill")
    assert same[0] == 1.0 and same[1] == 2 and same[2] == 0  # both words found; type and brand match
    assert other[0] == 0.5 and other[2] >= 1  # "drill" found; the brand is a mismatch
    plural = features("2 inch pvc pipes", "Charlotte Pipe 2 in. x 10 ft. PVC Schedule 40 Plain End Pipe")
    assert plural[0] >= 0.75  # "pipes" is found as "pipe"
