import copy

import pytest
import yaml

from adore.crd import build_crd, render_crd
from adore.schema import RoundFileError, load_round, parse_round
from conftest import EXAMPLES, REPO, adore


def _doc():
    return yaml.safe_load((EXAMPLES / "default-round.yaml").read_text())


def test_examples_are_valid():
    for f in EXAMPLES.glob("*-round.yaml"):
        r = load_round(f, check_paths=False)
        assert r.kind == "AdoreRound"
    r = load_round(EXAMPLES / "default-round.yaml")
    assert r.spec.teacher.rules_file == "rules/default.txt"
    assert r.resolve(r.spec.teacher.rules_file).is_file()


def test_committed_crd_matches_schema():
    committed = (REPO / "crds" / "adoreround.yaml").read_text()
    assert committed == render_crd(), "crds/adoreround.yaml is stale: run `adore crd > crds/adoreround.yaml`"


def _walk(node, path="$"):
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, k, v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_crd_schema_is_structural():
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]][:4] == ["Phase", "Stage", "Quality", "Version"]
    schema = version["schema"]["openAPIV3Schema"]
    for path, key, value in _walk(schema):
        assert key not in ("$ref", "anyOf", "allOf", "oneOf", "$defs", "const"), f"{path}.{key}"
        if key in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(value, bool), path
        if key == "additionalProperties":
            assert value is not False, path
    spec = schema["properties"]["spec"]
    epochs = spec["properties"]["stages"]["properties"]["distill"]["properties"]["epochs"]
    assert epochs == {"default": 3, "minimum": 0, "exclusiveMinimum": True, "type": "integer"}
    assert "teacher" in spec["required"]


def test_three_mistakes_three_field_paths():
    doc = _doc()
    doc["spec"]["stages"]["distill"]["epochs"] = 0
    doc["spec"]["dataset"]["devFraction"] = 1.5
    doc["spec"]["dataset"]["source"] = "kaggle"
    with pytest.raises(RoundFileError) as e:
        parse_round(doc, check_paths=False)
    assert sorted(e.value.problems) == sorted([
        "spec.stages.distill.epochs: must be > 0",
        "spec.dataset.devFraction: must be < 1",
        "spec.dataset.source: must be one of 'bundled', 'homedepot', 'crowdflower', 'esci' or 'contract'",
    ])


def test_validate_cli_exit_2_lists_every_problem(tmp_path):
    doc = _doc()
    doc["spec"]["stages"]["distill"]["epochs"] = -1
    doc["spec"]["teacher"]["rulesFile"] = "no-such-rules.txt"
    doc["spec"]["stages"]["sft"]["learningRate"] = 0
    doc["spec"]["promotion"]["unknownKnob"] = 1
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(doc))
    res = adore("validate", f, check=False)
    assert res.returncode == 2
    for expected in ("spec.stages.distill.epochs: must be > 0", "spec.stages.sft.learningRate: must be > 0",
                     "spec.promotion.unknownKnob: unknown field"):
        assert expected in res.stderr
    assert not (tmp_path / "runs").exists()
    # File checks only run once the structure is valid; then the missing rules file is named.
    doc = _doc()
    doc["spec"]["teacher"]["rulesFile"] = "no-such-rules.txt"
    f.write_text(yaml.safe_dump(doc))
    res = adore("validate", f, check=False)
    assert res.returncode == 2 and "spec.teacher.rulesFile: file not found" in res.stderr


def test_run_refuses_invalid_round_without_starting(tmp_path):
    doc = _doc()
    doc["spec"]["grades"] = ["exact"]
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(doc))
    res = adore("run", f, "--workdir", tmp_path / "w", check=False)
    assert res.returncode == 2
    assert "spec.grades: needs at least 2 item(s)" in res.stderr
    assert not (tmp_path / "w").exists()


def test_click_model_must_match_grades():
    doc = _doc()
    doc["spec"]["grades"] = ["irrelevant", "somewhat", "mostly", "exact"]
    with pytest.raises(RoundFileError) as e:
        parse_round(copy.deepcopy(doc), check_paths=False)
    assert any(p.startswith("spec.stages.align.clickModel.clickProb: needs one value per grade (4)") for p in e.value.problems)


def test_not_a_mapping_and_bad_yaml(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("spec: [unclosed")
    with pytest.raises(RoundFileError, match="not valid YAML"):
        load_round(f)
    with pytest.raises(RoundFileError, match="must be a mapping"):
        parse_round(["a"])


def test_int8_with_tensorrt_is_refused_with_its_field():
    doc = _doc()
    doc["spec"]["promotion"].update({"quantize": "int8", "tensorrt": True, "flavour": "ensemble-onnx"})
    with pytest.raises(RoundFileError) as e:
        parse_round(copy.deepcopy(doc), check_paths=False)
    assert any("promotion.quantize: int8 cannot be combined with promotion.tensorrt" in p for p in e.value.problems), \
        e.value.problems
    doc["spec"]["promotion"]["tensorrt"] = False
    assert parse_round(doc, check_paths=False).spec.promotion.quantize == "int8"


def test_interpolation_weights_outside_zero_one_are_refused_with_their_field():
    doc = _doc()
    doc["spec"].setdefault("stages", {}).setdefault("distill", {})["interpolation"] = [0.5, 1.5]
    with pytest.raises(RoundFileError) as e:
        parse_round(copy.deepcopy(doc), check_paths=False)
    assert any(p.startswith("spec.stages.distill.interpolation: ") and "each in [0, 1]" in p for p in e.value.problems), \
        e.value.problems
    doc["spec"]["stages"]["distill"]["interpolation"] = [1.0, 0.5, 0.5]
    assert parse_round(doc, check_paths=False).spec.stages.distill.interpolation == [0.5, 1.0]


def test_a_second_student_no_shallower_than_the_first_is_refused_with_its_field():
    doc = _doc()
    doc["spec"].setdefault("stages", {}).setdefault("distill", {}).update({"layers": 4, "compress": {"layers": 4}})
    with pytest.raises(RoundFileError) as e:
        parse_round(copy.deepcopy(doc), check_paths=False)
    assert any("stages.distill.compress.layers: 4 is not fewer than distill.layers (4)" in p for p in e.value.problems), \
        e.value.problems
    doc["spec"]["stages"]["distill"]["compress"] = {"layers": 0}
    with pytest.raises(RoundFileError) as e:
        parse_round(copy.deepcopy(doc), check_paths=False)
    assert any(p.startswith("spec.stages.distill.compress.layers") for p in e.value.problems), e.value.problems
    doc["spec"]["stages"]["distill"]["compress"] = {"layers": 2}
    spec = parse_round(doc, check_paths=False).spec
    assert spec.stages.distill.compress.layers == 2 and spec.promotion.compressed_max_f1_drop == 0.01
