"""The repository writer's two flavours, without a server.

ensemble-onnx needs Triton's onnxruntime backend, which the CPU tritonserver
here (nvidia-pytriton: python backend only) does not have, so its configs are
parsed with Triton's own ModelConfig protobuf (tritonclient ships it) and the
tensors are followed through the ensemble's steps; the steps' computation is
run in-process with the very code the python steps call.
"""
from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from adore.serving.backend import Preprocessor, probs_and_score
from adore.serving.repository import (TEMPLATES_ENV, model_names, onnx_inputs, pin_version, served_version,
                                      templates_root, versions, write_version)
from test_triton_serving import GRADES, ROWS, promoted  # noqa: F401 - the fixture

NAME = "adore-student"
MC = model_config_pb2.ModelConfig


def parse(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), MC())  # raises on any unknown field or bad syntax


@pytest.fixture(scope="module")
def ensemble_repo(promoted, tmp_path_factory):
    _, _, folder = promoted
    repo = tmp_path_factory.mktemp("ensemble-repo")
    assert write_version(repo, NAME, folder, GRADES, flavour="ensemble-onnx", tensorrt=True) == 1
    assert write_version(repo, NAME, folder, GRADES, flavour="ensemble-onnx") == 2
    return repo, folder


def test_python_onnx_config_is_a_valid_model_config(promoted, tmp_path):
    _, _, folder = promoted
    write_version(tmp_path, NAME, folder, GRADES, low_confidence_threshold=0.4)
    cfg = parse(tmp_path / NAME / "config.pbtxt")
    assert cfg.backend == "python" and cfg.version_policy.latest.num_versions == 2
    from adore.schema import ServingSpec

    # Dynamic batching on (queued requests merge), no idle-time delay unless promotion.serving asks.
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == \
        ServingSpec().max_queue_delay_microseconds == 0
    assert [i.name for i in cfg.input] == ["QUERY", "TITLE", "ATTRIBUTES"] and cfg.input[2].optional
    assert [o.name for o in cfg.output] == ["PROBS", "SCORE"] and list(cfg.output[0].dims) == [len(GRADES)]
    assert cfg.parameters["low_confidence_threshold"].string_value == "0.4"


def test_promotion_serving_sets_instances_and_batching_and_the_backend_shares_the_cpus(promoted, tmp_path, monkeypatch):
    from adore.schema import ServingSpec
    from adore.serving import backend
    from adore.serving.repository import Batching

    _, _, folder = promoted
    spec = ServingSpec(instances=2, max_queue_delay_microseconds=500, preferred_batch_sizes=[200, 100, 100])
    write_version(tmp_path, NAME, folder, GRADES, batching=Batching.of(spec))
    cfg = parse(tmp_path / NAME / "config.pbtxt")
    assert cfg.instance_group[0].count == 2 and cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(cfg.dynamic_batching.preferred_batch_size) == [100, 200]
    with pytest.raises(ValueError, match="1..256"):
        ServingSpec(preferred_batch_sizes=[300])
    # ONNX Runtime threads: the CPU limit shared by the instances, unless ADORE_ORT_THREADS says otherwise.
    monkeypatch.delenv("ADORE_ORT_THREADS", raising=False)
    monkeypatch.setattr(backend, "cpu_limit", lambda: 8)
    assert backend.ort_threads({"instance_group": [{"count": 2}]}) == 4
    assert backend.ort_threads({"instance_group": [{"count": 16}]}) == 1
    monkeypatch.setenv("ADORE_ORT_THREADS", "3")
    assert backend.ort_threads({"instance_group": [{"count": 2}]}) == 3


def test_served_sessions_spin_only_while_a_run_lasts_unless_told_and_refuse_anything_else(monkeypatch):
    from adore.serving import backend

    def spin(opts):
        return (opts.get_session_config_entry("session.intra_op.allow_spinning"),
                opts.get_session_config_entry("session.force_spinning_stop"))

    monkeypatch.delenv("ADORE_ORT_SPINNING", raising=False)
    opts = backend.session_options(2)
    assert spin(opts) == ("1", "1") and opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    monkeypatch.setenv("ADORE_ORT_SPINNING", "1")  # ONNX Runtime's own: spinning on after a run too
    assert spin(backend.session_options(None)) == ("1", "0")
    monkeypatch.setenv("ADORE_ORT_SPINNING", "0")
    assert spin(backend.session_options(None))[0] == "0"
    monkeypatch.setenv("ADORE_ORT_SPINNING", "no")
    with pytest.raises(ValueError, match="ADORE_ORT_SPINNING must be one of run, 1, 0, not 'no'"):
        backend.session_options(2)
    # A session opens and runs with the default options.
    monkeypatch.setenv("ADORE_ORT_SPINNING", "run")
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), backend.session_options(2), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.ones(1, np.float32)})[0].tolist() == [1.0]


def test_the_cpu_limit_is_read_from_the_cgroup_or_the_affinity():
    import os

    from adore.serving.backend import cpu_limit

    n = cpu_limit()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_ensemble_configs_parse_and_tensors_flow_through_the_steps(ensemble_repo):
    repo, folder = ensemble_repo
    configs = {m: parse(repo / m / "config.pbtxt") for m in model_names(NAME, "ensemble-onnx")}
    ens = configs[NAME]
    assert ens.platform == "ensemble" and ens.version_policy.specific.versions == [2]
    assert configs[f"{NAME}-encoder"].backend == "onnxruntime"
    assert configs[f"{NAME}-encoder"].instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert [i.name for i in configs[f"{NAME}-encoder"].input] == onnx_inputs(folder / "model.onnx")

    # Follow every tensor: each step input is an ensemble input or an earlier step's output, of the same type/shape.
    available = {i.name: (i.data_type, list(i.dims)) for i in ens.input}
    for step in ens.ensemble_scheduling.step:
        assert step.model_version == 2, "every step must name the ensemble's version"
        model = configs[step.model_name]
        inputs = {i.name: (i.data_type, list(i.dims)) for i in model.input}
        outputs = {o.name: (o.data_type, list(o.dims)) for o in model.output}
        assert set(step.input_map) == set(inputs), step.model_name
        for model_input, tensor in step.input_map.items():
            assert available[tensor] == inputs[model_input], (step.model_name, model_input)
        assert set(step.output_map) == set(outputs), step.model_name
        for model_output, tensor in step.output_map.items():
            available[tensor] = outputs[model_output]
    for out in ens.output:
        assert available[out.name] == (out.data_type, list(out.dims)), out.name

    # Files: tokenizer beside the preprocess step, the graph only in the encoder, golden rows with the ensemble.
    for v in (1, 2):
        assert {"model.py", "tokenizer.json", "adore_student.json"} <= {p.name for p in (repo / f"{NAME}-preprocess" / str(v)).iterdir()}
        assert [p.name for p in (repo / f"{NAME}-encoder" / str(v)).iterdir()] == ["model.onnx"]
        assert (repo / NAME / str(v) / "golden.json").is_file()
    # The TensorRT accelerator was asked for version 1's write only; the config is the latest write's.
    assert "tensorrt" not in (repo / f"{NAME}-encoder" / "config.pbtxt").read_text()


def test_ensemble_steps_compute_what_the_student_predicts(promoted, ensemble_repo):
    """preprocess (padded to max_length) -> the encoder's ONNX graph -> postprocess == Student.predict."""
    import onnxruntime as ort

    student, _, _ = promoted
    repo, _ = ensemble_repo
    queries, titles, attrs = (list(c) for c in zip(*ROWS))
    enc = Preprocessor(str(repo / f"{NAME}-preprocess" / "2")).encode(queries, titles, attrs, pad_to_max=True)
    max_length = parse(repo / f"{NAME}-encoder" / "config.pbtxt").input[0].dims[0]
    assert all(v.shape == (len(ROWS), max_length) for v in enc.values())
    sess = ort.InferenceSession(str(repo / f"{NAME}-encoder" / "2" / "model.onnx"), providers=["CPUExecutionProvider"])
    probs, score = probs_and_score(sess.run(None, enc)[0])
    want = student.predict(queries, titles, attrs)
    np.testing.assert_allclose(probs, want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(score.reshape(-1), want @ np.arange(len(GRADES)), atol=1e-4, rtol=0)


def test_pin_and_unpin_an_ensemble(ensemble_repo, tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(ensemble_repo[0], repo)
    pin_version(repo, NAME, 1)
    ens = parse(repo / NAME / "config.pbtxt")
    assert {s.model_version for s in ens.ensemble_scheduling.step} == {1} and ens.version_policy.specific.versions == [1]
    assert parse(repo / f"{NAME}-encoder" / "config.pbtxt").version_policy.specific.versions == [1]
    assert served_version(repo, NAME) == 1 and versions(repo, NAME) == [1, 2]
    pin_version(repo, NAME, None)
    assert {s.model_version for s in parse(repo / NAME / "config.pbtxt").ensemble_scheduling.step} == {2}
    assert parse(repo / f"{NAME}-encoder" / "config.pbtxt").version_policy.latest.num_versions == 2
    assert served_version(repo, NAME) == 2
    with pytest.raises(ValueError, match="version 7 of 'adore-student' is not in"):
        pin_version(repo, NAME, 7)


def test_templates_are_the_installed_package_and_the_override_wins(monkeypatch, tmp_path):
    """Editable or wheel, the templates come from the package (adore.serving.templates), never a path guessed
    from this file's place in the source tree; ADORE_TRITON_TEMPLATES still points elsewhere."""
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "triton_repo"
    monkeypatch.delenv(TEMPLATES_ENV, raising=False)
    installed = templates_root()
    def files(root: Path) -> list[str]:  # one flavour folder each; not the bytecode an import leaves
        return sorted(str(f.relative_to(root)) for f in root.glob("*/*") if f.is_file() and "__pycache__" not in f.parts)

    shipped = files(source)
    assert shipped and files(installed) == shipped
    for rel in shipped:
        assert (installed / rel).read_bytes() == (source / rel).read_bytes(), rel
    monkeypatch.setenv(TEMPLATES_ENV, str(tmp_path))
    assert templates_root() == tmp_path
    with pytest.raises(FileNotFoundError, match=TEMPLATES_ENV):
        write_version(tmp_path / "repo", NAME, tmp_path, GRADES)


def test_unknown_flavour_is_named(promoted, tmp_path):
    with pytest.raises(ValueError, match="promotion.flavour must be one of"):
        write_version(tmp_path, NAME, promoted[2], GRADES, flavour="tensorrt-llm")


def test_rollback_and_score_commands_without_a_server(promoted, tmp_path, capsys):
    import json

    from adore.cli import main

    repo = tmp_path / "repo"
    for _ in range(3):
        write_version(repo, NAME, promoted[2], GRADES)
    assert main(["rollback", "--repository", str(repo)]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2 and served_version(repo, NAME) == 2
    assert main(["rollback", "--repository", str(repo)]) == 0  # again: the one before 2
    assert served_version(repo, NAME) == 1 and versions(repo, NAME) == [1, 2, 3]
    assert parse(repo / NAME / "config.pbtxt").parameters["pinned_version"].string_value == "1"
    capsys.readouterr()
    assert main(["rollback", "--repository", str(repo)]) == 1
    assert "serves version 1, the oldest" in capsys.readouterr().err
    assert main(["rollback", "--repository", str(repo), "--unpin"]) == 0 and served_version(repo, NAME) == 3
    assert parse(repo / NAME / "config.pbtxt").parameters["pinned_version"].string_value == ""
    assert main(["score", "--url", "127.0.0.1:1", "--query", "q", "--title", "t", "--attributes", "[1]"]) == 2
    assert "--attributes: must be a JSON object" in capsys.readouterr().err
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"query": "q", "title": "t"}\n{"query": "only a query"}\n')
    assert main(["score", "--url", "127.0.0.1:1", "--input", str(bad)]) == 2
    assert "pairs.jsonl:2: each line needs" in capsys.readouterr().err


def test_rollback_to_in_the_spec_pins_without_promoting(promoted, tmp_path):
    """promotion.rollbackTo: the promote stage pins that version (no Triton URL: the repository only)."""
    import json

    import yaml

    from adore.schema import parse_round
    from adore.stages import promote
    from adore.stages.base import StageContext, StageError
    from conftest import EXAMPLES, TINY_ROUND

    repo = tmp_path / "repo"
    for _ in range(2):
        write_version(repo, NAME, promoted[2], GRADES)
    doc = yaml.safe_load(TINY_ROUND.format(rules=EXAMPLES / "rules" / "default.txt"))
    doc["spec"]["promotion"].update(repository=str(repo), rollbackTo=1)
    ctx = StageContext(parse_round(doc), tmp_path / "work", tmp_path / "out", "promote")
    ctx.out.mkdir()
    result = promote.run(ctx)  # no evaluate/distill outputs exist: a rollback must not need them
    assert result["version"] == 1 and result["rolledBackFrom"] == 2 and result["promoted"]
    assert json.loads((ctx.out / "promotion.json").read_text())["version"] == 1
    assert served_version(repo, NAME) == 1 and versions(repo, NAME) == [1, 2]
    doc["spec"]["promotion"]["rollbackTo"] = 5
    with pytest.raises(StageError, match=r"promotion.rollbackTo: version 5 of 'adore-student' is not in .* \[1, 2\]"):
        promote.run(StageContext(parse_round(doc), tmp_path / "work", tmp_path / "out", "promote"))
