#!/usr/bin/env bash
# Install a real tritonserver (2.51, python backend only) into a venv, from
# PyPI's nvidia-pytriton wheel, without touching the venv's torch or numpy.
#
#   .ci/install-triton.sh [VENV]        (default: .venv)
#
# nvidia-pytriton 0.7.0 pins numpy<2 and pulls pyzmq/sh/typer/...; those are
# only for its own Python API, which ADORE does not use. We need just the
# binaries it carries (bin/tritonserver, backends/python, the python backend
# stubs and nvidia_pytriton.libs), so it is installed with --no-deps. The
# runtime deps ADORE's serving code does use (tritonclient[http,grpc],
# numpy, onnxruntime, transformers) come with the project itself.
#
# The wheel's python backend stub is built for numpy 1.x: under numpy 2 every
# tensor it hands to Python is garbled (BYTES inputs abort the stub). The venv
# keeps its numpy 2; numpy 1.26 goes into VENV/triton-stub/site with
# pip --target, and adore.serving.server gives the stub a private venv that
# puts that folder ahead of the project's site-packages.
#
# Idempotent: a second run only prints the paths.
set -euo pipefail

VENV="${1:-.venv}"
PY="$VENV/bin/python"
VERSION="${PYTRITON_VERSION:-0.7.0}"

if [ ! -x "$PY" ]; then
  echo "install-triton: no python at $PY (pass the venv as \$1)" >&2
  exit 1
fi

torch_before="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || echo none)"

have="$("$PY" -c 'import importlib.metadata as m; print(m.version("nvidia-pytriton"))' 2>/dev/null || true)"
if [ "$have" != "$VERSION" ]; then
  "$PY" -m pip install --no-deps "nvidia-pytriton==$VERSION"
fi
# The client side (normally already there via the project's own dependencies). Its deps
# (grpcio, protobuf, geventhttpclient, numpy>=1.19) never pull torch; checked below anyway.
"$PY" - <<'PYEOF' 2>/dev/null || "$PY" -m pip install "tritonclient[http,grpc]>=2.50"
import tritonclient.http, tritonclient.grpc  # noqa: F401
PYEOF

NUMPY1="${TRITON_STUB_NUMPY:-1.26.4}"
STUB_SITE="$VENV/triton-stub/site"
have_np="$("$PY" - "$STUB_SITE" <<'PYEOF' 2>/dev/null || true
import pathlib, sys
d = pathlib.Path(sys.argv[1])
print(next((p.name[len("numpy-"):-len(".dist-info")] for p in d.glob("numpy-*.dist-info")), ""))
PYEOF
)"
if [ "$have_np" != "$NUMPY1" ]; then
  rm -rf "$STUB_SITE"
  "$PY" -m pip install --no-deps --no-compile --target "$STUB_SITE" "numpy==$NUMPY1"
fi

torch_after="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || echo none)"
if [ "$torch_before" != "$torch_after" ]; then
  echo "install-triton: torch changed ($torch_before -> $torch_after); this must not happen" >&2
  exit 1
fi

# Locate the binary without importing pytriton (its __init__ needs the deps we skipped).
"$PY" - "$STUB_SITE" <<'PYEOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("pytriton")
if spec is None or not spec.submodule_search_locations:
    sys.exit("install-triton: pytriton package not found after install")
root = pathlib.Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
binary = root / "bin" / "tritonserver"
stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / "triton_python_backend_stub"
for p in (binary, stub):
    if not p.is_file():
        sys.exit(f"install-triton: missing {p}")
print(f"tritonserver: {binary}")
print(f"python backend stub: {stub}")
print(f"numpy 1.x for the stub: {pathlib.Path(sys.argv[1]).resolve()}")
PYEOF
