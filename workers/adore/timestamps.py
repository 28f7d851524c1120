"""Timestamps as the Kubernetes API writes them: UTC, whole seconds, e.g. 2026-11-27T10:00:00Z.

One format for everything that records a time: the stages' completion records, the local
runner's status.json and the operator's .status, so each reads what the others wrote.
"""
from __future__ import annotations

from datetime import datetime, timezone

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime(FORMAT)


def to_iso(value: datetime | str | None) -> str | None:
    """Any API timestamp (a datetime, naive meaning UTC, or text ending in Z or +00:00) in FORMAT."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime(FORMAT)


def parse_iso(text: str) -> datetime:
    """The inverse of now_iso() and to_iso(): an aware UTC datetime."""
    return datetime.strptime(text, FORMAT).replace(tzinfo=timezone.utc)
