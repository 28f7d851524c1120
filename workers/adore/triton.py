"""Writing student versions into a Triton model repository.

Layout: REPO/NAME/config.pbtxt and REPO/NAME/N/ (model.py, model.onnx, the
tokenizer, adore_student.json, golden.json). A version folder is written
under a temporary name and renamed into place, so Triton never sees half a
version; existing versions are never touched.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .atomic import atomic_dir, atomic_write_text

TEMPLATES = Path(os.environ.get("ADORE_TRITON_TEMPLATES", Path(__file__).resolve().parents[2] / "triton_repo"))


def template_dir(flavour: str = "python-onnx") -> Path:
    d = TEMPLATES / flavour
    if not (d / "model.py").is_file():
        raise FileNotFoundError(f"Triton templates not found in {d} (set ADORE_TRITON_TEMPLATES)")
    return d


def versions(repo: Path, name: str) -> list[int]:
    d = Path(repo) / name
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()) if d.is_dir() else []


def render_config(name: str, grades: list[str], max_batch_size: int = 256, flavour: str = "python-onnx") -> str:
    tmpl = (template_dir(flavour) / "config.pbtxt.tmpl").read_text()
    return tmpl.format(name=name, grades=",".join(grades), n_grades=len(grades), max_batch_size=max_batch_size)


def write_version(repo: Path, name: str, files_from: Path, grades: list[str], flavour: str = "python-onnx") -> int:
    """Copy a prepared version folder into the repository as the next version; return its number."""
    model_dir = Path(repo) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = (versions(repo, name) or [0])[-1] + 1
    with atomic_dir(model_dir / str(version)) as tmp:
        for f in Path(files_from).iterdir():
            (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
        shutil.copy2(template_dir(flavour) / "model.py", tmp / "model.py")
    config = render_config(name, grades, flavour=flavour)
    cfg_path = model_dir / "config.pbtxt"
    if not cfg_path.is_file() or cfg_path.read_text() != config:
        atomic_write_text(cfg_path, config)
    return version
