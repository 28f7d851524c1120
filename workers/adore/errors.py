"""The project's exceptions share one base, AdoreError.

Every error raised on purpose (bad input, a missing model or service, a stage the user can mend) is an
AdoreError: its message is written for the user, and `field` (dotted, as in the round file: e.g.
spec.runtime.device) or `path` (the file) names what is to blame where one is. The command line prints
an AdoreError without a traceback; anything else is a bug and keeps its traceback. Subclasses keep their
builtin base too (DataError is a ValueError), so callers that catch the builtin still work.
"""
from __future__ import annotations

from pathlib import Path


class AdoreError(Exception):
    def __init__(self, message: str, *, field: str | None = None, path: str | Path | None = None):
        super().__init__(message)
        self.field = field
        self.path = None if path is None else str(path)
