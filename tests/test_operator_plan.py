"""Unit tests of the operator's pure parts: Job rendering and the reconcile plan."""
import json

import yaml

from adore.schema import STAGE_NAMES, AdoreRoundSpec
from adore_operator import jobs as render
from adore_operator.reconcile import parse_message, plan, validate_spec
from adore_operator.trigger import next_round, next_round_name
from conftest import EXAMPLES

NOW = "2026-11-27T10:00:00Z"


def _body(**status):
    doc = yaml.safe_load((EXAMPLES / "default-round.yaml").read_text())
    doc["metadata"].update({"namespace": "ns", "uid": "u-1", "generation": 1})
    doc["spec"]["runtime"] = {"image": "reg/adore-worker:1", "workdirClaim": "adore-work", "serviceAccount": "adore-worker",
                              "nodeSelector": {"pool": "gpu"}, "tolerations": [{"key": "gpu", "operator": "Exists"}],
                              "stages": {"annotate": {"gpus": 1, "memory": "16Gi", "retries": 3}}}
    if status:
        doc["status"] = status
    return doc


def _job(stage, state=None, start="2026-11-27T09:00:00Z", end="2026-11-27T09:01:00Z"):
    status = {"startTime": start}
    if state == "Succeeded":
        status.update(completionTime=end, conditions=[{"type": "Complete", "status": "True"}])
    if state == "Failed":
        status.update(conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                   "message": "Job has reached the specified backoff limit", "lastTransitionTime": end}])
    return {"metadata": {"name": f"default-{stage}", "labels": {render.STAGE_LABEL: stage}}, "status": status}


def test_stage_job_rendering():
    body = _body()
    spec = AdoreRoundSpec.model_validate(body["spec"])
    job = render.stage_job(body, spec, "annotate")
    assert job["metadata"]["name"] == "default-annotate"
    assert job["metadata"]["labels"][render.ROUND_LABEL] == "default"
    assert job["metadata"]["labels"][render.STAGE_LABEL] == "annotate"
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "AdoreRound" and owner["uid"] == "u-1" and owner["controller"]
    assert job["spec"]["backoffLimit"] == 3
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"] == ["adore", "stage", "annotate", "--round", "/etc/adore/round/round.yaml", "--workdir", "/workdir/default"]
    assert c["resources"]["limits"] == {"memory": "16Gi", "nvidia.com/gpu": "1"}
    assert pod["serviceAccountName"] == "adore-worker" and pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert {"name": "workdir", "persistentVolumeClaim": {"claimName": "adore-work"}} in pod["volumes"]
    assert render.stage_job(body, spec, "sft")["spec"]["backoffLimit"] == 1  # the default
    assert "resources" not in render.stage_job(body, spec, "sft")["spec"]["template"]["spec"]["containers"][0]


def test_names_are_deterministic_and_dns_safe():
    long = "r" * 70
    a, b = render.job_name(long, "synthesize"), render.job_name(long, "synthesize")
    assert a == b and len(a) <= 63 and a != render.job_name(long, "distill")


def test_round_config_map_freezes_spec():
    body = _body()
    cm = render.round_config_map(body)
    doc = yaml.safe_load(cm["data"]["round.yaml"])
    assert doc["spec"] == body["spec"] and doc["metadata"] == {"name": "default"}


def test_plan_creates_first_stage_then_waits():
    p = plan(_body(), {}, {}, NOW)
    assert p.create == ["prepare"] and p.status["phase"] == "Running" and p.status["stage"] == "prepare"
    p = plan(_body(), {"prepare": _job("prepare")}, {}, NOW)
    assert p.create == [] and p.status["stages"]["prepare"]["state"] == "Running"


def test_plan_hands_off_and_reads_metrics():
    msg = json.dumps({"stage": "prepare", "ok": True, "metrics": {"devPairs": 10}})
    p = plan(_body(), {"prepare": _job("prepare", "Succeeded")}, {"prepare": msg}, NOW)
    assert p.create == ["sft"]
    st = p.status["stages"]["prepare"]
    assert st["state"] == "Succeeded" and st["metrics"] == {"devPairs": 10} and st["durationSeconds"] == 60
    assert ("Normal", "StageSucceeded", "stage prepare succeeded") in p.events
    conds = {c["type"]: c for c in p.status["conditions"]}
    assert conds["StagePrepare"]["status"] == "True" and conds["Ready"]["status"] == "False"


def test_plan_failure_stops_the_round_with_reason():
    jobs = {"prepare": _job("prepare", "Succeeded"), "sft": _job("sft", "Failed")}
    msg = json.dumps({"stage": "sft", "ok": False, "error": "CUDA out of memory"})
    p = plan(_body(phase="Running"), jobs, {"sft": msg}, NOW)
    assert p.create == [] and p.status["phase"] == "Failed" and p.status["stage"] == "sft"
    assert "CUDA out of memory" in p.status["message"]
    conds = {c["type"]: c for c in p.status["conditions"]}
    assert conds["Failed"]["status"] == "True" and conds["StageSft"]["status"] == "False"
    assert any(e[1] == "RoundFailed" for e in p.events)


def test_plan_success_records_quality_and_version():
    jobs = {s: _job(s, "Succeeded") for s in STAGE_NAMES}
    msgs = {"evaluate": json.dumps({"ok": True, "metrics": {"macroF1": 0.61}}),
            "promote": json.dumps({"ok": True, "metrics": {"promoted": True, "version": 3}})}
    p = plan(_body(phase="Running"), jobs, msgs, NOW)
    assert p.status["phase"] == "Succeeded" and p.status["quality"] == 0.61 and p.status["promotedVersion"] == 3
    conds = {c["type"]: c for c in p.status["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Promoted"]["status"] == "True"
    # a second plan over the same state changes nothing (no status churn, no events)
    again = plan({**_body(), "status": p.status}, jobs, msgs, "2026-11-27T11:00:00Z")
    assert again.status == p.status and again.events == []


def test_messages_that_are_not_json_are_kept_as_text():
    assert parse_message("Traceback ...\nKeyError: 'x'\n") == ({}, "Traceback ...\nKeyError: 'x'")
    assert parse_message(None) == ({}, None)


def test_invalid_spec_lists_field_paths():
    body = _body()
    body["spec"]["stages"]["distill"]["epochs"] = 0
    body["spec"]["runtime"]["stages"]["annotat"] = {"gpus": 1}
    problems = validate_spec(body)
    assert "spec.stages.distill.epochs: must be > 0" in problems
    assert any(p.startswith("spec.runtime.stages: unknown stage(s) ['annotat']") for p in problems)


def test_next_round_lineage():
    body = _body()
    assert next_round_name(body) == ("default-r2", 2)
    child = next_round(body)
    assert child["spec"]["previousRound"] == "default" and child["metadata"]["name"] == "default-r2"
    assert next_round_name(child) == ("default-r3", 3)


def test_sharded_annotate_runs_shard_jobs_then_merges():
    body = _body()
    body["spec"]["stages"]["annotate"] = {"shards": 3}
    done = {s: _job(s, "Succeeded") for s in ("prepare", "sft", "align")}
    p = plan(body, done, {}, NOW)
    assert p.create == ["annotate.shard-0-of-3", "annotate.shard-1-of-3", "annotate.shard-2-of-3"]
    assert p.status["stages"]["annotate"]["state"] == "Running"
    spec = AdoreRoundSpec.model_validate(body["spec"])
    job = render.stage_job(body, spec, "annotate.shard-1-of-3")
    assert job["metadata"]["name"] == "default-annotate-shard-1-of-3"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["--shard", "1/3"]
    assert job["spec"]["backoffLimit"] == 3  # the annotate stage's runtime applies to its shards
    jobs = {**done, "annotate.shard-0-of-3": _job("annotate.shard-0-of-3", "Succeeded"),
            "annotate.shard-1-of-3": _job("annotate.shard-1-of-3")}
    p = plan(body, jobs, {}, NOW)
    assert p.create == ["annotate.shard-2-of-3"]
    assert p.status["stages"]["annotate"]["shards"] == {"succeeded": 1, "total": 3}
    jobs.update({f"annotate.shard-{i}-of-3": _job(f"annotate.shard-{i}-of-3", "Succeeded") for i in range(3)})
    assert plan(body, jobs, {}, NOW).create == ["annotate"]
    jobs["annotate.shard-2-of-3"] = _job("annotate.shard-2-of-3", "Failed")
    p = plan(body, jobs, {"annotate.shard-2-of-3": json.dumps({"ok": False, "error": "OOM"})}, NOW)
    assert p.create == [] and p.status["phase"] == "Failed" and "OOM" in p.status["message"]


def test_where_the_server_has_indexed_jobs_the_shards_are_one_job_and_old_shard_jobs_keep_their_shape():
    from adore_operator.features import JobFeatures

    indexed = JobFeatures(indexed_jobs=True)
    body = _body()
    body["spec"]["stages"]["annotate"] = {"shards": 3}
    done = {s: _job(s, "Succeeded") for s in ("prepare", "sft", "align")}
    p = plan(body, done, {}, NOW, indexed)
    assert p.create == ["annotate.shards-of-3"] and p.status["stages"]["annotate"]["state"] == "Running"
    running = _job("annotate.shards-of-3")
    running["status"]["succeeded"] = 2  # two indexes done
    p = plan(body, {**done, "annotate.shards-of-3": running}, {}, NOW, indexed)
    assert p.create == [] and p.status["stages"]["annotate"]["shards"] == {"succeeded": 2, "total": 3}
    complete = _job("annotate.shards-of-3", "Succeeded")
    complete["status"]["succeeded"] = 3
    assert plan(body, {**done, "annotate.shards-of-3": complete}, {}, NOW, indexed).create == ["annotate"]
    failed = _job("annotate.shards-of-3", "Failed")
    p = plan(body, {**done, "annotate.shards-of-3": failed},
             {"annotate.shards-of-3": json.dumps({"ok": False, "error": "OOM"})}, NOW, indexed)
    assert p.status["phase"] == "Failed" and "OOM" in p.status["message"]
    # Shard Jobs made before the upgrade: the stage finishes as it started.
    legacy = {**done, "annotate.shard-0-of-3": _job("annotate.shard-0-of-3", "Succeeded")}
    assert plan(body, legacy, {}, NOW, indexed).create == ["annotate.shard-1-of-3", "annotate.shard-2-of-3"]


def test_sharded_synthesize_runs_its_shards_after_annotate():
    body = _body()
    body["spec"]["stages"]["synthesize"] = {"shards": 2}
    body["spec"]["runtime"] = {"stages": {"synthesize": {"retries": 5}}}
    done = {s: _job(s, "Succeeded") for s in ("prepare", "sft", "align", "annotate")}
    p = plan(body, done, {}, NOW)
    assert p.create == ["synthesize.shard-0-of-2", "synthesize.shard-1-of-2"]
    assert p.status["stage"] == "synthesize" and p.status["stages"]["synthesize"]["shards"] == {"succeeded": 0, "total": 2}
    spec = AdoreRoundSpec.model_validate(body["spec"])
    job = render.stage_job(body, spec, "synthesize.shard-0-of-2")
    cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:3] == ["adore", "stage", "synthesize"] and cmd[-2:] == ["--shard", "0/2"]
    assert job["spec"]["backoffLimit"] == 5
    assert job["spec"]["template"]["spec"]["securityContext"] == {"fsGroup": 10001}  # the worker image's uid
    jobs = {**done, **{f"synthesize.shard-{i}-of-2": _job(f"synthesize.shard-{i}-of-2", "Succeeded") for i in range(2)}}
    assert plan(body, jobs, {}, NOW).create == ["synthesize"]
    # Unsharded annotate in the same round: a plain Job, as before.
    assert plan(body, {s: done[s] for s in ("prepare", "sft", "align")}, {}, NOW).create == ["annotate"]


def test_recorded_results_need_no_pod_message():
    jobs = {"prepare": _job("prepare", "Succeeded")}
    first = plan(_body(), jobs, {"prepare": json.dumps({"ok": True, "metrics": {"devPairs": 10}})}, NOW)
    again = plan({**_body(), "status": first.status}, jobs, {}, NOW)  # no messages read this time
    assert again.status["stages"]["prepare"]["metrics"] == {"devPairs": 10}
    assert again.status == first.status


def test_jobs_and_the_config_map_are_adopted_by_the_round():
    body = _body()
    body["metadata"]["labels"] = {"adore.dev/lineage": "default", "app.kubernetes.io/instance": "argo-app"}
    spec = AdoreRoundSpec.model_validate(body["spec"])
    owner = {"apiVersion": "adore.dev/v1alpha1", "kind": "AdoreRound", "name": "default", "uid": "u-1",
             "controller": True, "blockOwnerDeletion": True}
    for obj in (render.round_config_map(body), render.stage_job(body, spec, "prepare")):
        md = obj["metadata"]
        assert md["namespace"] == "ns" and md["ownerReferences"] == [owner]
        assert md["labels"]["adore.dev/round"] == "default" and md["labels"]["adore.dev/lineage"] == "default"
        # A tool's tracking label on the round stays there: on the Jobs it would make the tool prune them as its own.
        assert "app.kubernetes.io/instance" not in md["labels"]
        assert md["labels"]["app.kubernetes.io/managed-by"] == "adore-operator"


def test_the_termination_message_the_worker_writes_is_what_the_operator_reads():
    from adore import termination

    ok = termination.render(termination.succeeded("prepare", {"devPairs": 10}))
    assert parse_message(ok) == ({"devPairs": 10}, None)
    long_error = "Traceback ...\n" + "x" * 5000
    failed = termination.render(termination.failed(long_error, "sft"))
    assert parse_message(failed) == ({}, long_error[-termination.ERROR_TAIL:])
    huge = termination.render(termination.succeeded("annotate", {"rows": "v" * 5000}))
    assert len(huge) <= termination.LIMIT and json.loads(huge) == {"stage": "annotate", "ok": True}


def test_only_changes_outside_trigger_and_rollback_are_frozen():
    from adore_operator.reconcile import frozen_changes

    trigger_only = [("change", ("trigger", "threshold"), 0.2, 0.3), ("add", ("rollback",), None, {"query": "q"})]
    assert frozen_changes(trigger_only) == []  # read live: applied, nothing to lock
    mixed = trigger_only + [("change", ("stages", "distill", "epochs"), 3, 2), ("change", ("grades",), ["a"], ["b"])]
    assert frozen_changes(mixed) == ["grades", "stages"]
    # The whole spec replaced (a diff at the root): each top-level field that differs, live ones left out.
    old, new = {"grades": ["a"], "trigger": {"threshold": 1}}, {"grades": ["a"], "trigger": {"threshold": 2}, "dataset": {}}
    assert frozen_changes([("change", (), old, new)]) == ["dataset"]


def test_a_round_is_counted_once_by_what_promote_did_when_it_is_seen_to_succeed():
    from adore.schema import AdoreRoundStatus
    from adore_operator import metrics
    from adore_operator.reconcile import _observe_promotion, promotion_outcome

    assert [promotion_outcome(m) for m in ({"promoted": True}, {"promoted": False, "regressesPrevious": True},
                                           {"promoted": False})] == ["Promoted", "RegressesPrevious", "GatesNotPassed"]

    def count(outcome):
        return metrics.PROMOTIONS.labels(outcome=outcome)._value.get()

    running = AdoreRoundStatus.model_validate({"phase": "Running"})
    done = AdoreRoundStatus.model_validate({"phase": "Succeeded", "stages": {"promote": {
        "state": "Succeeded", "metrics": {"promoted": False, "reasons": ["macroF1 below 0.4"]}}}})
    before = count("GatesNotPassed"), count("Promoted")
    _observe_promotion(done, running)   # the reconcile that sees the round succeed
    _observe_promotion(done, done)      # every later one: already recorded
    _observe_promotion(running, running)
    assert (count("GatesNotPassed"), count("Promoted")) == (before[0] + 1, before[1])
