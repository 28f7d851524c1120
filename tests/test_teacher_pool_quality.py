"""benchmarks/teacher_pool_quality.py --student: how closely a saved student learnt the pool's labels."""
import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("teacher_pool_quality", ROOT / "benchmarks" / "teacher_pool_quality.py")
tpq = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tpq)


def test_a_student_fits_labels_it_made_itself_exactly_and_reversed_ones_not_at_all(tiny_run):
    from adore import hardware
    from adore.data.contract import read_catalogue
    from adore.student.model import Student

    grades = tpq.grades_of(tiny_run)
    ann = [a for a in map(json.loads, (tiny_run / "stages/annotate/annotations.jsonl").read_text().splitlines()) if a["grade"]]
    items = read_catalogue(tiny_run / "stages/prepare/catalogue.jsonl")
    student_dir = tiny_run / "stages/distill/student"
    own = Student.load(student_dir).to(hardware.choose(hardware.found())).predict(
        [a["query"] for a in ann], [items[a["item_id"]].title for a in ann], [items[a["item_id"]].attributes for a in ann])
    y = np.arange(len(ann)) % len(grades)  # the hidden grades are not what this test reads
    mine = [{**a, "probs": p.tolist()} for a, p in zip(ann, own)]
    assert "Spearman with the labels: both 1.000" in tpq.student_fit(student_dir, items, mine, y, len(grades))
    reversed_ = [{**a, "probs": p[::-1].tolist()} for a, p in zip(ann, own)]
    assert "Spearman with the labels: both -1.000" in tpq.student_fit(student_dir, items, reversed_, y, len(grades))
