"""The termination message: how a stage's Pod hands its result to the operator.

The worker writes one small JSON document to the container's termination-message file,
{"stage", "ok": true, "metrics"} or {"stage", "ok": false, "error"}; the kubelet keeps it
in the Pod's status, where the operator reads it back with parse(). A Pod that died
before writing one leaves the tail of its log there instead (the stage Jobs'
terminationMessagePolicy is FallbackToLogsOnError), which parse() reads as the error.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PATH_ENV = "ADORE_TERMINATION_LOG"  # set on the stage Jobs' containers
KUBELET_PATH_ENV = "TERMINATION_MESSAGE_PATH"
LIMIT = 4096  # what the kubelet keeps of a termination message
ERROR_TAIL = 2000  # of an error: its end says what went wrong, and it leaves room for the rest
LOG_TAIL = 1000  # of a message that is not ours (a log tail)


def succeeded(stage: str, metrics: dict) -> dict:
    return {"stage": stage, "ok": True, "metrics": metrics}


def failed(error: str, stage: str | None = None) -> dict:
    return {**({"stage": stage} if stage else {}), "ok": False, "error": error[-ERROR_TAIL:]}


def render(payload: dict) -> str:
    text = json.dumps(payload, separators=(",", ":"), default=str)
    if len(text) > LIMIT:  # metrics too large: the outcome and the error still fit
        text = json.dumps({k: payload[k] for k in ("stage", "ok", "error") if k in payload})[:LIMIT]
    return text


def write(payload: dict) -> None:
    """Write the message where the container's terminationMessagePath is (nowhere outside a Pod)."""
    path = os.environ.get(PATH_ENV) or os.environ.get(KUBELET_PATH_ENV)
    if not path:
        return
    try:
        Path(path).write_text(render(payload))
    except OSError as e:
        print(f"warning: cannot write the termination message to {path}: {e}", file=sys.stderr)


def parse(message: str | None) -> tuple[dict, str | None]:
    """(metrics, error) of a termination message; text that is not one is the error (its tail)."""
    if not message:
        return {}, None
    try:
        doc = json.loads(message)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return {}, message.strip()[-LOG_TAIL:]
    return doc.get("metrics") or {}, doc.get("error")
