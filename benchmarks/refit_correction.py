"""Re-fit annotate's seed correction over judgments the teacher has already made.

    python benchmarks/refit_correction.py SRC_WORKDIR DST_WORKDIR [--evidence-pool N]

Copies prepare, sft, align and annotate from SRC to DST (DST must not exist),
puts every annotation back to the teacher's own verdict (teacher_grade /
teacher_probs), and runs annotate's correction with the annotate settings of
this version of adore (the aligned teacher judges the 32 seed pairs again;
the pool is not relabelled: that is hours at ~1 pair/s). The copied stages
are marked current for this version, so the quality table's student rows
then run on DST without redoing them.

prepare is run again (it takes a second) and its outputs must equal SRC's,
so the teacher's judgments belong to the same pool; with --evidence-pool N
(dataset.evidencePoolSize) the new run also gives the evidence pool. Use it
only when the teacher is the same as in SRC (what changed is annotate's
correction, or the schema gained a field): sft and align are not checked.
"""
from __future__ import annotations

import json
import os
from collections import Counter
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(src: Path, dst: Path, evidence_pool: int = 0) -> int:
    from adore.data.contract import write_jsonl
    from adore.schema import load_round
    from adore.stages import BY_NAME, annotate
    from adore.stages.base import COMPLETE, StageContext, execute, fingerprint

    if dst.exists():
        sys.exit(f"{dst} exists: give a new folder")
    for name in ("prepare", "sft", "align", "annotate"):
        if not (src / "stages" / name / COMPLETE).is_file():
            sys.exit(f"{src / 'stages' / name} is not a completed stage")
    dst.mkdir(parents=True)
    shutil.copy(src / "round.yaml", dst / "round.yaml")
    for name in ("prepare", "sft", "align", "annotate"):
        shutil.copytree(src / "stages" / name, dst / "stages" / name)
    if evidence_pool:
        import yaml

        doc = yaml.safe_load((dst / "round.yaml").read_text())
        doc["spec"]["dataset"]["evidencePoolSize"] = evidence_pool
        (dst / "round.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    round_ = load_round(dst / "round.yaml", check_paths=False)
    fresh = dst / "prepare-check"
    execute(BY_NAME["prepare"], round_, fresh)
    for f in ("catalogue.jsonl", "seed.jsonl", "train_labels.jsonl", "pool.jsonl", "dev.jsonl"):
        if (fresh / "stages" / "prepare" / f).read_bytes() != (dst / "stages" / "prepare" / f).read_bytes():
            sys.exit(f"prepare now writes another {f} than {src} holds: the teacher's judgments do not fit; run the stages")
    shutil.rmtree(dst / "stages" / "prepare")
    shutil.move(fresh / "stages" / "prepare", dst / "stages" / "prepare")
    shutil.rmtree(fresh)

    def mark_current(name: str, metrics: dict | None = None) -> None:
        f = dst / "stages" / name / COMPLETE
        done = json.loads(f.read_text())
        done["fingerprint"] = fingerprint(BY_NAME[name], round_, dst)
        if metrics is not None:
            done["metrics"] = metrics
        f.write_text(json.dumps(done))

    for name in ("sft", "align"):
        mark_current(name)
    out = dst / "stages" / "annotate"
    records = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    for rec in records:
        if "teacher_probs" in rec:
            rec["grade"], rec["probs"] = rec.pop("teacher_grade"), rec.pop("teacher_probs")
        rec.pop("rule_features", None)
        rec.pop("labels", None)
    correction = annotate.correct_on_seed(StageContext(round_, dst, out, "annotate"), records)
    write_jsonl(out / "annotations.jsonl", records)
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("gradeOffsets", "ruleWeights", "evidenceWeights", "seedAccuracyBefore", "seedAccuracyAfter",
                "seedNllBefore", "seedNllAfter", "signalWeights", "teacherWeight", "llmShare", "correction", "direct"):
        metrics.pop(key, None)
    metrics.update(correction)
    metrics["grades"] = dict(Counter(r["grade"] for r in records if r["grade"] is not None))
    metrics["correctionRefitFrom"] = str(src)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    mark_current("annotate", metrics)
    print(json.dumps(correction, indent=1))
    return 0


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--evidence-pool", type=int, default=0)
    a = ap.parse_args()
    sys.exit(main(a.src, a.dst, a.evidence_pool))
