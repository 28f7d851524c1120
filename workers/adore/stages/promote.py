"""promote: gate the student, export it to ONNX and add it to the Triton repository.

Only a student that passes every gate is exported. The version folder is
written atomically; earlier versions stay, so rolling back is one step.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..atomic import atomic_write_json
from ..student.export import export_onnx, parity
from ..student.model import Student
from ..triton import write_version
from . import common
from .base import StageContext, StageError


def repository(ctx: StageContext) -> Path:
    repo = Path(ctx.spec.promotion.repository)
    return repo if repo.is_absolute() else ctx.workdir / repo


def check_gates(report: dict, gates, k: int) -> list[str]:
    s, b = report["student"], report["bm25"]
    failed = []
    if s["macroF1"] < gates.min_macro_f1:
        failed.append(f"macro-F1 {s['macroF1']:.4f} < minMacroF1 {gates.min_macro_f1}")
    nd, bnd = s.get(f"ndcg@{k}"), b.get(f"ndcg@{k}")
    if gates.min_ndcg > 0 and (nd is None or nd < gates.min_ndcg):
        failed.append(f"NDCG@{k} {nd} < minNdcg {gates.min_ndcg}")
    if gates.must_beat_bm25 and nd is not None and bnd is not None and nd < bnd:
        failed.append(f"NDCG@{k} {nd:.4f} is below BM25's {bnd:.4f}")
    return failed


def run(ctx: StageContext) -> dict:
    promo = ctx.spec.promotion
    report = json.loads(ctx.input("evaluate", "report.json").read_text())
    failed = check_gates(report, promo.gates, ctx.spec.stages.evaluate.ndcg_k)
    if failed:
        result = {"promoted": False, "reasons": failed}
        atomic_write_json(ctx.out / "promotion.json", result)
        return result
    student = Student.load(ctx.input("distill", "student"))
    items = common.catalogue(ctx)
    dev = common.pairs(ctx, "dev")[:64]
    sample = ([p.query for p in dev], [items[p.item_id].title for p in dev], [items[p.item_id].attributes for p in dev])
    with tempfile.TemporaryDirectory(dir=ctx.out) as tmp:
        version_files = Path(tmp) / "version"
        version_files.mkdir()
        export_onnx(student, version_files / "model.onnx", tuple(x[:2] for x in sample))
        diff = parity(version_files / "model.onnx", student, *sample)
        if diff > promo.onnx_tolerance:
            raise StageError(f"promote: ONNX and PyTorch disagree by {diff:.2e} > onnxTolerance {promo.onnx_tolerance}")
        student.tokenizer.save_pretrained(version_files)
        (version_files / "adore_student.json").write_text(json.dumps(student.meta.__dict__))
        probs = student.predict(*[x[:8] for x in sample])
        atomic_write_json(version_files / "golden.json", [
            {"query": q, "title": t, "attributes": a, "probs": pr.tolist()}
            for q, t, a, pr in zip(*[x[:8] for x in sample], probs)])
        version = write_version(repository(ctx), promo.model_name, version_files, ctx.spec.grades)
    result = {"promoted": True, "version": version, "repository": str(repository(ctx)),
              "model": promo.model_name, "onnxMaxAbsDiff": diff}
    atomic_write_json(ctx.out / "promotion.json", result)
    return result
