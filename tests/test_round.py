"""A whole round with the real models on a tiny slice of the bundled data.

Covers every stage's outputs, the status file, the Triton repository, the
skip-on-rerun rule and resume after a kill in the middle of a stage.
"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from adore.stages import NAMES
from adore.stages.base import read_complete
from conftest import adore, copy_workdir

pytestmark = pytest.mark.slow


def _status(workdir: Path) -> dict:
    return json.loads((workdir / "status.json").read_text())


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_round_succeeds_and_status_mirrors_operator_shape(tiny_run):
    st = _status(tiny_run)
    assert st["phase"] == "Succeeded"
    assert set(st["stages"]) == set(NAMES)
    for name in NAMES:
        s = st["stages"][name]
        assert s["state"] == "Succeeded", (name, s)
        assert s["startedAt"] <= s["finishedAt"] and s["durationSeconds"] >= 0
    assert st["promotedVersion"] == 1
    assert 0 <= st["quality"] <= 1
    assert Path(st["report"]).is_file()


def test_prepare_split_has_no_query_overlap(tiny_run):
    d = tiny_run / "stages" / "prepare"
    dev = {r["query"] for r in _jsonl(d / "dev.jsonl")}
    for name in ("seed", "pool", "train_labels"):
        assert dev.isdisjoint({r["query"] for r in _jsonl(d / f"{name}.jsonl")}), name
    assert all("grade" not in r for r in _jsonl(d / "pool.jsonl"))
    assert len(_jsonl(d / "seed.jsonl")) == 4


def test_teacher_stages(tiny_run):
    sft = tiny_run / "stages" / "sft"
    assert (sft / "adapter" / "adapter_model.safetensors").is_file()
    m = json.loads((sft / "metrics.json").read_text())
    assert m["pairsWithAgreeingRationale"] + m["pairsWithRuleRationale"] == 4 and m["humanLabelsUsed"] == 4
    align = json.loads((tiny_run / "stages" / "align" / "metrics.json").read_text())
    assert align["behaviourSimulated"] is True and "SIMULATED" in align["behaviour"]
    assert align["judgedPairs"] == 4
    rows = _jsonl(tiny_run / "stages" / "align" / "kto_examples.jsonl")
    assert len(rows) == align["desirable"] + align["undesirable"]
    if "skipped" not in align:
        assert align["ktoSteps"] == 1
        assert (tiny_run / "stages" / "align" / "adapter" / "adapter_model.safetensors").is_file()
    ann = _jsonl(tiny_run / "stages" / "annotate" / "annotations.jsonl")
    assert len(ann) == 8
    for a in ann:
        if a["grade"] is None:
            assert a["error"] and a["probs"] is None
        else:
            assert a["grade"] in ("irrelevant", "partial", "exact")
            assert len(a["probs"]) == 3 and abs(sum(a["probs"]) - 1) < 1e-4
            assert a["rationale"].startswith("Query attributes:") and "teacher_attributes" in a
    am = json.loads((tiny_run / "stages" / "annotate" / "metrics.json").read_text())
    assert am["pairsPerSecond"] > 0 and am["parsed"] >= 1
    # The seed-fitted correction: applied to every parsed pair, the teacher's own verdict kept beside.
    assert am["seedCorrection"].startswith("teacher and rule-evidence") and set(am["gradeOffsets"]) == {"irrelevant", "partial", "exact"}
    assert am["correction"] == "ordinal" and am["teacherWeight"] == am["signalWeights"]["teacher"] >= 0
    assert set(am["llmShare"]) == {"evidence", "teacher", "both"} and all("nll" in v for v in am["llmShare"].values())
    for a in ann:
        if a["grade"] is not None:
            assert a["teacher_grade"] in ("irrelevant", "partial", "exact") and len(a["teacher_probs"]) == 3
            assert a["grade"] == ("irrelevant", "partial", "exact")[max(range(3), key=a["probs"].__getitem__)]
            # The one-source labels beside the combined one, for the LLM-share rows (distill.labelSource).
            assert set(a["labels"]) == {"evidence", "teacher"} and all(len(v) == 3 for v in a["labels"].values())


def test_synthesis_and_adversarial_set_do_not_share_sources(tiny_run):
    d = tiny_run / "stages" / "synthesize"
    train = _jsonl(d / "synthetic.jsonl")
    test = _jsonl(d / "adversarial_test.jsonl")
    assert train and test
    assert len({r["synthetic"]["type"] for r in train}) >= 2
    dev_queries = {r["query"] for r in _jsonl(tiny_run / "stages" / "prepare" / "dev.jsonl")}
    assert all(r["synthetic"]["source_query"] in dev_queries for r in test)
    assert not any(r["synthetic"]["source_query"] in dev_queries for r in train)
    assert not {(r["query"], r["item_id"]) for r in train} & {(r["query"], r["item_id"]) for r in test}


def test_student_report_and_triton_repository(tiny_run):
    rep = json.loads((tiny_run / "stages" / "evaluate" / "report.json").read_text())
    for model in ("student", "bm25"):
        for key in ("accuracy", "macroF1", "ndcg@10"):
            assert rep[model][key] is not None and 0 <= rep[model][key] <= 1, (model, key)
    assert "| student |" in (tiny_run / "stages" / "evaluate" / "report.md").read_text()
    model_dir = tiny_run / "triton-repo" / "adore-student"
    v1 = model_dir / "1"
    for f in ("model.onnx", "model.py", "adore_student.json", "golden.json", "tokenizer.json"):
        assert (v1 / f).is_file(), f
    cfg = (model_dir / "config.pbtxt").read_text()
    assert 'backend: "python"' in cfg and "dynamic_batching" in cfg and "num_versions: 2" in cfg
    promo = json.loads((tiny_run / "stages" / "promote" / "promotion.json").read_text())
    assert promo["promoted"] and promo["version"] == 1 and promo["onnxMaxAbsDiff"] < 1e-3


def test_second_run_skips_everything(tiny_run, tiny_round_file, tmp_path):
    work = copy_workdir(tiny_run, tmp_path / "again")
    before = {n: read_complete(work, n)["finishedAt"] for n in NAMES}
    res = adore("run", tiny_round_file, "--workdir", work)
    assert res.stderr.count("complete, skipping") == len(NAMES)
    assert {n: read_complete(work, n)["finishedAt"] for n in NAMES} == before
    st = _status(work)
    assert st["phase"] == "Succeeded" and all(s["state"] == "Skipped" for s in st["stages"].values())
    assert sorted(p.name for p in (work / "triton-repo" / "adore-student").iterdir() if p.is_dir()) == ["1"]


def test_changed_knob_reruns_that_stage_and_downstream_only(tiny_run, tiny_round_file, tmp_path):
    work = copy_workdir(tiny_run, tmp_path / "changed")
    doc = yaml.safe_load(tiny_round_file.read_text())
    doc["spec"]["promotion"]["gates"]["minMacroF1"] = 1.0  # impossible gate: promote reruns and refuses
    f = tmp_path / "round.yaml"
    f.write_text(yaml.safe_dump(doc))
    res = adore("run", f, "--workdir", work)
    assert res.stderr.count("complete, skipping") == len(NAMES) - 1
    st = _status(work)
    assert st["stages"]["promote"]["state"] == "Succeeded"
    assert st.get("promotedVersion") is None and "not promoted" in st["message"]
    promo = json.loads((work / "stages" / "promote" / "promotion.json").read_text())
    assert not promo["promoted"] and "minMacroF1" in promo["reasons"][0]
    assert sorted(p.name for p in (work / "triton-repo" / "adore-student").iterdir() if p.is_dir()) == ["1"]


def test_stage_cli_requires_upstream(tiny_round_file, tmp_path):
    res = adore("stage", "distill", "--round", tiny_round_file, "--workdir", tmp_path / "empty", check=False)
    assert res.returncode == 1 and "needs stage 'synthesize'" in res.stderr


def _wait_for(pred, timeout, proc):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def test_kill_mid_stage_then_resume(tiny_run, tiny_round_file, tmp_path):
    work = copy_workdir(tiny_run, tmp_path / "killed")
    import shutil

    for name in ("distill", "evaluate", "promote"):
        shutil.rmtree(work / "stages" / name)
    shutil.rmtree(work / "triton-repo")
    exe = Path(sys.executable).parent / "adore"
    proc = subprocess.Popen([str(exe), "run", str(tiny_round_file), "--workdir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    leftovers = lambda: [p for p in (work / "stages").iterdir() if p.name.startswith(".distill.tmp-")]
    try:
        # Kill once distill has started writing into its temporary folder.
        assert _wait_for(lambda: bool(leftovers()), 120, proc), "distill never started"
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (work / "stages" / "distill").exists(), "a killed stage must leave no output in place"
    assert leftovers()
    assert _status(work)["stages"]["distill"]["state"] == "Running"
    res = adore("run", tiny_round_file, "--workdir", work)
    assert res.stderr.count("complete, skipping") == 5
    assert not leftovers()
    st = _status(work)
    assert st["phase"] == "Succeeded" and st["promotedVersion"] == 1
    assert read_complete(work, "distill") is not None


def test_sigterm_marks_round_interrupted(tiny_run, tiny_round_file, tmp_path):
    work = copy_workdir(tiny_run, tmp_path / "term")
    import shutil

    for name in ("distill", "evaluate", "promote"):
        shutil.rmtree(work / "stages" / name)
    exe = Path(sys.executable).parent / "adore"
    proc = subprocess.Popen([str(exe), "run", str(tiny_round_file), "--workdir", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert _wait_for(lambda: any(p.name.startswith(".distill.tmp-") for p in (work / "stages").iterdir()), 120, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 130
    st = _status(work)
    assert st["phase"] == "Interrupted" and "distill" in st["message"]
    assert st["stages"]["distill"]["state"] == "Pending" and "interrupted" in st["stages"]["distill"]["message"]
    assert not any(p.name.startswith(".distill.tmp-") for p in (work / "stages").iterdir())


def test_promote_rerun_after_kill_does_not_duplicate_version(tiny_run, tiny_round_file, tmp_path):
    """A promote killed after writing its version folder but before completing reuses that version."""
    work = copy_workdir(tiny_run, tmp_path / "promote-again")
    import shutil

    shutil.rmtree(work / "stages" / "promote")
    adore("run", tiny_round_file, "--workdir", work)
    assert sorted(p.name for p in (work / "triton-repo" / "adore-student").iterdir() if p.is_dir()) == ["1"]
    assert _status(work)["promotedVersion"] == 1
    # A different student (another distill seed) is a new version.
    doc = yaml.safe_load(tiny_round_file.read_text())
    doc["spec"]["stages"]["distill"]["seed"] = 1
    f = tmp_path / "round.yaml"
    f.write_text(yaml.safe_dump(doc))
    res = adore("run", f, "--workdir", work)
    assert res.stderr.count("complete, skipping") == 5
    assert sorted(p.name for p in (work / "triton-repo" / "adore-student").iterdir() if p.is_dir()) == ["1", "2"]
    assert _status(work)["promotedVersion"] == 2


def test_annotate_shards_then_merge(tiny_run, tiny_round_file, tmp_path):
    """`adore stage annotate --shard i/N` (one Job each on a cluster), then annotate merges in pool order."""
    work = copy_workdir(tiny_run, tmp_path / "sharded")
    doc = yaml.safe_load(tiny_round_file.read_text())
    doc["spec"]["stages"]["annotate"] = {"shards": 2}
    f = tmp_path / "round.yaml"
    f.write_text(yaml.safe_dump(doc))
    res = adore("stage", "annotate", "--round", f, "--workdir", work, "--shard", "3/2", check=False)
    assert res.returncode == 1 and "need 0 <= i < N" in res.stderr
    res = adore("stage", "annotate", "--round", f, "--workdir", work, "--shard", "0/4", check=False)
    assert res.returncode == 1 and "spec.stages.annotate.shards is 2" in res.stderr
    adore("stage", "annotate", "--round", f, "--workdir", work, "--shard", "1/2")
    shard1 = _jsonl(work / "stages" / "annotate.shard-1-of-2" / "annotations.jsonl")
    assert len(shard1) == 4
    before = (work / "stages" / "annotate.shard-1-of-2" / "_complete.json").read_text()
    adore("stage", "annotate", "--round", f, "--workdir", work)  # runs shard 0 itself, reuses shard 1, merges
    assert (work / "stages" / "annotate.shard-1-of-2" / "_complete.json").read_text() == before
    merged = _jsonl(work / "stages" / "annotate" / "annotations.jsonl")
    pool = _jsonl(work / "stages" / "prepare" / "pool.jsonl")
    assert [(r["query"], r["item_id"]) for r in merged] == [(r["query"], r["item_id"]) for r in pool]
    # The merge applies the seed-fitted correction to the whole pool; the shard's own verdicts stay beside.
    uncalibrated = [{**{k: v for k, v in r.items() if k not in ("teacher_grade", "teacher_probs", "rule_features", "labels")},
                     **({"grade": r["teacher_grade"], "probs": r["teacher_probs"]} if "teacher_probs" in r else {})}
                    for r in merged[1::2]]
    assert uncalibrated == shard1
    metrics = json.loads((work / "stages" / "annotate" / "metrics.json").read_text())
    assert metrics["shards"] == 2 and metrics["seedCorrection"].startswith("teacher and")


def test_distill_reads_grades_through_seed_cutoffs_and_annotate_weighs_rule_evidence(tiny_run):
    distill = json.loads((tiny_run / "stages" / "distill" / "metrics.json").read_text())
    dec = distill["gradeDecoding"]
    assert dec["method"] == "seed-cutoffs" and dec["seedPairs"] == 4 and len(dec["cutoffs"]) == 2
    assert dec["cutoffs"] == sorted(dec["cutoffs"])
    meta = json.loads((tiny_run / "stages" / "distill" / "student" / "adore_student.json").read_text())
    assert meta["grade_cutoffs"] == dec["cutoffs"]
    annotate = json.loads((tiny_run / "stages" / "annotate" / "metrics.json").read_text())
    records = _jsonl(tiny_run / "stages" / "annotate" / "annotations.jsonl")
    parsed = [r for r in records if r["probs"] is not None]
    features = {"queryCoverage", "embeddingSimilarity"}  # the default ruleFeatures and the bi-encoder cosine
    assert set(annotate["signalWeights"]) == features | {"teacher"} and annotate["evidenceWeights"] == "ordinal"
    assert all(w >= 0 for w in annotate["signalWeights"].values())  # weighed in the direction each signal means
    assert parsed and all(set(r["rule_features"]) == features for r in parsed)
    assert all(-1 <= r["rule_features"]["embeddingSimilarity"] <= 1 for r in parsed)
    assert len({r["rule_features"]["embeddingSimilarity"] for r in parsed}) > 1


def test_the_evidence_pool_is_labelled_without_the_llm_and_reaches_distill(tiny_run):
    prep = tiny_run / "stages" / "prepare"
    key = lambda r: (r["query"], r["item_id"])
    pool, seed = {key(r) for r in _jsonl(prep / "pool.jsonl")}, {key(r) for r in _jsonl(prep / "seed.jsonl")}
    extra = _jsonl(prep / "evidence_pool.jsonl")
    assert len(extra) == 12 and not {key(r) for r in extra} & (pool | seed)
    labels = _jsonl(tiny_run / "stages" / "annotate" / "evidence_labels.jsonl")
    assert [key(r) for r in labels] == [key(r) for r in extra]
    assert all(r["source"] == "evidence" and abs(sum(r["probs"]) - 1) < 1e-4 and "rationale" not in r for r in labels)
    assert len({tuple(r["probs"]) for r in labels}) > 1  # the evidence, not a constant prior
    annotate = json.loads((tiny_run / "stages" / "annotate" / "metrics.json").read_text())
    assert annotate["evidenceLabels"] == 12 and sum(annotate["evidenceLabelGrades"].values()) == 12
    distill = json.loads((tiny_run / "stages" / "distill" / "metrics.json").read_text())
    assert distill["evidenceExamples"] == 12


def test_promote_ships_int8_only_within_its_tolerances(tiny_run, tiny_round_file, tmp_path):
    work = copy_workdir(tiny_run, tmp_path / "int8")
    doc = yaml.safe_load(tiny_round_file.read_text())
    repo = work / "triton-repo" / "adore-student"
    # An impossible parity tolerance: the stage fails, names the knob, and writes no version.
    doc["spec"]["promotion"].update({"quantize": "int8", "int8Tolerance": 1e-9})
    f = tmp_path / "int8-strict.yaml"
    f.write_text(yaml.safe_dump(doc))
    res = adore("stage", "promote", "--round", f, "--workdir", work, check=False)
    assert res.returncode != 0 and "int8Tolerance" in res.stderr
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == ["1"]
    # The bi-encoder's head multiplies the cosine, so int8 errors grow with it: 0.050 here per channel.
    doc["spec"]["promotion"].update({"int8Tolerance": 0.08, "int8MaxF1Drop": 1.0})
    f.write_text(yaml.safe_dump(doc))
    adore("stage", "promote", "--round", f, "--workdir", work)
    m = json.loads((work / "stages" / "promote" / "metrics.json").read_text())
    q = m["quantization"]
    assert m["version"] == 2 and q["method"] == "int8" and q["maxAbsDiff"] <= 0.08
    # The matrix weights go to int8; the bi-encoder's word-embedding table, shared by its query and item
    # branches, stays fp32 in ONNX Runtime's dynamic quantisation (47 of its 86 MiB): 72% of the fp32 size.
    assert set(q["devMacroF1"]) == {"fp32", "int8"} and q["modelMiB"]["int8"] < 0.8 * q["modelMiB"]["fp32"]
    v1, v2 = repo / "1" / "model.onnx", repo / "2" / "model.onnx"
    assert v2.stat().st_size < 0.8 * v1.stat().st_size
    # The golden rows hold what the int8 model serves (Triton's served-output check compares to them).
    from adore.student.export import onnx_probs
    from adore.student.model import Student

    golden = json.loads((repo / "2" / "golden.json").read_text())
    student = Student.load(work / "stages" / "distill" / "student")
    served = onnx_probs(v2, student, [g["query"] for g in golden], [g["title"] for g in golden],
                        [g["attributes"] for g in golden])
    assert abs(served - [g["probs"] for g in golden]).max() < 1e-5


def _context(round_file: Path, workdir: Path, update: dict, stage: str = "annotate"):
    """A stage context on a copy of the tiny round with spec fields changed (dotted camelCase paths)."""
    from adore.schema import parse_round
    from adore.stages.base import StageContext

    doc = yaml.safe_load(round_file.read_text())
    for dotted, value in update.items():
        node = doc["spec"]
        *path, last = dotted.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    round_ = parse_round(doc, "tiny", base_dir=round_file.parent, check_paths=False)
    return StageContext(round_, workdir, workdir / "scratch", stage)


def test_uncertain_selection_gives_the_llm_the_pairs_the_evidence_is_least_sure_of(tiny_run, tiny_round_file):
    import numpy as np

    from adore.stages import annotate, common
    from adore.teacher import correction

    ctx = _context(tiny_round_file, tiny_run, {"dataset.poolSelection": "uncertain"})
    items = common.catalogue(ctx)
    pool, extra = common.pairs(ctx, "pool"), common.pairs(ctx, "evidence_pool")
    chosen = annotate.select_pool(ctx, items)
    llm, rest, how = chosen.llm, chosen.rest, chosen.report
    key = lambda ps: [(p.query, p.item_id) for p in ps]
    assert len(llm) == len(pool) and len(rest) == len(extra) and sorted(key(llm + rest)) == sorted(key(pool + extra))
    assert how["method"] == "uncertain" and how["meanEntropyChosen"] > how["meanEntropyRest"]
    # Recompute the evidence-only labels of every candidate: no pair left to the evidence is less certain.
    seed = common.pairs(ctx, "seed")
    names, x = annotate.evidence(ctx, items, annotate.evidence_rows(llm + rest, items, common.brands(items)))
    _, sx = annotate.evidence(ctx, items, annotate.evidence_rows(seed, items, common.brands(items)))
    fit = correction.fit(None, common.gold(seed, ctx.spec.grades), sx, names, 3, "ordinal",
                         (None, annotate.evidence(ctx, items, annotate.evidence_rows(pool + extra, items, common.brands(items)))[1]))
    p = fit.apply(None, x)
    h = -(p * np.log(p)).sum(1)
    assert h[:len(llm)].min() >= h[len(llm):].max() - 1e-9
    random_ctx = _context(tiny_round_file, tiny_run, {})
    assert key(annotate.select_pool(random_ctx, items).llm) == key(pool)  # random: prepare's pool as drawn


def test_the_evidence_labels_do_not_depend_on_which_pairs_the_llm_judged(tiny_run, tiny_round_file, tmp_path):
    """The evidence-only correction is standardised over every candidate pair, so random and uncertain
    selection label the pairs left to the evidence with one function (before, its spread came from the
    LLM's pairs: a narrow slice under uncertain selection)."""
    import dataclasses

    from adore.data.contract import read_records
    from adore.stages import annotate, common

    labels, reports = {}, {}
    for how in ("random", "uncertain"):
        ctx = _context(tiny_round_file, tiny_run, {"dataset.poolSelection": how})
        ctx = dataclasses.replace(ctx, out=tmp_path / how)
        ctx.out.mkdir()
        items = common.catalogue(ctx)
        chosen = annotate.select_pool(ctx, items)
        llm, rest = chosen.llm, chosen.rest
        brands = common.brands(items)
        # What the LLM judged: its verdicts do not enter the evidence-only fit, so a flat one stands in.
        records = [{"query": q, "item_id": i, "grade": "partial", "probs": [0.2, 0.5, 0.3], "judging": "direct",
                    "query_attributes": qa, "item_attributes": ia} for q, i, qa, ia in annotate.evidence_rows(llm, items, brands)]
        teacher = common.load_teacher(ctx, [], items)
        m = annotate.correct_on_seed(ctx, records, teacher, items, chosen if how == "uncertain" else None)
        reports[how] = m["evidenceOnly"]
        labels[how] = {(r["query"], r["item_id"]): r["probs"] for r in read_records(ctx.out / common.EVIDENCE_LABELS)}
        assert len(labels[how]) == len(rest) and all("evidence" in r["labels"] for r in records)
    assert reports["random"] == reports["uncertain"]
    both = labels["random"].keys() & labels["uncertain"].keys()
    assert both and all(labels["random"][k] == labels["uncertain"][k] for k in both)


def test_annotate_computes_the_evidence_of_each_candidate_and_seed_pair_once(tiny_run, tiny_round_file, tmp_path,
                                                                            monkeypatch):
    """Uncertain selection, the correction's fit and the evidence labels share one computation of the
    evidence (before: select_pool ran twice and the correction encoded the LLM's pairs and the rest again)."""
    import dataclasses

    from adore.stages import annotate, common

    ctx = _context(tiny_round_file, tiny_run, {"dataset.poolSelection": "uncertain"})
    ctx = dataclasses.replace(ctx, out=tmp_path)
    items = common.catalogue(ctx)
    computed, real = [], annotate.evidence
    monkeypatch.setattr(annotate, "evidence", lambda c, it, rows: computed.append(len(rows)) or real(c, it, rows))
    chosen = annotate.select_pool(ctx, items)
    records = [{"query": q, "item_id": i, "grade": "partial", "probs": [0.2, 0.5, 0.3], "judging": "direct",
                "query_attributes": qa, "item_attributes": ia}
               for q, i, qa, ia in annotate.evidence_rows(chosen.llm, items, common.brands(items))]
    m = annotate.correct_on_seed(ctx, records, common.load_teacher(ctx, [], items), items, chosen)
    n_candidates, n_seed = len(chosen.candidates), len(common.pairs(ctx, "seed"))
    assert m["evidenceLabels"] == len(chosen.rest) > 0 and "gradeOffsets" in m
    assert sorted(computed) == sorted([n_candidates, n_seed])
    # A record the candidates do not hold (an older pool's) is computed on its own, not dropped.
    other = dict(records[0], query=records[0]["query"] + " extra")
    row = (other["query"], other["item_id"], other["query_attributes"], other["item_attributes"])
    got = chosen.features_of(ctx, items, [row, annotate.evidence_rows(chosen.llm[:1], items, common.brands(items))[0]])
    assert computed[-1] == 1 and got.shape == (2, len(chosen.evidence(ctx, items, "candidates")[0]))
    assert (got[1] == chosen.evidence(ctx, items, "candidates")[1][chosen.candidates.index(chosen.llm[0])]).all()


def test_in_context_demonstrations_come_from_the_seed_only(tiny_run, tiny_round_file):
    from adore.stages import common

    ctx = _context(tiny_round_file, tiny_run, {"teacher.demonstrations": 2})
    items = common.catalogue(ctx)
    teacher = common.load_teacher(ctx, [], items)
    seed = {(p.query, p.item_id) for p in common.pairs(ctx, "seed")}
    dev = common.pairs(ctx, "dev")
    assert teacher.demos is not None and {(d.query, d.item.item_id) for d in teacher.demos.demos} == seed
    for p in dev[:6]:
        shown = teacher.demos(p.query, items[p.item_id])
        assert len(shown) == 2 and all((d.query, d.item.item_id) in seed for d in shown)
        prompt = teacher.prompt(p.query, items[p.item_id])
        assert all(d.item.title in prompt for d in shown)
    dev_titles = {items[p.item_id].title for p in dev} - {items[i].title for _, i in seed}
    q = dev[0]
    assert not any(t in teacher.prompt(q.query, items[q.item_id]).replace(items[q.item_id].title, "") for t in dev_titles)
    one = next(iter(seed))
    assert one not in {(d.query, d.item.item_id) for d in teacher.demos(one[0], items[one[1]])}  # never its own


def test_gates_on_and_a_failing_student_is_not_promoted(tiny_run, tiny_round_file, tmp_path):
    from adore.schema import GatesSpec
    from adore.stages.promote import check_gates

    report = {"student": {"macroF1": 0.5, "auc": 0.7, "ndcg@10": 0.8}, "bm25": {"macroF1": 0.4, "auc": 0.75, "ndcg@10": 0.9}}
    failed = check_gates(report, GatesSpec(min_macro_f1=0.6, must_beat_bm25=True), 10)
    assert failed == ["macro-F1 0.5000 < minMacroF1 0.6", "AUC 0.7000 is below BM25's 0.7500", "NDCG@10 0.8000 is below BM25's 0.9000"]
    assert check_gates(report, GatesSpec(min_macro_f1=0.3, must_beat_bm25=False), 10) == []
    work = copy_workdir(tiny_run, tmp_path / "gated")
    doc = yaml.safe_load(tiny_round_file.read_text())
    doc["spec"]["promotion"]["gates"] = {"minMacroF1": 0.999, "mustBeatBm25": True}
    f = tmp_path / "gated.yaml"
    f.write_text(yaml.safe_dump(doc))
    versions = sorted(p.name for p in (work / "triton-repo" / "adore-student").iterdir() if p.is_dir())
    adore("stage", "promote", "--round", f, "--workdir", work)
    m = json.loads((work / "stages" / "promote" / "metrics.json").read_text())
    assert m["promoted"] is False and any("minMacroF1" in r for r in m["reasons"])
    assert sorted(p.name for p in (work / "triton-repo" / "adore-student").iterdir() if p.is_dir()) == versions


def test_the_default_example_has_its_gates_on():
    doc = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" / "default-round.yaml").read_text())
    gates = doc["spec"]["promotion"]["gates"]
    assert gates["mustBeatBm25"] is True and gates["minMacroF1"] >= 0.3


def test_round_costs_give_each_stage_its_share_and_work_per_second(tiny_run, tiny_round_file):
    from adore.schema import load_round
    from adore.stages import costs

    spec = load_round(tiny_round_file).spec
    stages = {n: (s["durationSeconds"], json.loads((tiny_run / "stages" / n / "metrics.json").read_text()))
              for n, s in _status(tiny_run)["stages"].items()}
    rows = {r["stage"]: r for r in costs(stages, spec)}
    assert list(rows) == NAMES
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0, abs=1e-3)
    annotate, distill = stages["annotate"][1], stages["distill"][1]
    assert rows["annotate"]["count"] == annotate["pairs"] and rows["annotate"]["unit"] == "pairs labelled by the LLM"
    trained = distill["teacherExamples"] + distill.get("evidenceExamples", 0) + distill["syntheticExamples"]
    assert rows["distill"]["count"] == trained * spec.stages.distill.epochs and trained > 0
    assert rows["evaluate"]["count"] >= stages["evaluate"][1]["devPairs"] > 0
    for name in ("prepare", "annotate", "distill", "evaluate"):
        r = rows[name]
        assert r["perSecond"] == pytest.approx(r["count"] / r["seconds"], rel=0.01), name
    # A stage whose metrics are missing (not run yet) has a share but no rate, and nothing raises.
    bare = costs({**stages, "distill": (stages["distill"][0], {})}, spec)
    assert next(r for r in bare if r["stage"] == "distill")["perSecond"] is None
    # A slow stage keeps its rate (significant figures, not two decimals: 0.0567 pairs/s is not 0.06).
    slow = costs({**stages, "annotate": (annotate["pairs"] * 17.65, annotate)}, spec)
    rate = next(r for r in slow if r["stage"] == "annotate")["perSecond"]
    assert rate == pytest.approx(1 / 17.65, rel=0.01)


def test_architecture_auto_trains_both_and_keeps_the_one_the_rule_picks(tiny_run, tiny_round_file, tmp_path):
    from adore.stages.distill import choose_architecture

    assert "architectureChoice" not in json.loads((tiny_run / "stages" / "distill" / "metrics.json").read_text())
    work = copy_workdir(tiny_run, tmp_path / "auto")
    doc = yaml.safe_load(tiny_round_file.read_text())
    doc["spec"]["stages"]["distill"]["architecture"] = "auto"
    f = tmp_path / "auto.yaml"
    f.write_text(yaml.safe_dump(doc))
    adore("stage", "distill", "--round", f, "--workdir", work)
    m = json.loads((work / "stages" / "distill" / "metrics.json").read_text())
    choice = m["architectureChoice"]
    assert set(choice["candidates"]) == {"bi-encoder", "cross-encoder"}
    dev = len(_jsonl(work / "stages" / "prepare" / "dev.jsonl"))
    for c in choice["candidates"].values():
        assert 0 < c["pairs"] < dev and c["trainSeconds"] > 0  # the held-out half of dev, one model each
    assert (choice["chosen"], choice["reason"]) == choose_architecture(choice["candidates"], choice["tolerance"])
    meta = json.loads((work / "stages" / "distill" / "student" / "adore_student.json").read_text())
    assert meta["architecture"] == m["architecture"] == choice["chosen"]


def test_the_architecture_rule_keeps_the_bi_encoder_unless_the_cross_encoder_is_clearly_better():
    from adore.stages.distill import choose_architecture

    def pick(bi, cross, tol=0.01):
        return choose_architecture({"bi-encoder": dict(zip(("macroF1", "auc"), bi)),
                                    "cross-encoder": dict(zip(("macroF1", "auc"), cross))}, tol)[0]

    assert pick((0.40, 0.70), (0.45, 0.60)) == "cross-encoder"  # macro-F1 first, beyond the tolerance
    assert pick((0.40, 0.70), (0.405, 0.60)) == "bi-encoder"  # within it: the faster one, on AUC
    assert pick((0.40, 0.70), (0.405, 0.75)) == "cross-encoder"  # a macro-F1 tie broken by AUC
    assert pick((0.40, 0.70), (0.405, 0.705)) == "bi-encoder"  # a tie on both
    assert pick((0.45, 0.60), (0.40, 0.90)) == "bi-encoder"  # higher macro-F1 wins whatever AUC says
    assert pick((None, None), (0.5, 0.9)) == "bi-encoder"  # nothing to compare on
    assert pick((0.40, 0.70), (0.42, 0.70), tol=0.05) == "bi-encoder"


def test_interpolation_keeps_the_weight_the_rule_picks_and_zero_is_the_untrained_backbone(
        tiny_run, tiny_round_file, tmp_path):
    import torch
    from transformers import AutoModel

    from adore import models
    from adore.stages.distill import choose_interpolation

    def distil(name: str, weights: list[float]) -> tuple[Path, dict]:
        work = copy_workdir(tiny_run, tmp_path / name)
        doc = yaml.safe_load(tiny_round_file.read_text())
        doc["spec"]["stages"]["distill"]["interpolation"] = weights
        f = tmp_path / f"{name}.yaml"
        f.write_text(yaml.safe_dump(doc))
        adore("stage", "distill", "--round", f, "--workdir", work)
        return work, json.loads((work / "stages" / "distill" / "metrics.json").read_text())

    assert "interpolation" not in json.loads((tiny_run / "stages" / "distill" / "metrics.json").read_text())
    _, m = distil("grid", [0.0, 0.5, 1.0])
    mix = m["interpolation"]
    assert [c["weight"] for c in mix["candidates"]] == [0.0, 0.5, 1.0]
    assert mix["weight"] == choose_interpolation(mix["candidates"])["weight"]
    assert len({c["nll"] for c in mix["candidates"]}) == 3  # three different students were scored
    # Weight 0 alone: the saved encoder is the backbone, untouched by training.
    work, m = distil("zero", [0.0])
    assert m["interpolation"]["weight"] == 0.0 and m["steps"] > 0
    saved = AutoModel.from_pretrained(work / "stages" / "distill" / "student").state_dict()
    backbone = AutoModel.from_pretrained(models.resolve("builtin:minilm-l6")).state_dict()
    assert saved.keys() == backbone.keys()
    assert all(torch.equal(saved[k], backbone[k]) for k in saved)


def test_the_interpolation_rule_takes_auc_then_nll_then_the_more_trained_student():
    from adore.stages.distill import choose_interpolation

    def pick(*rows):
        return choose_interpolation([dict(zip(("weight", "auc", "nll"), r)) for r in rows])["weight"]

    assert pick((0.5, 0.86, 0.99), (1.0, 0.85, 0.90)) == 0.5  # AUC first, whatever NLL says
    assert pick((0.5, 0.86, 0.99), (0.7, 0.86, 0.98), (1.0, 0.85, 0.90)) == 0.7  # an AUC tie: lower NLL
    assert pick((0.5, 0.86, 0.98), (0.7, 0.86, 0.98)) == 0.7  # a tie on both: the more trained
    assert pick((0.5, None, 0.95), (1.0, None, 0.97)) == 0.5  # one class in the half: NLL alone


def test_compress_teaches_a_shallower_student_and_promote_ships_it_only_within_its_gate(tiny_run, tiny_round_file, tmp_path):
    import numpy as np

    from adore.student.export import onnx_probs
    from adore.student.model import Student

    work = copy_workdir(tiny_run, tmp_path / "compress")
    doc = yaml.safe_load(tiny_round_file.read_text())
    doc["spec"]["stages"]["distill"]["compress"] = {"layers": 1}
    doc["spec"]["promotion"]["compressedMaxF1Drop"] = 1.0
    f = tmp_path / "compress.yaml"
    f.write_text(yaml.safe_dump(doc))
    adore("stage", "distill", "--round", f, "--workdir", work)
    distill = work / "stages" / "distill"
    m = json.loads((distill / "metrics.json").read_text())
    c = m["compression"]
    # Every pair the first student learned from is taught again, by it; the synthetic pairs keep their grades.
    assert c["layers"] == 1 and c["taughtExamples"] == m["teacherExamples"] + m["evidenceExamples"] > 0
    assert c["syntheticExamples"] == m["syntheticExamples"] and c["steps"] > 0
    assert set(c["selection"]) == {"first", "compressed"} and c["selection"]["compressed"]["pairs"] > 0
    first, shallow = Student.load(distill / "student"), Student.load(distill / "compressed")
    assert first.model.config.num_hidden_layers == 6 and shallow.model.config.num_hidden_layers == 1
    assert shallow.meta.grade_cutoffs and shallow.meta.architecture == first.meta.architecture
    # Within the drop and the (tiny round's) gates: the shallow student ships, exported with parity.
    adore("stage", "evaluate", "--round", f, "--workdir", work)
    adore("stage", "promote", "--round", f, "--workdir", work)
    p = json.loads((work / "stages" / "promote" / "metrics.json").read_text())
    assert p["shipped"]["student"] == "compressed" and p["shipped"]["layers"] == 1 and p["onnxMaxAbsDiff"] < 1e-3
    version = work / "triton-repo" / "adore-student" / str(p["version"])
    golden = json.loads((version / "golden.json").read_text())
    cols = [g["query"] for g in golden], [g["title"] for g in golden], [g["attributes"] for g in golden]
    assert np.abs(shallow.predict(*cols) - np.array([g["probs"] for g in golden])).max() < 1e-3
    assert np.abs(onnx_probs(version / "model.onnx", shallow, *cols) - shallow.predict(*cols)).max() < 1e-4
    # A shallow student that collapsed (every pair the same score: one grade) is refused; the first ships.
    shallow.model.scale.data.zero_()
    shallow.save(distill / "compressed")
    doc["spec"]["promotion"]["compressedMaxF1Drop"] = 0.05
    f.write_text(yaml.safe_dump(doc))
    adore("stage", "promote", "--round", f, "--workdir", work)
    p2 = json.loads((work / "stages" / "promote" / "metrics.json").read_text())
    dev = p2["shipped"]["dev"]
    assert dev["first"]["macroF1"] - dev["compressed"]["macroF1"] > 0.05, dev  # one grade of three: at most 1/3
    assert p2["shipped"]["student"] == "first" and "compressedMaxF1Drop 0.05" in p2["shipped"]["reason"]
    served = json.loads((work / "triton-repo" / "adore-student" / str(p2["version"]) / "golden.json").read_text())
    assert np.abs(first.predict(*cols) - np.array([g["probs"] for g in served])).max() < 1e-3


def test_promote_ships_the_compressed_student_only_if_it_passes_the_gates_and_keeps_macro_f1():
    from adore.stages.promote import choose_shipped

    assert choose_shipped(0.50, 0.495, [], 0.01)[0] == "compressed"  # within the drop
    assert choose_shipped(0.50, 0.52, [], 0.0)[0] == "compressed"  # better: no drop at all
    which, why = choose_shipped(0.50, 0.48, [], 0.01)
    assert which == "first" and "0.0200 below the first's 0.5000" in why and "compressedMaxF1Drop 0.01" in why
    which, why = choose_shipped(0.50, 0.50, ["AUC 0.6000 is below BM25's 0.7000"], 0.01)
    assert which == "first" and "fails the gates: AUC 0.6000 is below BM25's 0.7000" in why
