"""Triton's model repository and health API: the one client rollout and server both use.

    ctl = TritonControl("triton:8000")
    ctl.load("adore-student")          # raises TritonError with Triton's reason
    ctl.ready("adore-student", 2)      # bool; TritonError when Triton does not answer

Built on tritonclient.http.InferenceServerClient (load_model, unload_model,
is_model_ready, ...). Whatever goes wrong, a refusal (Triton's own reason text)
or no answer at all (refused connection, timeout, a connection closed while a
load runs), the caller gets one exception type, TritonError.
"""
from __future__ import annotations

import http.client

from ..errors import AdoreError
from .client import _strip_scheme

# A python-backend model starts a stub process and imports onnxruntime and transformers in it:
# a load can take tens of seconds, far more on a busy node, and Triton answers only once it is done.
LOAD_TIMEOUT = 300.0
UNLOAD_TIMEOUT = 60.0
QUERY_TIMEOUT = 10.0   # readiness and the repository index answer at once
CONNECT_TIMEOUT = 10.0  # an unreachable host should not wait out a load's timeout


class TritonError(AdoreError, RuntimeError):
    """Triton refused a repository or health request (its reason is the message), or did not answer."""


class TritonControl:
    """Load, unload and ask readiness of models on a Triton running with --model-control-mode=explicit."""

    def __init__(self, url: str):
        self.url = _strip_scheme(url)  # tritonclient wants host:port without a scheme

    def load(self, model: str, timeout: float = LOAD_TIMEOUT) -> None:
        """Load MODEL, or reload it to pick up the version folders now on disk."""
        self._call(f"load model {model!r}", timeout, lambda c: c.load_model(model))

    def unload(self, model: str, timeout: float = UNLOAD_TIMEOUT) -> None:
        self._call(f"unload model {model!r}", timeout, lambda c: c.unload_model(model))

    def ready(self, model: str, version: int | str | None = None, timeout: float = QUERY_TIMEOUT) -> bool:
        """Whether MODEL (one VERSION of it, or whatever it serves when None) answers requests."""
        v = "" if version is None else str(version)  # tritonclient: "" lets Triton pick by the version policy
        return self._call(f"say whether model {model!r} is ready", timeout, lambda c: c.is_model_ready(model, v))

    def server_ready(self, timeout: float = QUERY_TIMEOUT) -> bool:
        return self._call("say whether it is ready", timeout, lambda c: c.is_server_ready())

    def repository_index(self, timeout: float = QUERY_TIMEOUT) -> list[dict]:
        """Every model in the repository, with its state (READY, UNAVAILABLE, ...) where Triton knows one."""
        return self._call("list its model repository", timeout, lambda c: c.get_model_repository_index())

    def _call(self, what: str, timeout: float, request):
        # tritonclient.http takes its timeouts per client, not per call, and a client is not thread safe:
        # one short-lived client per request gives each its own timeout and lets threads share a TritonControl.
        import tritonclient.http as tc
        from tritonclient.utils import InferenceServerException

        try:
            with tc.InferenceServerClient(self.url, connection_timeout=min(timeout, CONNECT_TIMEOUT),
                                          network_timeout=timeout) as client:
                return request(client)
        except InferenceServerException as e:
            raise TritonError(f"Triton at {self.url} could not {what}: {e.message()}") from e
        except (OSError, http.client.HTTPException) as e:  # refused, timed out, or closed mid-answer
            raise TritonError(f"Triton at {self.url} did not answer ({what}): {type(e).__name__}: {e}") from e
