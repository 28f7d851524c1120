"""The stage contract.

A stage is a function from input files + its slice of the round spec to
output files + a metrics record. It writes into a temporary folder that is
renamed to workdir/stages/NAME only when the stage returns, together with
`_complete.json` holding the stage's fingerprint. The fingerprint hashes the
stage's spec slice, the external files it reads and the fingerprints of the
stages it depends on, so a rerun skips a stage exactly when nothing it
depends on changed. The local runner and a Kubernetes Job call the same
`execute()`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from .. import __version__
from ..atomic import atomic_dir, atomic_write_json, remove_stale_temps
from ..errors import AdoreError
from ..hardware import Hardware, HardwareError, for_stage
from ..timestamps import now_iso
from ..schema import SHARDED_STAGES, AdoreRound, shard_name, shard_of

log = logging.getLogger("adore.stage")
COMPLETE = "_complete.json"


class StageError(AdoreError, RuntimeError):
    """A stage failed for a reason the user can act on (shown without a traceback)."""


@dataclass
class StageContext:
    round: AdoreRound
    workdir: Path
    out: Path                 # temporary output folder; becomes workdir/stages/NAME
    name: str
    found_hardware: Hardware | None = None
    used_hardware: bool = False  # set when the stage asked for it: its metrics then record the device
    stage: "Stage | None" = None  # the Stage being run (execute sets it): a sharded stage finds its shards here

    @property
    def spec(self):
        return self.round.spec

    @property
    def hardware(self) -> Hardware:
        """The device and precision this stage computes with (adore.hardware)."""
        if self.found_hardware is None:
            self.found_hardware = stage_hardware(self.round, self.name)
        self.used_hardware = True
        return self.found_hardware

    def input(self, stage: str, *parts: str) -> Path:
        return stage_dir(self.workdir, stage).joinpath(*parts)

    def resolve(self, path: str) -> Path:
        return self.round.resolve(path)


@dataclass(frozen=True)
class Work:
    """What a stage got done, counted from its metrics record and the spec: the unit a rate is read in
    (pairs labelled/s, examples trained/s), so that a round's slowest stage shows at a glance."""
    unit: str
    count: Callable[[dict, object], float | None]   # (metrics, spec) -> how many units; None: nothing done


@dataclass
class Stage:
    name: str
    needs: list[str]
    run: Callable[[StageContext], dict]
    spec_paths: list[str]                                   # dotted paths into spec (snake_case)
    external_files: Callable[[AdoreRound], list[Path]] = lambda r: []
    summary_keys: list[str] = field(default_factory=list)   # metrics copied into the round status
    # A sharded stage's hook: how shard i of n runs (on a cluster, one Job each); `run` then merges.
    run_shard: Callable[[StageContext, int, int], dict] | None = None
    work: Work | None = None                                # what its rate is measured in
    # Fields under spec_paths that the stage does not read (dotted, snake_case), hashed at their default
    # whatever the round says: a knob only a later stage reads must not rerun this stage and all after it.
    unread: tuple[str, ...] = ()

    def shard(self, i: int, n: int) -> "Stage":
        """Shard i of n of this stage: same inputs and knobs, its own folder, fingerprint and run."""
        if self.run_shard is None:
            raise ValueError(f"stage {self.name!r} is not sharded (sharded: {', '.join(SHARDED_STAGES)})")
        hook = self.run_shard
        return replace(self, name=shard_name(self.name, i, n), run=lambda ctx: hook(ctx, i, n), run_shard=None)


def stage_hardware(round_: AdoreRound, name: str) -> Hardware:
    base = shard_of(name)
    try:
        return for_stage(round_.spec.runtime, base[0] if base else name)
    except HardwareError as e:
        raise StageError(str(e)) from None


def stage_dir(workdir: Path, name: str) -> Path:
    return Path(workdir) / "stages" / name


def _spec_slice(round_: AdoreRound, dotted: str, unread: tuple[str, ...] = ()):
    node = round_.spec
    for part in dotted.split("."):
        node = getattr(node, part)
    if not hasattr(node, "model_dump"):
        return node
    data = node.model_dump(mode="json", by_alias=True)
    for path in unread:
        prefix, _, name = path.rpartition(".")
        if prefix == dotted:
            info = type(node).model_fields[name]  # a KeyError here is a typo in the stage graph
            # Hashed at its default, whatever the round says: the stage does not depend on it, and a workdir made
            # before the field was marked unread, with the field at its default, keeps its fingerprint.
            data[info.alias or name] = info.get_default(call_default_factory=True)
    return data


def _hash_path(h, path: Path) -> None:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(path)).encode())
                hash_file(h, p)
    elif path.is_file():
        hash_file(h, path)
    else:
        h.update(b"<missing>")


def hash_file(h, path: Path) -> None:
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def read_complete(workdir: Path, name: str) -> dict | None:
    p = stage_dir(workdir, name) / COMPLETE
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def fingerprint(stage: Stage, round_: AdoreRound, workdir: Path) -> str:
    h = hashlib.sha256()
    h.update(f"{stage.name}|{__version__}".encode())
    for dotted in stage.spec_paths:
        h.update(dotted.encode())
        h.update(json.dumps(_spec_slice(round_, dotted, stage.unread), sort_keys=True).encode())
    for path in stage.external_files(round_):
        h.update(str(path).encode())
        _hash_path(h, Path(path))
    for need in stage.needs:
        done = read_complete(workdir, need)
        if done is None:
            raise StageError(f"stage {stage.name!r} needs stage {need!r}, which has not completed in {workdir}")
        h.update(done["fingerprint"].encode())
    return h.hexdigest()


def is_current(stage: Stage, round_: AdoreRound, workdir: Path) -> bool:
    done = read_complete(workdir, stage.name)
    if done is None:
        return False
    try:
        return done["fingerprint"] == fingerprint(stage, round_, workdir)
    except StageError:
        return False


def execute(stage: Stage, round_: AdoreRound, workdir: Path, force: bool = False) -> tuple[bool, dict]:
    """Run a stage unless its outputs are complete and current. Returns (ran, metrics)."""
    workdir = Path(workdir)
    (workdir / "stages").mkdir(parents=True, exist_ok=True)
    for p in remove_stale_temps(workdir / "stages", stage.name):
        log.info("removed the leftover of an interrupted stage: %s", p.name)
    fp = fingerprint(stage, round_, workdir)
    done = read_complete(workdir, stage.name)
    if not force and done is not None and done["fingerprint"] == fp:
        return False, done.get("metrics", {})
    hw = stage_hardware(round_, stage.name)  # a Job that asked for a GPU and has none fails here, at once
    started = time.time()
    started_at = now_iso()
    with atomic_dir(stage_dir(workdir, stage.name)) as tmp:
        ctx = StageContext(round_, workdir, tmp, stage.name, hw, stage=stage)
        metrics = stage.run(ctx) or {}
        metrics = {"durationSeconds": round(time.time() - started, 2), **metrics}
        if ctx.used_hardware:
            metrics["device"] = hw.describe()
        atomic_write_json(tmp / "metrics.json", metrics)
        atomic_write_json(tmp / COMPLETE, {"fingerprint": fp, "startedAt": started_at, "finishedAt": now_iso(),
                                           "metrics": metrics})
    return True, metrics


def shards_of(ctx: "StageContext") -> list[Stage]:
    """The shard Stages of the stage being run, as many as its spec's `shards`."""
    if ctx.stage is None or ctx.stage.run_shard is None:
        raise StageError(f"stage {ctx.name!r} was not run as a sharded stage (through execute)")
    n = getattr(ctx.spec.stages, ctx.stage.name).shards
    return [ctx.stage.shard(i, n) for i in range(n)]


def merge_shards(ctx: "StageContext", shards: list[Stage], filename: str) -> list[dict]:
    """Run the shards that are not complete yet (on a cluster each ran as its own Job before
    this), then put their records back in order: shard i holds items i, i+N, i+2N, ..."""
    from ..data.contract import read_records

    for s in shards:
        execute(s, ctx.round, ctx.workdir)
    parts = [read_records(stage_dir(ctx.workdir, s.name) / filename) for s in shards]
    records = [None] * sum(map(len, parts))
    for i, part in enumerate(parts):
        records[i::len(shards)] = part
    return records
