"""The quality table's student rows: each ablation of the full student changes one setting, and only that."""
import importlib.util
from pathlib import Path

from adore.schema import DistillSpec

spec = importlib.util.spec_from_file_location("quality_table", Path(__file__).resolve().parents[1] / "benchmarks" / "quality_table.py")
qt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(qt)


def test_each_full_less_one_row_switches_off_exactly_one_addition_of_the_round():
    base = DistillSpec().model_dump(by_alias=True)
    assert qt.row_overrides("full") == {}
    changed = {}
    for row in qt.WITHOUT:
        over = qt.row_overrides(row)
        assert len(over) == 1, f"{row} changes {over}, not one setting"
        (key, value), = over.items()
        assert key in base and base[key] not in (0, 0.0, False), f"{row}: {key} is already off by default"
        assert value in (0, 0.0, False)
        changed[key] = row
    assert len(changed) == len(qt.WITHOUT)  # no two rows take out the same addition
    assert set(qt.WITHOUT) <= set(qt.ROWS)


def test_the_llm_share_rows_differ_only_in_their_label_source():
    over = {row: qt.row_overrides(row) for row in qt.ABLATION}
    sources = {o.pop("labelSource") for o in over.values()}
    assert sources == {"evidence", "teacher", "both"}
    assert len({tuple(sorted(o.items())) for o in over.values()}) == 1


def test_the_architecture_rows_change_only_the_architecture_of_full():
    base = DistillSpec().model_dump(by_alias=True)
    for row, want in (("full-cross-encoder", "cross-encoder"), ("full-auto", "auto")):
        assert qt.row_overrides(row) == {"architecture": want} and base["architecture"] != want
        assert row in qt.ROWS


def test_the_interpolation_row_changes_only_the_interpolation_of_full_and_includes_the_trained_student():
    base = DistillSpec().model_dump(by_alias=True)
    over = qt.row_overrides("full-interpolated")
    assert list(over) == ["interpolation"] and base["interpolation"] == [1.0]
    assert 1.0 in over["interpolation"] and len(over["interpolation"]) > 1  # a choice that can keep full as it is
    assert DistillSpec(interpolation=over["interpolation"]).interpolation == over["interpolation"]
    assert "full-interpolated" in qt.ROWS
    assert qt.row_overrides("full-not-interpolated") == {"interpolation": [1.0]}  # the trained student, unblended
    assert "full-not-interpolated" in qt.ROWS


def test_the_compressed_row_adds_only_a_second_distillation_to_full_and_reads_the_shallow_student():
    base = DistillSpec().model_dump(by_alias=True)
    over = qt.row_overrides("full-compressed")
    assert list(over) == ["compress"] and base["compress"] is None
    spec = DistillSpec.model_validate({**base, **over})
    assert 0 < spec.compress.layers < 6  # MiniLM-L6: a shallower student than full's
    assert "full-compressed" in qt.ROWS and "full-compressed" in qt.COMPRESS_ROWS


def test_the_map_check_separates_a_seed_map_gone_wrong_from_a_weak_score():
    from types import SimpleNamespace

    import numpy as np

    rng = np.random.default_rng(0)
    grades = ["irrelevant", "partial", "exact"]
    dev_raw = rng.uniform(1, 3, 400)
    seed_raw = rng.uniform(1, 3, 32)
    d = SimpleNamespace(grades=grades, has_raw=True, seed="seed", dev="dev",
                        raw=lambda which: seed_raw if which == "seed" else dev_raw,
                        gold=lambda which: np.digitize(seed_raw if which == "seed" else dev_raw, [1.67, 2.33]))
    dev_score = 0.5 * dev_raw  # on dev the score is the raters' mean exactly
    seed_score = 0.5 * seed_raw + rng.normal(0, 0.5, 32)  # on the seed mostly noise: its map is far too shallow
    check = qt.read_same_way(d, seed_score, dev_score)["mapCheck"]
    assert check["devPearson"] > 0.999 and check["rmseDevFittedMap"] < 1e-6 and abs(check["devSlope"] - 2.0) < 1e-6
    assert check["seedPearson"] < 0.7 and check["seedSlope"] < 1.0
    cont = qt.read_same_way(d, seed_score, dev_score)["continuous"]
    assert np.sqrt(np.mean((cont - dev_raw) ** 2)) > 0.2  # what the table's RMSE column reads: the seed's map


def test_a_distill_setting_names_its_row_and_a_wrong_one_is_refused_by_name():
    import pytest

    assert qt.distill_settings(["epochs=8", "learningRate=5e-5"]) == {"epochs": 8, "learningRate": 5e-5}
    assert qt.row_key("both-labels", {"epochs": 8}) == "both-labels [epochs=8]"
    assert qt.row_key("both-labels", {}) == "both-labels"
    with pytest.raises(SystemExit, match="epoch: not a distill setting"):
        qt.distill_settings(["epoch=8"])
    with pytest.raises(SystemExit, match="epochs=0"):
        qt.distill_settings(["epochs=0"])  # DistillSpec wants more than none
    with pytest.raises(SystemExit, match="give KEY=VALUE"):
        qt.distill_settings(["epochs"])
    qt.check_distill_for_row("both-labels", {"epochs": 8})  # a knob the row leaves alone
    with pytest.raises(ValueError, match=r"--distill labelSource: --row evidence-labels sets it itself \(labelSource=\"evidence\"\)"):
        qt.check_distill_for_row("evidence-labels", {"epochs": 8, "labelSource": "both"})
    with pytest.raises(ValueError, match="--row bm25 trains none"):
        qt.check_distill_for_row("bm25", {"epochs": 8})
    rows = {"full [epochs=8]": {}, "bm25": {}, "full": {}, "both-labels [temperature=0.5]": {}, "both-labels": {}}
    assert qt.ordered(rows) == ["bm25", "both-labels", "both-labels [temperature=0.5]", "full", "full [epochs=8]"]
