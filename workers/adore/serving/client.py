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


def score(url: str, model: str, queries: Sequence[str], titles: Sequence[str],
          attributes: Sequence[dict | str | None] | None = None, protocol: str = "http",
          version: int | str | None = None, batch_size: int = 256, timeout: float = 60.0
          ) -> tuple[np.ndarray, np.ndarray]:
    """Grade probabilities (n, grades) and expected-grade scores (n,) from a served student.

    url: "host:port" (a scheme prefix is tolerated) of Triton's HTTP or gRPC
    endpoint, matching `protocol`. attributes: one dict (or JSON string) per
    row, or None to leave the optional ATTRIBUTES input out. Rows are sent in
    requests of at most batch_size (keep it <= the model's max_batch_size).
    """
    if protocol == "http":
        import tritonclient.http as tc
    elif protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        raise ValueError(f"protocol must be 'http' or 'grpc', not {protocol!r}")
    queries, titles = list(queries), list(titles)
    if len(queries) != len(titles) or (attributes is not None and len(attributes) != len(queries)):
        raise ValueError("queries, titles and attributes must have the same length")
    attrs = None if attributes is None else [a if isinstance(a, str) else json.dumps(a or {}) for a in attributes]
    version = "" if version is None else str(version)
    host = _strip_scheme(url)
    client = tc.InferenceServerClient(url=host, network_timeout=timeout) if protocol == "http" \
        else tc.InferenceServerClient(url=host)
    probs, scores = [], []
    try:
        for s in range(0, len(queries), batch_size):
            cols = {"QUERY": queries[s:s + batch_size], "TITLE": titles[s:s + batch_size]}
            if attrs is not None:
                cols["ATTRIBUTES"] = attrs[s:s + batch_size]
            inputs = []
            for name, values in cols.items():
                arr = _bytes_column(values)
                inp = tc.InferInput(name, list(arr.shape), "BYTES")
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            outputs = [tc.InferRequestedOutput("PROBS"), tc.InferRequestedOutput("SCORE")]
            kwargs = {"client_timeout": timeout} if protocol == "grpc" else {}
            res = client.infer(model, inputs, model_version=version, outputs=outputs, **kwargs)
            probs.append(res.as_numpy("PROBS"))
            scores.append(res.as_numpy("SCORE").reshape(-1))
    finally:
        client.close()
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(probs), np.concatenate(scores)
