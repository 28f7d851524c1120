"""Score (query, title, attributes) rows against a student served by Triton."""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np


def _strip_scheme(url: str) -> str:
    for prefix in ("http://", "https://", "grpc://"):
        if url.startswith(prefix):
            return url[len(prefix):].rstrip("/")
    return url.rstrip("/")


def _bytes_column(values: Sequence[str]) -> np.ndarray:
    return np.array([v.encode("utf-8") for v in values], dtype=np.object_).reshape(-1, 1)


class Scorer:
    """A connection to a served student, reused by every request sent through it.

    url: "host:port" (a scheme prefix is tolerated) of Triton's HTTP or gRPC endpoint, matching
    `protocol`. Keep one per thread: tritonclient's HTTP client is not thread-safe. One connection for
    many requests matters most over gRPC, where a new client opens a new channel (a TCP and HTTP/2
    handshake) before its first request.
    """

    def __init__(self, url: str, model: str, protocol: str = "http", version: int | str | None = None,
                 batch_size: int = 256, timeout: float = 60.0):
        if protocol == "http":
            import tritonclient.http as tc
        elif protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            raise ValueError(f"protocol must be 'http' or 'grpc', not {protocol!r}")
        self._tc, self.model, self.protocol = tc, model, protocol
        self.version = "" if version is None else str(version)
        self.batch_size, self.timeout = batch_size, timeout
        host = _strip_scheme(url)
        self._client = tc.InferenceServerClient(url=host, network_timeout=timeout) if protocol == "http" \
            else tc.InferenceServerClient(url=host)

    def score(self, queries: Sequence[str], titles: Sequence[str],
              attributes: Sequence[dict | str | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Grade probabilities (n, grades) and expected-grade scores (n,). attributes: one dict (or JSON
        string) per row, or None to leave the optional ATTRIBUTES input out. Rows go in requests of at
        most batch_size (keep it <= the model's max_batch_size)."""
        tc = self._tc
        queries, titles = list(queries), list(titles)
        if len(queries) != len(titles) or (attributes is not None and len(attributes) != len(queries)):
            raise ValueError("queries, titles and attributes must have the same length")
        attrs = None if attributes is None else [a if isinstance(a, str) else json.dumps(a or {}) for a in attributes]
        probs, scores = [], []
        for s in range(0, len(queries), self.batch_size):
            cols = {"QUERY": queries[s:s + self.batch_size], "TITLE": titles[s:s + self.batch_size]}
            if attrs is not None:
                cols["ATTRIBUTES"] = attrs[s:s + self.batch_size]
            inputs = []
            for name, values in cols.items():
                arr = _bytes_column(values)
                inp = tc.InferInput(name, list(arr.shape), "BYTES")
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            outputs = [tc.InferRequestedOutput("PROBS"), tc.InferRequestedOutput("SCORE")]
            kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
            res = self._client.infer(self.model, inputs, model_version=self.version, outputs=outputs, **kwargs)
            probs.append(res.as_numpy("PROBS"))
            scores.append(res.as_numpy("SCORE").reshape(-1))
        if not probs:
            return np.zeros((0, 0), np.float32), np.zeros((0,), np.float32)
        return np.concatenate(probs), np.concatenate(scores)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def score(url: str, model: str, queries: Sequence[str], titles: Sequence[str],
          attributes: Sequence[dict | str | None] | None = None, protocol: str = "http",
          version: int | str | None = None, batch_size: int = 256, timeout: float = 60.0
          ) -> tuple[np.ndarray, np.ndarray]:
    """One call's rows through a connection of its own (Scorer, for many calls, keeps one open)."""
    with Scorer(url, model, protocol, version, batch_size, timeout) as scorer:
        return scorer.score(queries, titles, attributes)
