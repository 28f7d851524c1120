"""A stage's fingerprint covers what it reads and nothing else: a knob only a later stage reads reruns that
stage and those after it, not the ones before (dataset.poolSelection is annotate's, not prepare's)."""
import json
from pathlib import Path

import pytest
import yaml

from adore.schema import parse_round
from adore.stages import BY_NAME, STAGES
from adore.stages.base import COMPLETE, _spec_slice, fingerprint, stage_dir

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "default-round.yaml"


def _round(**dataset):
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["dataset"].update(dataset)
    return parse_round(doc, "test", base_dir=EXAMPLE.parent, check_paths=False)


def _prints(r, wd: Path) -> dict:
    """Each stage's fingerprint up to synthesize, each built on the one before it as a run would leave them."""
    out = {}
    for name in ("prepare", "sft", "align", "annotate", "synthesize"):
        out[name] = fingerprint(BY_NAME[name], r, wd)
        d = stage_dir(wd, name)
        d.mkdir(parents=True, exist_ok=True)
        (d / COMPLETE).write_text(json.dumps({"fingerprint": out[name]}))
    return out


def test_switching_pool_selection_reruns_annotate_and_after_but_keeps_prepare_sft_and_align(tmp_path):
    random = _prints(_round(poolSelection="random"), tmp_path / "a")
    uncertain = _prints(_round(poolSelection="uncertain"), tmp_path / "b")
    assert [n for n in random if random[n] == uncertain[n]] == ["prepare", "sft", "align"]
    resized = _prints(_round(poolSize=301), tmp_path / "c")  # a knob prepare does read still reruns it all
    assert all(resized[n] != random[n] for n in random)


def test_an_unread_field_at_its_default_hashes_as_before_it_was_marked_unread():
    # Workdirs made before prepare stopped reading dataset.poolSelection (at its default) stay current.
    r = _round()
    assert r.spec.dataset.pool_selection == "random"
    assert _spec_slice(r, "dataset", BY_NAME["prepare"].unread) == _spec_slice(r, "dataset")
    assert _spec_slice(_round(poolSelection="uncertain"), "dataset", BY_NAME["prepare"].unread) == _spec_slice(r, "dataset")


@pytest.mark.parametrize("stage", [s for s in STAGES if s.unread], ids=lambda s: s.name)
def test_every_unread_field_exists_and_is_read_by_a_later_stage(stage):
    r = _round()
    later = STAGES[STAGES.index(stage) + 1:]
    for path in stage.unread:
        prefix = path.rpartition(".")[0]
        assert prefix in stage.spec_paths, f"{stage.name}: {path} is not under its spec paths"
        _spec_slice(r, prefix, (path,))  # KeyError on a field the schema does not have
        assert any(path in s.spec_paths for s in later), f"{path}: no later stage fingerprints it"
