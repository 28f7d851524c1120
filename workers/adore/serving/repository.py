"""Writing student versions into a Triton model repository.

Two flavours from one writer (promotion.flavour):

- python-onnx: REPO/NAME/config.pbtxt and REPO/NAME/N/ (model.py that runs
  ONNX Runtime itself, model.onnx, the tokenizer, adore_student.json,
  golden.json). What the python-backend-only tritonserver here can serve.
- ensemble-onnx (GPU clusters): REPO/NAME-preprocess (python: text ->
  token ids), REPO/NAME-encoder (the standard onnxruntime backend, optionally
  with TensorRT), REPO/NAME-postprocess (python: PROBS, SCORE, metrics) and
  the ensemble REPO/NAME whose version N calls version N of every step.

Clients call NAME with raw text either way. Version folders are written
under a temporary name and renamed into place, so Triton never sees half a
version, and an existing version is never touched. version_policy keeps the
latest two versions loaded, so a new version is served next to the previous
one; `pin_version` (rollback) switches the policy to one specific version.

The templates are the top-level triton_repo/ folder, installed as the data
package adore.serving.templates (see templates_root).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..atomic import TMP_MARK, atomic_dir, atomic_write_text
from ..schema import ServingSpec
from ..student.text import EMBEDDER_JSON, EMBEDDER_ONNX, ITEM_TABLE
from .request_log import SETTINGS_FILE as LOG_SETTINGS  # the postprocess step writes the log

TEMPLATES_ENV = "ADORE_TRITON_TEMPLATES"  # optional: a templates folder other than the installed one
TEMPLATES_PACKAGE = "adore.serving.templates"  # pyproject.toml maps triton_repo/ to it
FLAVOURS = ("python-onnx", "ensemble-onnx")
LATEST_TWO = "{ latest { num_versions: 2 } }"
STEPS = ("preprocess", "encoder", "postprocess")  # ensemble-onnx step models: NAME-STEP
# Files of a prepared version folder that the ensemble's preprocess step does not get (encoder's, ensemble's).
# (The bi-encoder's serving split, too: the ensemble runs the full graph on its encoder step.)
NOT_PREPROCESS = {"model.onnx", "golden.json", "source.json", LOG_SETTINGS, EMBEDDER_ONNX, EMBEDDER_JSON, ITEM_TABLE}


def templates_root() -> Path:
    """The folder holding one template folder per flavour.

    Read through importlib.resources, not from a path next to this file: an
    editable install maps the package to the source tree's triton_repo/, a
    wheel carries its own copy, and both answer the same way.
    """
    override = os.environ.get(TEMPLATES_ENV)
    if override:
        return Path(override)
    try:
        return Path(str(resources.files(TEMPLATES_PACKAGE)))
    except ModuleNotFoundError:  # adore run from a source tree on PYTHONPATH, not installed
        raise FileNotFoundError(f"the Triton templates package {TEMPLATES_PACKAGE} is not installed: install the "
                                f"project (pip install .) or set {TEMPLATES_ENV} to its triton_repo/ folder") from None


def template_dir(flavour: str = "python-onnx") -> Path:
    if flavour not in FLAVOURS:
        raise ValueError(f"promotion.flavour must be one of {list(FLAVOURS)}, not {flavour!r}")
    d = templates_root() / flavour
    if not d.is_dir() or not any(d.glob("*.tmpl")):
        raise FileNotFoundError(f"Triton templates not found in {d} (set {TEMPLATES_ENV})")
    return d


def step_model(name: str, step: str) -> str:
    """The Triton model of one ensemble-onnx step (preprocess, encoder, postprocess) of student NAME."""
    return f"{name}-{step}"


def model_names(name: str, flavour: str) -> list[str]:
    """Every Triton model a student occupies; the last is the one clients call."""
    return [name] if flavour == "python-onnx" else [step_model(name, s) for s in STEPS] + [name]


def all_model_names(name: str) -> list[str]:
    """Every model a student of either flavour may occupy: what removal and pinning look for on disk."""
    return model_names(name, "ensemble-onnx")


def versions(repo: Path, name: str) -> list[int]:
    d = Path(repo) / name
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()) if d.is_dir() else []


def _policy(pin: int | None) -> str:
    return LATEST_TWO if pin is None else f"{{ specific {{ versions: [ {pin} ] }} }}"


def _tensor_lines(names: list[str], dims: str) -> str:
    return ",\n".join(f'  {{ name: "{n}", data_type: TYPE_INT64, dims: [ {dims} ] }}' for n in names)


@dataclass(frozen=True)
class Batching:
    """Instances and dynamic batching of the python-onnx model (promotion.serving)."""

    # promotion.serving's defaults, read from the schema so they live in one place.
    instances: int = ServingSpec.model_fields["instances"].default
    max_queue_delay_microseconds: int = ServingSpec.model_fields["max_queue_delay_microseconds"].default
    preferred_batch_sizes: tuple[int, ...] = ()  # the schema's default_factory: an empty list

    @classmethod
    def of(cls, serving) -> "Batching":
        return cls(serving.instances, serving.max_queue_delay_microseconds, tuple(serving.preferred_batch_sizes))

    def dynamic_batching(self) -> str:
        sizes = f" preferred_batch_size: [ {', '.join(map(str, self.preferred_batch_sizes))} ]" \
            if self.preferred_batch_sizes else ""
        return f"dynamic_batching {{ max_queue_delay_microseconds: {self.max_queue_delay_microseconds}{sizes} }}"


def render_config(name: str, grades: list[str], max_batch_size: int = 256, flavour: str = "python-onnx",
                  low_confidence_threshold: float = 0.5, pin: int | None = None,
                  batching: Batching = Batching()) -> str:
    """config.pbtxt of the python-onnx model."""
    tmpl = (template_dir(flavour) / "config.pbtxt.tmpl").read_text()
    return tmpl.format(name=name, grades=",".join(grades), n_grades=len(grades), max_batch_size=max_batch_size,
                       version_policy=_policy(pin), low_confidence_threshold=low_confidence_threshold,
                       pinned="" if pin is None else pin, dynamic_batching=batching.dynamic_batching(),
                       instances=batching.instances)


def render_ensemble(name: str, grades: list[str], version: int, encoder_inputs: list[str], max_length: int,
                    max_batch_size: int = 256, low_confidence_threshold: float = 0.5, tensorrt: bool = False,
                    pin: int | None = None) -> dict[str, str]:
    """{model name: config.pbtxt} of the ensemble-onnx flavour, with every step at `version`."""
    d = template_dir("ensemble-onnx")
    common = dict(name=name, grades=",".join(grades), n_grades=len(grades), max_batch_size=max_batch_size,
                  low_confidence_threshold=low_confidence_threshold, version=version)
    accelerator = ('optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt", '
                   'parameters { key: "precision_mode" value: "FP16" } } ] } }') if tensorrt else ""
    tensors = _tensor_lines(encoder_inputs, str(max_length))
    # Step models keep the latest two; the ensemble itself only ever needs the version it points at.
    return {
        step_model(name, "preprocess"): (d / "preprocess.pbtxt.tmpl").read_text().format(
            **common, tensors=tensors, version_policy=_policy(pin)),
        step_model(name, "encoder"): (d / "encoder.pbtxt.tmpl").read_text().format(
            **common, tensors=tensors, accelerator=accelerator, version_policy=_policy(pin)),
        step_model(name, "postprocess"): (d / "postprocess.pbtxt.tmpl").read_text().format(
            **common, version_policy=_policy(pin)),
        name: (d / "ensemble.pbtxt.tmpl").read_text().format(
            **common, version_policy=_policy(version if pin is None else pin),
            pre_outputs="\n".join(f'      output_map {{ key: "{n}" value: "{n}" }}' for n in encoder_inputs),
            enc_inputs="\n".join(f'      input_map {{ key: "{n}" value: "{n}" }}' for n in encoder_inputs)),
    }


def onnx_inputs(path: Path) -> list[str]:
    import onnxruntime as ort

    return [i.name for i in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()]


def write_version(repo: Path, name: str, files_from: Path, grades: list[str], flavour: str = "python-onnx",
                  low_confidence_threshold: float = 0.5, tensorrt: bool = False,
                  batching: Batching = Batching()) -> int:
    """Copy a prepared version folder into the repository as the next version; return its number."""
    tmpl = template_dir(flavour)
    repo, files_from = Path(repo), Path(files_from)
    version = max([0] + [v for m in model_names(name, flavour) for v in versions(repo, m)]) + 1
    if flavour == "python-onnx":
        _write_folder(repo / name / str(version), files_from, [tmpl / "model.py"])
        _write_config(repo / name, render_config(name, grades, flavour=flavour, batching=batching,
                                                 low_confidence_threshold=low_confidence_threshold))
        return version
    max_length = json.loads((files_from / "adore_student.json").read_text())["max_length"]
    configs = render_ensemble(name, grades, version, onnx_inputs(files_from / "model.onnx"), max_length,
                              low_confidence_threshold=low_confidence_threshold, tensorrt=tensorrt)
    tokenizer_side = [f for f in files_from.iterdir() if f.name not in NOT_PREPROCESS]
    _write_folder(repo / step_model(name, "preprocess") / str(version), None,
                  tokenizer_side + [tmpl / "preprocess.py"], rename={"preprocess.py": "model.py"})
    _write_folder(repo / step_model(name, "encoder") / str(version), None, [files_from / "model.onnx"])
    _write_folder(repo / step_model(name, "postprocess") / str(version), None,
                  [tmpl / "postprocess.py"] + [f for f in (files_from / LOG_SETTINGS,) if f.exists()],
                  rename={"postprocess.py": "model.py"})
    # The ensemble's version folder last: until it exists, nothing calls the new steps.
    _write_folder(repo / name / str(version), None, [f for f in (files_from / "golden.json",
                                                                 files_from / "source.json") if f.exists()])
    for model, text in configs.items():
        _write_config(repo / model, text)
    return version


def _write_folder(final: Path, files_from: Path | None, extra: list[Path], rename: dict | None = None) -> None:
    if final.exists():
        raise FileExistsError(f"{final} already exists; a written version is never overwritten")
    with atomic_dir(final) as tmp:
        for f in (list(files_from.iterdir()) if files_from else []) + list(extra):
            dest = tmp / (rename or {}).get(f.name, f.name)
            (shutil.copytree if f.is_dir() else shutil.copy2)(f, dest)


def _write_config(model_dir: Path, text: str) -> None:
    cfg = model_dir / "config.pbtxt"
    if not cfg.is_file() or cfg.read_text() != text:
        atomic_write_text(cfg, text)


def remove_version(repo: Path, name: str, version: int) -> None:
    """Take version N out of every model of the student: renamed away first, then deleted."""
    for model_dir in _student_models(repo, name):
        folder = model_dir / str(version)
        if folder.exists():
            doomed = model_dir / f".{version}{TMP_MARK}removed-{os.getpid()}"
            os.replace(folder, doomed)
            shutil.rmtree(doomed, ignore_errors=True)


def _student_models(repo: Path, name: str) -> list[Path]:
    # The model clients call first: once its version folder is gone, nothing calls that version's steps.
    return [Path(repo) / m for m in reversed(all_model_names(name)) if (Path(repo) / m).is_dir()]


POLICY_RE = re.compile(r"^version_policy: .*$", re.M)
SPECIFIC_RE = re.compile(r"^version_policy: \{ specific \{ versions: \[ (\d+) \] \} \}$", re.M)
STEP_VERSION_RE = re.compile(r"^(\s*model_version: )\d+$", re.M)
PINNED_RE = re.compile(r'^(parameters \{ key: "pinned_version", value: \{ string_value: )"[^"]*"', re.M)


def served_version(repo: Path, name: str) -> int | None:
    """The version clients get when they name no version: the pinned one, else the latest.

    An ensemble's own policy always names the one version its steps point at.
    """
    cfg = Path(repo) / name / "config.pbtxt"
    m = SPECIFIC_RE.search(cfg.read_text()) if cfg.is_file() else None
    if m:
        return int(m.group(1))
    found = versions(repo, name)
    return found[-1] if found else None


def pin_version(repo: Path, name: str, version: int | None) -> None:
    """Serve exactly VERSION (a rollback), or the latest two again when None. Files are never deleted."""
    repo = Path(repo)
    if version is not None and version not in versions(repo, name):
        raise ValueError(f"version {version} of {name!r} is not in {repo} (it has {versions(repo, name)})")
    target = version if version is not None else versions(repo, name)[-1]
    for model_dir in _student_models(repo, name):
        cfg = model_dir / "config.pbtxt"
        text = cfg.read_text()
        ensemble = 'platform: "ensemble"' in text
        policy = _policy(target if ensemble else version)
        new = POLICY_RE.sub(lambda _: f"version_policy: {policy}", text)
        new = PINNED_RE.sub(lambda m: f'{m.group(1)}"{"" if version is None else version}"', new)
        if ensemble:
            new = STEP_VERSION_RE.sub(lambda m: f"{m.group(1)}{target}", new)
        _write_config(model_dir, new)
