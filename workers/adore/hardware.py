"""The device and precision every torch stage computes with, chosen from the hardware found.

One policy for the teacher (load, judge, SFT, KTO), the student (train, predict,
calibrate) and the bi-encoder; ONNX export stays on the CPU in fp32.

- device `auto`: CUDA when torch sees a GPU, else the CPU; `cpu` / `cuda` force one
  (`cuda` without a GPU is an error, never a silent fallback).
- precision `auto`: on CUDA bf16 where the GPU supports it, else fp16; on the CPU bf16
  only when the CPU has native bf16 instructions (AVX512-BF16 or AMX-BF16 in its
  flags) *and* a short measurement finds bf16 autocast faster than fp32 on it, else
  fp32. Without the instructions bf16 is emulated and a KTO step takes 5x longer than
  in fp32 (MISSION.md); with AVX512-BF16 but no AMX (an Intel Xeon whose hypervisor
  hides AMX) bf16 autocast ran at 0.6x fp32's matrix throughput and an SFT step of the
  1.5B teacher took 1.3x as long, so the flags alone cannot decide. Libraries that
  default to bf16 (trl) are overridden.
- a stage whose Job asks for GPUs (the operator sets ADORE_EXPECT_GPUS) and finds none
  fails at once, unless spec.runtime.allowCpuFallback: a hundred times slower and
  unnoticed is worse than failing.

`choose()` is a pure function of what was found, so the policy is tested on any machine.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from functools import lru_cache
from .errors import AdoreError

EXPECT_GPUS_ENV = "ADORE_EXPECT_GPUS"
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CHECKPOINTING_FROM = 1_000_000_000  # parameters from which CPU training recomputes activations instead of keeping them
CPU_BF16_ENV = "ADORE_CPU_BF16"  # "fast" / "slow": skip the measurement (a Job that must not spend or vary on it)
BF16_MIN_GAIN = 1.1  # bf16 autocast must beat fp32 by this factor: a tie is not worth bf16's rounding


class HardwareError(AdoreError, RuntimeError):
    """The spec asks for hardware this machine does not have."""


@dataclass(frozen=True)
class Found:
    """What the machine offers (the inputs of the policy)."""

    cuda: bool
    cuda_name: str | None = None
    cuda_bf16: bool = False
    cpu_name: str = "cpu"
    cpu_flags: frozenset[str] = frozenset()
    cpu_bf16_fast: bool | None = None  # measured (cpu_bf16_probe); None: not measured, the flags decide


@dataclass(frozen=True)
class Hardware:
    device: str        # "cpu" or "cuda:0"
    precision: str     # "fp32", "bf16" or "fp16": the compute precision (autocast / weights for inference)
    name: str          # the GPU's or the CPU's model

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def dtype(self):
        import torch

        return getattr(torch, PRECISIONS[self.precision])

    def describe(self) -> str:
        """What a stage records, e.g. 'cuda:0 (NVIDIA H200), bf16' or 'cpu (Intel Xeon ...), fp32'."""
        return f"{self.device} ({self.name}), {self.precision}"

    def autocast(self):
        """Mixed precision for a forward pass; a no-op in fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        import torch

        return torch.autocast(device_type="cuda" if self.is_cuda else "cpu", dtype=self.dtype)

    def weights_dtype(self, training: bool):
        """Inference loads weights in the compute precision; training keeps fp32 master weights on the
        CPU (autocast computes in bf16) and the compute precision on a GPU (memory; LoRA adapters stay fp32)."""
        import torch

        return torch.float32 if training and not self.is_cuda else self.dtype

    def batch(self, cpu_default: int) -> int:
        """Default inference batch: a GPU takes many more rows at once than two CPU cores."""
        return cpu_default * 8 if self.is_cuda else cpu_default

    def trainer_args(self, parameters: int = 0) -> dict:
        """transformers/trl TrainingArguments for this hardware and a model of that many parameters: never the
        library's defaults, which assume a GPU (bf16 on; gradient checkpointing on, which spends a third more
        compute to save activation memory: worth it on a GPU and for a 1B+ model, whose activations fill a
        24 GiB machine, not for a small model on the CPU)."""
        return {"use_cpu": not self.is_cuda, "bf16": self.precision == "bf16", "fp16": self.precision == "fp16",
                "gradient_checkpointing": self.is_cuda or parameters >= CHECKPOINTING_FROM}


def choose(found: Found, device: str = "auto", precision: str = "auto", expect_gpus: int = 0,
           allow_cpu_fallback: bool = False, stage: str = "this stage") -> Hardware:
    """The device and precision for a stage, from what was found and what the spec asks."""
    if device not in ("auto", "cpu", "cuda"):
        raise HardwareError(f"spec.runtime.device: must be auto, cpu or cuda, got {device!r}")
    if precision not in ("auto", *PRECISIONS):
        raise HardwareError(f"spec.runtime.precision: must be auto, {', '.join(PRECISIONS)}, got {precision!r}")
    wants_gpu = device == "cuda" or expect_gpus > 0
    if wants_gpu and not found.cuda and not allow_cpu_fallback:
        why = (f"its Job asks for {expect_gpus} nvidia.com/gpu" if expect_gpus > 0 else "spec.runtime.device is cuda")
        raise HardwareError(f"{stage}: {why}, but torch finds no CUDA device (torch.cuda.is_available() is False): "
                            "check the node's GPU driver and the worker image's CUDA build, or set "
                            "spec.runtime.allowCpuFallback: true to run on the CPU (about a hundred times slower)")
    on_cuda = found.cuda and device != "cpu"
    if on_cuda:
        if precision == "auto":
            precision = "bf16" if found.cuda_bf16 else "fp16"
        elif precision == "bf16" and not found.cuda_bf16:
            raise HardwareError(f"spec.runtime.precision: bf16, but {found.cuda_name} has no bf16 support; use fp16 or auto")
        return Hardware("cuda:0", precision, found.cuda_name or "GPU")
    bf16_pays = native_bf16(found.cpu_flags) and found.cpu_bf16_fast is not False  # unmeasured: the flags decide
    if precision == "auto":
        precision = "bf16" if bf16_pays else "fp32"
    elif precision == "fp16":
        raise HardwareError("spec.runtime.precision: fp16 is for GPUs; on the CPU use fp32, bf16 or auto")
    return Hardware("cpu", precision, found.cpu_name)


def native_bf16(flags) -> bool:
    return any(f in flags for f in NATIVE_BF16_FLAGS)


def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, flags) from /proc/cpuinfo; the platform's processor name elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields.get("model name") or platform.processor() or platform.machine(), frozenset(fields.get("flags", "").split())


def cpu_summary() -> str:
    """The CPU model, its cores and its vector extensions: printed beside every timing."""
    name, flags = cpu_info()
    ext = [f for f in VECTOR_FLAGS if f in flags]
    text = f"{name}, {os.cpu_count()} cores, {' '.join(ext) or 'no AVX2/AVX-512'}, native bf16: {'yes' if native_bf16(flags) else 'no'}"
    if native_bf16(flags) and not os.environ.get(CPU_BF16_ENV):
        gain = cpu_bf16_gain(name, flags)
        text += f" (bf16 autocast {gain:.2f}x fp32: {'bf16' if gain >= BF16_MIN_GAIN else 'fp32'} chosen)"
    return text


@lru_cache(maxsize=1)
def found() -> Found:
    import torch

    name, flags = cpu_info()
    if torch.cuda.is_available():
        return Found(True, torch.cuda.get_device_name(0), bool(torch.cuda.is_bf16_supported()), name, flags)
    fast = cpu_bf16_fast(name, flags) if native_bf16(flags) else None
    return Found(False, cpu_name=name, cpu_flags=flags, cpu_bf16_fast=fast)


def cpu_bf16_fast(name: str, flags: frozenset[str]) -> bool:
    """Whether bf16 autocast outruns fp32 on this CPU: ADORE_CPU_BF16 (fast / slow) if set, else measured."""
    told = os.environ.get(CPU_BF16_ENV, "").strip().lower()
    if told:
        if told not in ("fast", "slow"):
            raise HardwareError(f"{CPU_BF16_ENV} must be fast or slow, got {told!r}")
        return told == "fast"
    return cpu_bf16_gain(name, flags) >= BF16_MIN_GAIN


# Measurements that could not be written to ADORE_CACHE, by the same key as the file's entries.
_UNSAVED_GAINS: dict[str, float] = {}


def cpu_bf16_gain(name: str, flags: frozenset[str]) -> float:
    """fp32 step time / bf16 autocast step time on this CPU: remembered per CPU, torch version and thread count
    (ADORE_CACHE/cpu-bf16.json), so that every stage of a round decides alike; measured (about a second) when
    not known yet."""
    import torch

    from .atomic import atomic_write_json
    from .models import cache_dir

    key = hashlib.sha1(f"{name}|{' '.join(sorted(flags))}|{torch.__version__}|{torch.get_num_threads()}".encode()).hexdigest()
    path = cache_dir() / "cpu-bf16.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), dict) and isinstance(known[key].get("gain"), (int, float)):
        return float(known[key]["gain"])
    if key in _UNSAVED_GAINS:
        return _UNSAVED_GAINS[key]
    fp32, bf16 = cpu_bf16_probe()
    known[key] = {"cpu": name, "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "fp32Seconds": round(fp32, 5), "bf16Seconds": round(bf16, 5), "gain": round(fp32 / bf16, 3)}
    try:
        atomic_write_json(path, known)
    except OSError:  # a read-only home: remembered in this process only, so cpu_summary() does not measure again
        _UNSAVED_GAINS[key] = fp32 / bf16
    return fp32 / bf16


def cpu_bf16_probe(rows: int = 256, width: int = 1024, repeats: int = 3, steps: int = 4) -> tuple[float, float]:
    """Seconds of one training step (forward and backward) of a transformer-sized linear layer, in fp32 and in
    bf16 autocast: the best of `repeats` runs of `steps` steps each, the two precisions taking turns so that a
    busy moment slows both."""
    import torch

    layer = torch.nn.Linear(width, width)
    x = torch.randn(rows, width)

    def run(bf16: bool) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = layer(x)
            y.float().sum().backward()
        return (time.perf_counter() - t0) / steps

    run(False), run(True)  # warm-up: oneDNN builds its kernels on first use
    best = {False: float("inf"), True: float("inf")}
    for _ in range(repeats):
        for bf16 in (False, True):
            best[bf16] = min(best[bf16], run(bf16))
    return best[False], best[True]


def for_stage(runtime, stage: str) -> Hardware:
    """The hardware a stage runs on, from spec.runtime (per-stage overrides first) and the Job's GPU request."""
    srt = runtime.stages.get(stage)
    device = (srt.device if srt and srt.device else None) or runtime.default.device or runtime.device
    precision = (srt.precision if srt and srt.precision else None) or runtime.default.precision or runtime.precision
    expect = int(os.environ.get(EXPECT_GPUS_ENV) or 0)
    return choose(found(), device, precision, expect, runtime.allow_cpu_fallback, f"stage {stage}")


CPU_FP32 = Hardware("cpu", "fp32", "cpu")
