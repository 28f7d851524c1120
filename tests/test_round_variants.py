"""benchmarks/round_variants.py: a variant is the round with exactly the named spec changes and the seed."""
import importlib.util
from pathlib import Path

import pytest
import yaml

from adore.schema import parse_round

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("round_variants", ROOT / "benchmarks" / "round_variants.py")
rv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rv)
EXAMPLE = ROOT / "examples" / "default-round.yaml"


def test_a_variant_changes_the_named_fields_and_the_seed_and_nothing_else():
    name, changes = rv.parse_variant("mix:stages.distill.interpolation=[0.0, 0.5, 1.0];dataset.poolSelection=uncertain")
    assert name == "mix" and changes == {"stages.distill.interpolation": [0.0, 0.5, 1.0], "dataset.poolSelection": "uncertain"}
    doc = yaml.safe_load(EXAMPLE.read_text())
    before = yaml.safe_dump(doc)
    out = rv.variant_doc(doc, changes, seed=2)
    assert yaml.safe_dump(doc) == before  # the round itself is untouched
    r, base = parse_round(out, check_paths=False), parse_round(doc, check_paths=False)
    assert r.spec.stages.distill.interpolation == [0.0, 0.5, 1.0] and r.spec.dataset.pool_selection == "uncertain"
    assert r.spec.stages.distill.seed == 2
    undo = r.model_copy(deep=True)
    undo.spec.stages.distill.interpolation = base.spec.stages.distill.interpolation
    undo.spec.stages.distill.seed = base.spec.stages.distill.seed
    undo.spec.dataset.pool_selection = base.spec.dataset.pool_selection
    assert undo.model_dump() == base.model_dump()


@pytest.mark.parametrize("bad", ["nocolon", "name:", "name:path-without-value", ":a=1"])
def test_a_malformed_variant_is_refused_naming_it(bad):
    with pytest.raises(SystemExit, match="--variant"):
        rv.parse_variant(bad)


def test_the_table_gives_mean_and_range_per_arm_and_the_promoted_count():
    runs = [{"macroF1": 0.4, "auc": 0.8, "promoted": True}, {"macroF1": 0.5, "auc": 0.9, "promoted": False}]
    s = rv.summary(runs)
    assert s["macroF1"] == {"mean": 0.45, "min": 0.4, "max": 0.5} and s["promoted"] == 1 and "qwk" not in s
    assert "| base | 0.450 (0.400-0.500) | 0.850 (0.800-0.900) | 1/2 |" in rv.table({"base": s})
