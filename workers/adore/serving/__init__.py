"""Serving promoted students with a real Triton Inference Server: everything that speaks Triton.

- repository: write student versions into a Triton model repository (both
  flavours, from the templates in triton_repo/, installed as the data package
  adore.serving.templates), list, pin and remove versions; model_names and
  step_model name the Triton models a student occupies.
- control.TritonControl: the one client of Triton's repository and health
  API (load, unload, readiness), on tritonclient.http; every failure is a
  control.TritonError carrying Triton's reason.
- server.TritonServer: start the tritonserver binary shipped in PyPI's
  nvidia-pytriton wheel (python backend only, CPU) against a model
  repository written by promote, in explicit model-control mode.
- client.Scorer: one connection to a served student over HTTP or gRPC, reused
  for every request: (query, title, attributes) rows in, grade probabilities
  and expected-grade scores out; client.score: one call through its own.
- version.prepare_version: fill a version folder (ONNX, tokenizer, meta,
  golden rows) from a Student, ready for repository.write_version.
- rollout.serve_version / rollout.rollback: have a running Triton load a
  written version and check its golden rows (removing it if they fail), or
  pin an earlier version (docs/serving.md).
- backend: what the python-backend models in triton_repo/ run inside Triton
  (tokenising, softmax and score, the adore_* serving metrics).
- request_log: the log of served requests the postprocess step writes, and
  its reader for the next round.
- commands: `adore score` and `adore rollback`.
"""
from .client import Scorer, score
from .control import TritonControl, TritonError
from .server import TritonInstall, TritonNotFound, TritonServer, TritonServerError, find_triton, free_port
from .version import prepare_version

__all__ = ["TritonControl", "TritonError", "TritonInstall", "TritonNotFound", "TritonServer", "TritonServerError",
           "find_triton", "free_port", "prepare_version", "score"]
