"""The locked dependency sets (.ci/requirements.lock, .ci/requirements-cuda.lock) against pyproject.toml
and against what is installed: a new machine gets exactly what was tested. `bash .ci/lock` re-locks."""
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)")


def entries(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, hashes)} of a lock written by uv pip compile --generate-hashes."""
    out, current = {}, None
    for line in lock.read_text().splitlines():
        m = PIN.match(line)
        if m:
            current = canonicalize_name(m.group(1))
            out[current] = (m.group(2), [])
        elif current and line.strip().startswith("--hash=sha256:"):
            out[current][1].append(line.strip().split(":", 1)[1].rstrip(" \\"))
        elif not line.startswith(" "):
            current = None
    return out


def pins(lock: Path) -> dict[str, str]:
    return {n: v for n, (v, _) in entries(lock).items()}


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project.get("optional-dependencies", {}).values() for r in extra]
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-cuda.lock"])
def test_every_dependency_of_pyproject_is_locked_within_its_range_and_hashed(lock):
    path = REPO / ".ci" / lock
    locked = pins(path)
    assert len(locked) > 50, f"{path} looks empty: run bash .ci/lock"
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is in pyproject.toml but not in {path}: run bash .ci/lock"
        version = Version(locked[name])
        # torch's +cpu is a local version: compare the public part with the specifier
        assert req.specifier.contains(Version(version.public), prereleases=True), \
            f"{path} pins {name}=={version}, outside pyproject's {req.specifier}: run bash .ci/lock"
    unhashed = [n for n, (_, hashes) in entries(path).items() if not hashes]
    assert not unhashed, f"{path}: pins without a hash cannot be installed with --require-hashes: {unhashed}"


def test_the_cpu_lock_takes_the_cpu_torch_and_the_cuda_lock_the_same_rest():
    cpu, cuda = pins(REPO / ".ci" / "requirements.lock"), pins(REPO / ".ci" / "requirements-cuda.lock")
    assert cpu["torch"].endswith("+cpu") and not cuda["torch"].endswith("+cpu")
    assert not any(n.startswith("nvidia-") for n in cpu) and any(n.startswith("nvidia-") for n in cuda)
    shared = {n for n in cpu if n != "torch"} & set(cuda)
    assert {n: cpu[n] for n in shared} == {n: cuda[n] for n in shared}


def test_the_installed_environment_is_the_locked_one():
    """What these tests run on is what .ci/install gives a new machine."""
    drift = {}
    for name, version in pins(REPO / ".ci" / "requirements.lock").items():
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            drift[name] = (version, None)
            continue
        if Version(have) != Version(version):
            drift[name] = (version, have)
    assert not drift, f"installed packages differ from .ci/requirements.lock (locked, installed): {drift}; run bash .ci/install"
