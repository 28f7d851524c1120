"""The request log: scored rows that serving writes and the next round reads.

Each Triton model instance appends to its own JSON Lines file in the log
folder (`requests-MODEL-vVERSION-PID.jsonl`), so writers never share a file.
A request's kept rows go out in one write() followed by a flush: a kill
mid-write can tear only the file's last line, which the reader skips and
counts. A file over maxFileBytes is renamed aside with a sequence number
and a new one started; at most maxFiles rotated files of a writer are kept.

Kept rows: every low-confidence row (top grade probability below the
threshold, as adore_low_confidence_total counts it) plus a sampled share
(sampleRate) of the others. Torch-free: it runs inside the Triton stub.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ..errors import AdoreError

SETTINGS_FILE = "request_log.json"  # in a version folder: the promotion's requestLog, as Triton sees its path
PREFIX = "requests-"


@dataclass
class LogSettings:
    path: str
    sample_rate: float = 0.0
    max_file_bytes: int = 64 * 2**20
    max_files: int = 10
    threshold: float = 0.5

    @classmethod
    def read(cls, folder: str | Path) -> "LogSettings | None":
        f = Path(folder) / SETTINGS_FILE
        return cls(**json.loads(f.read_text())) if f.is_file() else None


class RequestLog:
    def __init__(self, settings: LogSettings, model: str, version: str, seed: int | None = None):
        self.s = settings
        self.model, self.version = model, str(version)
        self.folder = Path(settings.path)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stem = f"{PREFIX}{model}-v{version}-{os.getpid()}"
        self.rng = np.random.default_rng(seed)
        self._file = None

    def record(self, queries: list[str], titles: list[str], attrs: list[dict], probs: np.ndarray) -> int:
        """Append the kept rows of one request; returns how many were written."""
        top = probs.max(-1)
        low = top < self.s.threshold
        keep = low | (self.rng.random(len(top)) < self.s.sample_rate)
        if not keep.any():
            return 0
        now = time.time()
        lines = "".join(json.dumps({"query": queries[i], "title": titles[i], "attributes": attrs[i],
                                    "probs": [round(float(p), 5) for p in probs[i]], "lowConfidence": bool(low[i]),
                                    "model": self.model, "version": self.version, "time": now},
                                   ensure_ascii=False) + "\n" for i in np.flatnonzero(keep))
        f = self._open()
        f.write(lines.encode("utf-8"))
        f.flush()
        if f.tell() >= self.s.max_file_bytes:
            self._rotate()
        return int(keep.sum())

    def _open(self):
        if self._file is None:
            self._file = open(self.folder / f"{self.stem}.jsonl", "ab", buffering=0)
        return self._file

    def _rotate(self) -> None:
        self._file.close()
        self._file = None
        current = self.folder / f"{self.stem}.jsonl"
        rotated = sorted(self.folder.glob(f"{self.stem}.*.jsonl"), key=_sequence)
        n = _sequence(rotated[-1]) + 1 if rotated else 1
        os.replace(current, self.folder / f"{self.stem}.{n}.jsonl")
        for old in rotated[:max(0, len(rotated) + 1 - self.s.max_files)]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _sequence(p: Path) -> int:
    return int(p.name.rsplit(".", 2)[-2])


class RequestLogError(AdoreError, ValueError):
    """A request log line that is not a torn last line is broken: the log was written by something else."""


@dataclass
class LogRead:
    rows: list[dict] = field(default_factory=list)
    files: int = 0
    torn: int = 0  # last lines cut short by a kill mid-write, skipped


def read_request_log(folder: str | Path) -> LogRead:
    """Every complete row of every log file in the folder (empty when the folder does not exist)."""
    out = LogRead()
    folder = Path(folder)
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob(f"{PREFIX}*.jsonl")):
        out.files += 1
        data = f.read_bytes()
        lines = data.split(b"\n")
        complete, last = lines[:-1], lines[-1]
        if last:  # no trailing newline: the write was cut short
            out.torn += 1
        for n, line in enumerate(complete, 1):
            try:
                row = json.loads(line)
            except ValueError:
                raise RequestLogError(f"{f}, line {n}: not a JSON object (only a file's last line may be torn)") from None
            missing = [k for k in ("query", "title", "probs", "version") if k not in row]
            if missing:
                raise RequestLogError(f"{f}, line {n}: missing {missing}")
            out.rows.append(row)
    return out
