"""Putting a written version in front of clients, checked, and taking it back.

    serve_version(url, repo, name, version, tolerance)   # load, golden check, or remove + reload
    rollback(repo, name, to=None, url=None)               # pin the previous (or a given) version

Triton must serve REPO (the same folder, e.g. a shared volume) with
--model-control-mode=explicit. A load of NAME picks up the version folders
on disk: with the latest-two policy the new version comes up next to the one
being served, and requests that name no version move to it once it is ready.
"Unloading" a bad version therefore means removing its folder and loading
NAME again, which drops that version and leaves the older ones serving;
unloading NAME itself would stop them too.

Triton is driven through control.TritonControl; whatever fails on the way
(Triton's TritonError, the files, the golden check) ends as PromotionFailed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import AdoreError
from .client import score
from .control import TritonControl
from .repository import all_model_names, pin_version, remove_version, served_version, step_model, versions


class PromotionFailed(AdoreError, RuntimeError):
    """A version could not be served as checked; it has been removed again."""


def golden_diff(url: str, repo: Path, name: str, version: int) -> float:
    """Max abs difference between what Triton serves for VERSION's golden rows and what promote stored."""
    golden = json.loads((Path(repo) / name / str(version) / "golden.json").read_text())
    probs, _ = score(url, name, [g["query"] for g in golden], [g["title"] for g in golden],
                     [g["attributes"] for g in golden], protocol="http", version=version)
    want = np.array([g["probs"] for g in golden], dtype=np.float32)
    if probs.shape != want.shape:
        raise PromotionFailed(f"Triton returned probabilities shaped {probs.shape} for golden rows shaped {want.shape}")
    return float(np.abs(probs - want).max())


def preflight(repo: Path, name: str, version: int, tolerance: float) -> float:
    """Check the files as written, in this process, before Triton sees them; return the golden max abs diff.

    Compiles the version's model.py files and runs its golden rows through
    the same tokeniser code and ONNX graph Triton would (and, for a bi-encoder's
    split, through the embedder and item table python-onnx serves from). A version that fails
    here never reaches Triton: a failed load inside a serving Triton is not
    harmless (see withdraw()).
    """
    import onnxruntime as ort

    from . import bi_encoder
    from .backend import Preprocessor, probs_and_score

    repo = Path(repo)
    own = repo / name / str(version)
    steps = {s: repo / step_model(name, s) / str(version) for s in ("preprocess", "encoder")}
    text_dir = steps["preprocess"] if steps["preprocess"].is_dir() else own
    graph = (steps["encoder"] if steps["encoder"].is_dir() else own) / "model.onnx"
    # This student's models only (a glob on NAME* would also take a student called NAME-v2);
    # the encoder and the ensemble have no model.py.
    for py in (repo / m / str(version) / "model.py" for m in all_model_names(name)):
        if py.is_file():
            compile(py.read_text(), str(py), "exec")
    golden = json.loads((own / "golden.json").read_text())
    enc = Preprocessor(str(text_dir)).encode([g["query"] for g in golden], [g["title"] for g in golden],
                                             [g["attributes"] for g in golden])
    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    probs, _ = probs_and_score(sess.run(None, {k: v for k, v in enc.items() if k in names})[0])
    want = np.array([g["probs"] for g in golden], dtype=np.float32)
    diff = float(np.abs(probs - want).max())
    if bi_encoder.is_split(own):  # what python-onnx's model.py serves then: the split, item table included
        rows = ([g["query"] for g in golden], [g["title"] for g in golden], [g["attributes"] for g in golden])
        split, _ = probs_and_score(bi_encoder.BiEncoderScorer(own).logits(*rows))
        diff = max(diff, float(np.abs(split - want).max()))
    if not diff <= tolerance:
        raise PromotionFailed(f"the written files give golden probabilities {diff:.2e} away from the student's "
                              f"(> servingTolerance {tolerance})")
    return diff


def serve_version(url: str, repo: Path, name: str, version: int, tolerance: float) -> dict:
    """Check VERSION of NAME in-process, load it and check its golden rows as served.

    On any failure the version is removed and the versions served before keep serving.
    """
    ctl = TritonControl(url)
    t0 = time.monotonic()
    loaded = False
    try:
        preflight(repo, name, version, tolerance)
        ctl.load(name)
        loaded = True
        if not ctl.ready(name, version):
            raise PromotionFailed(f"Triton loaded {name!r} but version {version} is not ready")
        diff = golden_diff(url, repo, name, version)
        if not diff <= tolerance:
            raise PromotionFailed(f"served golden probabilities differ from the student's by {diff:.2e} "
                                  f"> servingTolerance {tolerance}")
    except Exception as e:  # noqa: BLE001 - any failure (Triton, network, files) must end in the cleanup below
        reason = " ".join(str(e).split()).rstrip("; ")  # Triton's tracebacks, on one line for the stage message
        raise PromotionFailed(f"version {version} of {name!r} was not promoted: {reason}; "
                              + withdraw(ctl, repo, name, version, loaded)) from e
    return {"loadedVersion": version, "servedMaxAbsDiff": diff, "loadSeconds": round(time.monotonic() - t0, 2)}


def withdraw(ctl: TritonControl, repo: Path, name: str, version: int, loaded: bool) -> str:
    """Remove VERSION from disk and, when Triton had loaded it, from Triton; say what is served afterwards.

    A load that fails leaves Triton serving the model it had before, so there
    is nothing to unload. Do not reload then: with tritonserver 2.51 (python
    backend) the first load after a failed one, while requests were in
    flight, killed the server (SIGSEGV; see docs/serving.md). That is why
    preflight() stops bad files before Triton ever loads them.
    """
    remove_version(repo, name, version)
    left = versions(repo, name)
    try:
        if not loaded:
            served = [v for v in left[-2:] if ctl.ready(name, v)]
            return f"it was removed; Triton kept serving version(s) {served} of {name!r}"
        if left:
            ctl.load(name)  # drops the removed version; the older ones keep serving meanwhile
            return f"it was removed and {name!r} serves version(s) {[v for v in left[-2:] if ctl.ready(name, v)]}"
        ctl.unload(name)
        return f"it was removed and {name!r} has no other version to serve"
    except Exception as e:  # noqa: BLE001
        return f"it was removed from the repository, but Triton did not reload {name!r}: {e}"


def rollback(repo: Path, name: str, to: int | None = None, url: str | None = None,
             tolerance: float = 1e-3, from_version: int | None = None) -> dict:
    """Serve version TO (default: the one before the version served now) and only it.

    from_version: roll back only while that version is served (the operator's automatic rollback, whose
    Job may be retried): once something older is served, nothing changes and `alreadyRolledBack` says so."""
    repo = Path(repo)
    current = served_version(repo, name)
    if current is None:
        raise ValueError(f"no version of {name!r} in {repo}")
    if from_version is not None and current != from_version:
        if current < from_version:
            return {"version": current, "previousVersion": from_version, "alreadyRolledBack": True}
        raise ValueError(f"{name!r} serves version {current}, not {from_version}: a newer promotion; not rolled back")
    if to is None:
        older = [v for v in versions(repo, name) if v < current]
        if not older:
            raise ValueError(f"{name!r} serves version {current}, the oldest in {repo}: nothing to roll back to")
        to = older[-1]
    pin_version(repo, name, to)
    result = {"version": to, "previousVersion": current}
    if url:
        ctl = TritonControl(url)
        try:
            ctl.load(name)
            if not ctl.ready(name, to):
                raise PromotionFailed(f"version {to} is not ready after the load")
            result["servedMaxAbsDiff"] = golden_diff(url, repo, name, to)
        except Exception as e:  # noqa: BLE001
            pin_version(repo, name, current if current != versions(repo, name)[-1] else None)
            raise PromotionFailed(f"rollback of {name!r} to version {to} failed: {e}; the pin was undone, reload "
                                  f"{name!r} to serve version {current} again") from e
        if not result["servedMaxAbsDiff"] <= tolerance:
            raise PromotionFailed(f"version {to} serves golden probabilities {result['servedMaxAbsDiff']:.2e} away "
                                  f"from the stored ones (> {tolerance}); it stays pinned, check the repository")
    return result
