"""promote: gate the student, export it to ONNX and add it to the Triton repository.

Only a student that passes every gate is exported. The version folder is
written atomically; earlier versions stay, so rolling back is one step.
With promotion.tritonUrl the stage also has Triton load the version and
checks the golden rows it serves (adore.serving.rollout); a version that
fails is removed again and the stage fails with the reason. With
promotion.rollbackTo it writes nothing and pins that version instead.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_json
from ..serving.repository import Batching, versions, write_version
from ..serving.rollout import PromotionFailed, rollback, serve_version
from ..serving.request_log import SETTINGS_FILE as LOG_SETTINGS
from ..serving.version import prepare_version
from ..student.model import Student
from . import common
from .inherit import request_log_dir
from .base import StageContext, StageError, hash_file


def repository(ctx: StageContext) -> Path:
    repo = Path(ctx.spec.promotion.repository)
    return repo if repo.is_absolute() else ctx.workdir / repo


def check_gates(report: dict, gates, k: int) -> list[str]:
    s, b = report["student"], report["bm25"]
    failed = []
    if s["macroF1"] < gates.min_macro_f1:
        failed.append(f"macro-F1 {s['macroF1']:.4f} < minMacroF1 {gates.min_macro_f1}")
    nd = s.get(f"ndcg@{k}")
    if gates.min_ndcg > 0 and (nd is None or nd < gates.min_ndcg):
        failed.append(f"NDCG@{k} {nd} < minNdcg {gates.min_ndcg}")
    if gates.must_beat_bm25:
        for key, label in (("macroF1", "macro-F1"), ("auc", "AUC"), (f"ndcg@{k}", f"NDCG@{k}")):
            mine, theirs = s.get(key), b.get(key)
            if mine is not None and theirs is not None and mine < theirs:
                failed.append(f"{label} {mine:.4f} is below BM25's {theirs:.4f}")
    return failed + previous_gate(report, gates, k)


PREVIOUS_GATE = "the previous student's"  # marks the mustBeatPrevious reasons (status reason RegressesPrevious)


def previous_gate(report: dict, gates, k: int) -> list[str]:
    """gates.mustBeatPrevious: no regression against the promoted previous student on this round's dev."""
    prev = report.get("previousStudent")
    if not gates.must_beat_previous or not prev or not prev.get("promotedVersion"):
        return []
    s, failed = report["student"], []
    for key, label in (("macroF1", "macro-F1"), (f"ndcg@{k}", f"NDCG@{k}")):
        mine, theirs = s.get(key), prev.get(key)
        if mine is not None and theirs is not None and mine < theirs - gates.previous_tolerance:
            failed.append(f"{label} {mine:.4f} is below {PREVIOUS_GATE} {theirs:.4f} (round {prev.get('round')}, "
                          f"version {prev['promotedVersion']}, previousTolerance {gates.previous_tolerance})")
    return failed


def run(ctx: StageContext) -> dict:
    promo = ctx.spec.promotion
    if promo.rollback_to is not None:
        return pin(ctx)
    report = json.loads(ctx.input("evaluate", "report.json").read_text())
    failed = check_gates(report, promo.gates, ctx.spec.stages.evaluate.ndcg_k)
    if failed:
        result = {"promoted": False, "reasons": failed,
                  "regressesPrevious": any(PREVIOUS_GATE in r for r in failed)}
        atomic_write_json(ctx.out / "promotion.json", result)
        return result
    items = common.catalogue(ctx)
    dev = common.pairs(ctx, "dev")
    student_dir, student, shipped = shipped_student(ctx, report, dev, items)
    sample = common.columns(dev[:64], items)
    repo, name = repository(ctx), promo.model_name
    source = {"round": ctx.round.metadata.name, "studentSha256": _sha256(student_dir / "model.safetensors"),
              "quantize": promo.quantize}
    version = already_promoted(repo, name, source)
    diff, quantization = None, {"method": promo.quantize}
    version_is_new, split = version is None, None
    if version is None:
        with tempfile.TemporaryDirectory(dir=ctx.out) as tmp:
            folder = Path(tmp) / "version"
            # int8 swaps the full graph for its quantisation, which is then what serves: no split.
            diff = prepare_version(student, folder, sample, split=promo.quantize != "int8")
            if diff > promo.onnx_tolerance:
                raise StageError(f"promote: ONNX and PyTorch disagree by {diff:.2e} > onnxTolerance {promo.onnx_tolerance}")
            if promo.quantize == "int8":
                quantization = ship_int8(ctx, student, folder, sample, common.columns(dev, items), common.gold(dev, ctx.spec.grades))
            split = item_table(folder, items) if promo.serving.item_table else None
            atomic_write_json(folder / SOURCE, source)
            if promo.request_log:
                atomic_write_json(folder / LOG_SETTINGS, log_settings(ctx))
            version = write_version(repo, name, folder, ctx.spec.grades, flavour=promo.flavour,
                                    low_confidence_threshold=promo.low_confidence_threshold,
                                    tensorrt=promo.tensorrt, batching=Batching.of(promo.serving))
    result = {"promoted": True, "version": version, "repository": str(repo), "model": name, "onnxMaxAbsDiff": diff,
              "flavour": promo.flavour, "quantization": quantization, **({"shipped": shipped} if shipped else {})}
    if version_is_new:
        result["servingSplit"] = split
    if promo.triton_url:
        try:
            result.update(serve_version(promo.triton_url, repo, name, version, promo.serving_tolerance))
        except PromotionFailed as e:
            raise StageError(f"promote: {e}") from e
    atomic_write_json(ctx.out / "promotion.json", result)
    return result


def shipped_student(ctx: StageContext, report: dict, dev, items: dict) -> tuple[Path, Student, dict | None]:
    """The student promote ships (its folder, loaded), and why: distill.compress's shallower student when distill wrote one
    and it passes the gates and keeps dev macro-F1 within compressedMaxF1Drop of the first student's (as
    evaluate scored that one, each read through its own grade decoding); otherwise the first."""
    from .distill import COMPRESSED
    from .evaluate_extras import score_student

    first, shallow = ctx.input("distill", "student"), ctx.input("distill", COMPRESSED)
    if not shallow.is_dir():
        return first, Student.load(first), None
    grades, k = ctx.spec.grades, ctx.spec.stages.evaluate.ndcg_k
    student = Student.load(shallow)  # on the CPU, as promote exports it
    raw = [p.score for p in dev]
    raw_gold = np.array(raw) if dev and all(r is not None for r in raw) else None
    _, _, mine = score_student(student, dev, items, common.gold(dev, grades), grades, k, raw_gold)
    failed = check_gates({**report, "student": mine}, ctx.spec.promotion.gates, k)
    choice, reason = choose_shipped(report["student"]["macroF1"], mine["macroF1"], failed,
                                    ctx.spec.promotion.compressed_max_f1_drop)
    cols = ("macroF1", "auc", f"ndcg@{k}")
    shipped = (shallow, student) if choice == COMPRESSED else (first, Student.load(first))
    return *shipped, {
        "student": choice, "reason": reason, "layers": student.model.config.num_hidden_layers,
        "dev": {"first": {c: report["student"].get(c) for c in cols}, COMPRESSED: {c: mine.get(c) for c in cols}}}


def choose_shipped(first_f1: float, compressed_f1: float, gate_failures: list[str], max_drop: float) -> tuple[str, str]:
    """"compressed" or "first", and why: the shallower student ships only if it passes every gate and loses
    at most max_drop of dev macro-F1 against the first (promotion.compressedMaxF1Drop)."""
    if gate_failures:
        return "first", "the compressed student fails the gates: " + "; ".join(gate_failures)
    drop = first_f1 - compressed_f1
    if drop > max_drop:
        return "first", (f"the compressed student's dev macro-F1 {compressed_f1:.4f} is {drop:.4f} below the first's "
                         f"{first_f1:.4f} (more than compressedMaxF1Drop {max_drop:g})")
    return "compressed", (f"dev macro-F1 {compressed_f1:.4f} against the first's {first_f1:.4f}: "
                          f"within compressedMaxF1Drop {max_drop:g}, and every gate passed")


def item_table(folder: Path, items: dict) -> dict | None:
    """A bi-encoder version serves from its split: embed the round's catalogue once, here, so a request
    embeds its query and only the items the catalogue lacks (adore.serving.bi_encoder)."""
    from ..serving.bi_encoder import is_split, write_item_table

    if not is_split(folder):
        return None
    ids = sorted(items)
    return {"itemTable": write_item_table(folder, [items[i].title for i in ids], [items[i].attributes for i in ids])}


def log_settings(ctx: StageContext) -> dict:
    """What the served version's model reads at load (serving.request_log.LogSettings)."""
    rl, promo = ctx.spec.promotion.request_log, ctx.spec.promotion
    return {"path": rl.serving_path or str(request_log_dir(ctx.spec, ctx.workdir)), "sample_rate": rl.sample_rate,
            "max_file_bytes": rl.max_file_bytes, "max_files": rl.max_files, "threshold": promo.low_confidence_threshold}


def ship_int8(ctx: StageContext, student: Student, folder: Path, sample, dev_cols, dev_gold) -> dict:
    """Swap the version's fp32 model.onnx for its int8 quantisation, after two checks: parity with
    PyTorch on the sample, and dev macro-F1 (graded as the student grades) within int8MaxF1Drop of
    fp32's. golden.json then holds the int8 probabilities, since those are what Triton will serve."""
    from ..metrics import macro_f1
    from ..student.export import onnx_probs, parity, quantize_int8

    promo, grades = ctx.spec.promotion, ctx.spec.grades
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    quantize_int8(fp32, int8)
    diff = parity(int8, student, *sample)
    if diff > promo.int8_tolerance:
        raise StageError(f"promote: the int8 model differs from PyTorch by {diff:.3f} > int8Tolerance {promo.int8_tolerance}")
    f1 = {key: macro_f1(dev_gold, student.grade(onnx_probs(path, student, *dev_cols)), len(grades))
          for key, path in (("fp32", fp32), ("int8", int8))}
    if f1["fp32"] - f1["int8"] > promo.int8_max_f1_drop:
        raise StageError(f"promote: int8 drops dev macro-F1 from {f1['fp32']} to {f1['int8']} "
                         f"(more than int8MaxF1Drop {promo.int8_max_f1_drop})")
    golden = json.loads((folder / "golden.json").read_text())
    served = onnx_probs(int8, student, [g["query"] for g in golden], [g["title"] for g in golden],
                        [g["attributes"] for g in golden])
    atomic_write_json(folder / "golden.json", [{**g, "probs": p.tolist()} for g, p in zip(golden, served)])
    mib = {k: round(p.stat().st_size / 2**20, 1) for k, p in (("fp32", fp32), ("int8", int8))}
    int8.replace(fp32)
    return {"method": "int8", "maxAbsDiff": round(diff, 5), "devMacroF1": f1, "devPairs": len(dev_gold), "modelMiB": mib}


def pin(ctx: StageContext) -> dict:
    """promotion.rollbackTo: serve that existing version (and load it when Triton is named)."""
    promo = ctx.spec.promotion
    repo, name = repository(ctx), promo.model_name
    if promo.rollback_to not in versions(repo, name):
        raise StageError(f"promotion.rollbackTo: version {promo.rollback_to} of {name!r} is not in {repo} "
                         f"(it has {versions(repo, name)})")
    try:
        done = rollback(repo, name, promo.rollback_to, promo.triton_url, promo.serving_tolerance)
    except PromotionFailed as e:
        raise StageError(f"promote: {e}") from e
    result = {"promoted": True, "version": done["version"], "rolledBackFrom": done["previousVersion"],
              "repository": str(repo), "model": name}
    atomic_write_json(ctx.out / "promotion.json", result)
    return result


SOURCE = "source.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    hash_file(h, path)
    return h.hexdigest()


def already_promoted(repo: Path, name: str, source: dict) -> int | None:
    """The latest version if it holds this very student (a rerun after a kill mid-promote)."""
    existing = versions(repo, name)
    if existing:
        f = Path(repo) / name / str(existing[-1]) / SOURCE
        if f.is_file() and json.loads(f.read_text()) == source:
            return existing[-1]
    return None
