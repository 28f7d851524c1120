"""The error taxonomy, the profiler, the profile-driven mix and the synthesize stage around them.

The stage tests run the real synthesize stage on a workdir whose upstream outputs (prepare, sft,
annotate) are written by hand, so they take seconds; the teacher-check test loads the real teacher.
"""
import json
from pathlib import Path

import pytest

from adore import error_profile
from adore.data.contract import Item, Pair, write_jsonl
from adore.schema import load_round
from adore.stages import BY_NAME
from adore.stages.base import COMPLETE, execute, stage_dir
from adore.synthesis import mix
from conftest import EXAMPLES, TINY_ROUND

GRADES = ["irrelevant", "partial", "exact"]


def _err(query, title, gold="exact", pred="irrelevant", attributes=None):
    return {"query": query, "title": title, "attributes": attributes or {}, "gold": gold, "pred": pred}


HAND_MADE = {   # one hand-made error of each type
    "category": _err("folding table", "Acme Folding Chair"),
    "brand": _err("yeti can cooler", "BruMate Can Cooler", attributes={"brand": "BruMate"}),
    "model": _err("logitech mouse m320", "Logitech Wireless Mouse M510"),
    "colour": _err("black can cooler", "Can Cooler, Navy"),
    "size": _err("2 in. pvc pipe", "3-inch PVC pipe"),
    "material": _err("steel folding table", "Wood Folding Table"),
    "quantity": _err("6 dining chairs", "Dining Chairs, 4 pack"),
    "audience": _err("womens running shoes", "Men's Running Shoes"),
    "accessory": _err("can cooler", "Replacement Lid for can cooler", gold="irrelevant", pred="exact"),
    "negation": _err("can cooler without lid", "Can Cooler with Lid", gold="irrelevant", pred="exact"),
    "other": _err("cozy can cooler", "Can Cooler", gold="partial", pred="exact"),
}


@pytest.mark.parametrize("kind", list(HAND_MADE))
def test_profiler_classifies_hand_made_errors(kind):
    brands = error_profile.attr.BrandLexicon(["yeti", "brumate", "logitech", "acme"])
    prof = error_profile.profile([HAND_MADE[kind]], "hand-made", brands=brands)
    assert prof["errors"] == 1 and prof["perType"][kind]["errors"] == 1, prof["perType"]
    assert prof["perType"][kind]["examples"][0]["query"] == HAND_MADE[kind]["query"]


def test_profile_rates_counts_and_restricted_taxonomy():
    recs = [_err("black can cooler", "Can Cooler, Navy"), _err("black can cooler", "Can Cooler, Navy", pred="exact"),
            _err("6 dining chairs", "Dining Chairs, 4 pack")]
    prof = error_profile.profile(recs, "t", types=["colour", "quantity"])
    assert prof["perType"]["colour"] == {**prof["perType"]["colour"], "pairs": 2, "errors": 1, "rate": 0.5}
    assert prof["perType"]["quantity"]["rate"] == 1.0 and prof["errorRate"] == round(2 / 3, 4)
    assert set(prof["perType"]) == {"colour", "quantity", "other"}
    # a type outside the catalogue's taxonomy falls to "other"
    assert error_profile.profile([_err("6 dining chairs", "Dining Chairs, 4 pack")], "t", types=["colour"])["perType"]["other"]["errors"] == 1
    assert error_profile.rates(prof) == {"colour": 0.5, "quantity": 1.0}


def test_mix_follows_the_profile_with_a_floor():
    types = ["brand", "colour", "size", "accessory"]
    plan = mix({"brand": 0.6, "colour": 0.2, "size": 0.2}, types, 100, floor=0.05)
    assert sum(plan.values()) == 100
    assert plan["accessory"] == 5                       # no evidence: the floor only
    assert plan["brand"] == 5 + 48 and plan["colour"] == plan["size"] == 5 + 16   # the rest by rate
    assert mix({}, types, 10, 0.05) and sum(mix({}, types, 10, 0.05).values()) == 10
    assert mix({"brand": 1.0}, types, 8, floor=0.25) == {"brand": 2, "colour": 2, "size": 2, "accessory": 2}


def test_load_names_the_file(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="p.json.*perType"):
        error_profile.load(bad)


# --- the synthesize stage on a hand-made workdir

ITEMS = [
    Item("a", "YETI Rambler Slim Can Cooler, Black", attributes={"brand": "YETI", "colour": "Black"}),
    Item("b", "BruMate Hopsulator Slim Can Cooler", attributes={"brand": "BruMate"}),
    Item("c", "Acme Dining Chairs Grey, 6PCS", attributes={"brand": "Acme"}),
    Item("d", "Acme Steel Folding Table 6 ft"),
    Item("e", "Acme Folding Chair, Black"),
    Item("f", "Logitech Wireless Mouse M320, Black", attributes={"brand": "Logitech"}),
    Item("g", "Logitech Wireless Keyboard K270, White", attributes={"brand": "Logitech"}),
]
TRAIN = [("yeti black slim can cooler", "a"), ("6 dining chairs", "c"), ("steel folding table", "d"),
         ("black folding chair", "e")]
DEV = [("logitech black wireless mouse", "f"), ("white wireless keyboard", "g"), ("brumate slim can cooler", "b")]


def _workdir(tmp_path: Path, extra: str = "", name: str = "tiny") -> tuple:
    rf = tmp_path / f"{name}.yaml"
    text = TINY_ROUND.format(rules=EXAMPLES / "rules" / "default.txt").replace("name: tiny", f"name: {name}")
    text = text.replace("synthesize: {errorTypes: [brand, colour, quantity, accessory], pairsPerType: 4}",
                        "synthesize: {errorTypes: [brand, colour, quantity, accessory, material], pairsPerType: 4"
                        + extra + "}")
    rf.write_text(text)
    r = load_round(rf)
    wd = tmp_path / "runs" / name
    prep = stage_dir(wd, "prepare")
    prep.mkdir(parents=True)
    write_jsonl(prep / "catalogue.jsonl", ITEMS)
    write_jsonl(prep / "seed.jsonl", [Pair(q, i, "exact") for q, i in TRAIN[:2]])
    write_jsonl(prep / "dev.jsonl", [Pair(q, i, "exact") for q, i in DEV])
    sft, align, ann = stage_dir(wd, "sft"), stage_dir(wd, "align"), stage_dir(wd, "annotate")
    for d in (sft, align, ann):
        d.mkdir(parents=True)
        (d / COMPLETE).write_text(json.dumps({"fingerprint": d.name}))
        (d / "adapters.json").write_text("[]")   # no adapters: the base teacher
    (prep / COMPLETE).write_text(json.dumps({"fingerprint": "prepare"}))
    write_jsonl(sft / "seed_rationales.jsonl",   # the teacher erred on the first seed pair only
                [{"query": q, "item_id": i, "grade": "exact", "origin": o} for (q, i), o in zip(TRAIN[:2], ["rules", "teacher"])])
    write_jsonl(ann / "annotations.jsonl", [{"query": q, "item_id": i, "grade": "exact"} for q, i in TRAIN[2:]])
    return r, wd


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def test_stage_profiles_mixes_and_keeps_the_test_set_apart(tmp_path):
    r, wd = _workdir(tmp_path)
    ran, m = execute(BY_NAME["synthesize"], r, wd)
    out = stage_dir(wd, "synthesize")
    prof = json.loads((out / "error_profile.json").read_text())
    assert prof["source"].startswith("teacher on the human seed") and prof["pairs"] == 2 and prof["errors"] == 1
    assert m["errorProfile"]["errorRate"] == 0.5 and sum(m["mix"].values()) == 4 * 5
    train, test = _jsonl(out / "synthetic.jsonl"), _jsonl(out / "adversarial_test.jsonl")
    assert train and test
    for rec in train:   # marked synthetic with type and source pair; sources are training pairs
        assert rec["synthetic"]["type"] in m["mix"] and (rec["synthetic"]["source_query"], rec["synthetic"]["source_item"]) in TRAIN
    assert all((t["synthetic"]["source_query"], t["synthetic"]["source_item"]) in DEV for t in test)
    assert not {(p["query"], p["item_id"]) for p in train} & {(p["query"], p["item_id"]) for p in test}
    syn_items = {i["item_id"]: i for i in _jsonl(out / "synthetic_catalogue.jsonl")}
    assert all(p["item_id"] in syn_items or p["item_id"] in {i.item_id for i in ITEMS} for p in train)
    assert m["teacherCheck"] == {"enabled": False}


def test_mix_follows_previous_profile_file(tmp_path):
    prof = {"source": "given", "perType": {"quantity": {"rate": 0.9, "pairs": 10, "errors": 9},
                                           "brand": {"rate": 0.1, "pairs": 10, "errors": 1}}}
    (tmp_path / "prev.json").write_text(json.dumps(prof))
    r, wd = _workdir(tmp_path, ", previousProfile: prev.json, floor: 0.1")
    _, m = execute(BY_NAME["synthesize"], r, wd)
    assert m["mix"] == {"brand": 3, "colour": 2, "quantity": 11, "accessory": 2, "material": 2}
    assert json.loads((stage_dir(wd, "synthesize") / "error_profile.json").read_text())["source"] == "given"


def test_second_round_reads_the_previous_rounds_evaluate_profile(tmp_path):
    r, wd = _workdir(tmp_path, name="r2")
    r.spec.previous_round = "r1"
    prev = stage_dir(tmp_path / "runs" / "r1", "evaluate")
    prev.mkdir(parents=True)
    (prev / "error_profile.json").write_text(json.dumps(
        {"source": "student on dev (human labels)", "perType": {"colour": {"rate": 1.0, "pairs": 3, "errors": 3}}}))
    _, m = execute(BY_NAME["synthesize"], r, wd)
    assert m["errorProfile"]["source"] == "student on dev (human labels)"
    assert m["mix"] == {"brand": 1, "colour": 1 + 15, "quantity": 1, "accessory": 1, "material": 1}
    r.spec.previous_round = "missing"
    with pytest.raises(Exception, match="has no error profile"):
        execute(BY_NAME["synthesize"], r, wd, force=True)


def test_teacher_check_sharded_drops_and_counts(tmp_path):
    """Real teacher (base SmolLM2, no adapters) on 3 synthetic pairs, in 2 shards merged by the stage."""
    r, wd = _workdir(tmp_path, ", teacherCheck: true, teacherCheckMaxPairs: 3, shards: 2, teacherAgreement: belowSource")
    _, m = execute(BY_NAME["synthesize"], r, wd)
    c = m["teacherCheck"]
    assert c["enabled"] and c["checked"] == 3 and c["agreed"] + c["dropped"] == 3 and c["shards"] == 2
    assert c["unchecked"] == m["syntheticPairs"] + c["dropped"] - 3
    for i in range(2):
        assert (stage_dir(wd, f"synthesize.shard-{i}-of-2") / "teacher_checks.jsonl").is_file()
    checks = _jsonl(stage_dir(wd, "synthesize") / "teacher_checks.jsonl")
    kept = {(p["query"], p["item_id"]) for p in _jsonl(stage_dir(wd, "synthesize") / "synthetic.jsonl")}
    for rec in checks:   # a pair is kept exactly when the teacher agreed (graded it below the source)
        agreed = rec["teacher_grade"] is not None and rec["teacher_grade"] != "exact"
        assert ((rec["query"], rec["item_id"]) in kept) == agreed


def test_cli_shard_flag_for_synthesize_checks_the_spec(tmp_path):
    from conftest import adore

    r, wd = _workdir(tmp_path)
    res = adore("stage", "synthesize", "--round", tmp_path / "tiny.yaml", "--workdir", wd, "--shard", "0/2", check=False)
    assert res.returncode == 1 and "spec.stages.synthesize.shards is 1" in res.stderr
    res = adore("stage", "distill", "--round", tmp_path / "tiny.yaml", "--workdir", wd, "--shard", "0/2", check=False)
    assert res.returncode == 1 and "annotate and synthesize stages only" in res.stderr


def test_load_rejects_unknown_types_and_bad_rates(tmp_path):
    f = tmp_path / "q.json"
    f.write_text(json.dumps({"perType": {"flavour": {"rate": 0.1}}}))
    with pytest.raises(ValueError, match="perType.flavour: not an error type"):
        error_profile.load(f)
    f.write_text(json.dumps({"perType": {"brand": {"rate": "high"}}}))
    with pytest.raises(ValueError, match="perType.brand.rate"):
        error_profile.load(f)


def test_teacher_check_cap_covers_every_type():
    from types import SimpleNamespace

    from adore.stages.synthesize import _to_check
    from adore.synthesis import NearMiss

    near = [NearMiss("q", Item(f"{t}{i}", "x"), "partial", t, ("q", "a")) for t in ("brand", "colour", "size") for i in range(3)]
    ctx = SimpleNamespace(spec=SimpleNamespace(stages=SimpleNamespace(synthesize=SimpleNamespace(teacher_check_max_pairs=4))))
    assert [n.type for n in _to_check(ctx, near)] == ["brand", "colour", "size", "brand"]


def test_test_seed_must_differ_from_seed():
    from pydantic import ValidationError

    from adore.schema import SynthesizeSpec

    with pytest.raises(ValidationError, match="testSeed: must differ from seed"):
        SynthesizeSpec(seed=3, test_seed=3)
