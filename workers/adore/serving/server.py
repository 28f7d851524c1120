"""Run a real tritonserver (from PyPI's nvidia-pytriton wheel) on a model repository.

The wheel carries tritonserver 2.51 with the python backend only. To run it
outside pytriton's own launcher (see ../../../.ci/install-triton.sh):

- LD_LIBRARY_PATH starts with this Python's LIBDIR (libpython for the stub)
  and the wheel's nvidia_pytriton.libs (the bundled shared libraries);
- a backend directory holds python/ with libtriton_python.so,
  triton_python_backend_utils.py and the stub built for this Python
  (python_backend_stubs/X.Y/triton_python_backend_stub). We build it in a
  temporary folder so site-packages is never written to;
- the venv's bin comes first on PATH, so the stub's embedded Python finds the
  venv (numpy, onnxruntime, transformers, adore): the stub's Python takes its
  prefix from the first `python3` on PATH.
- numpy < 2 in the stub. The 0.7.0 stub is built with a pybind11 that predates
  numpy 2's ABI: under numpy 2 every tensor crossing C++ -> Python is garbled
  (a BYTES input of b"q" arrives as length 0x01010101 and the stub aborts
  with "unpack_from requires a buffer of at least 16843013 bytes"). When this
  Python has numpy >= 2 we therefore give the stub its own tiny venv in the
  work folder: bin/python3 -> this interpreter, and a .pth that puts a
  numpy 1.26 folder (installed by install-triton.sh with pip --target)
  ahead of this venv's site-packages. Nothing in the project's venv changes.

Models are loaded and unloaded explicitly (--model-control-mode=explicit),
through control.TritonControl, the client rollout uses too.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import AdoreError
from .control import TritonControl, TritonError

INSTALL_HINT = "install it with `.ci/install-triton.sh .venv` (pip install --no-deps nvidia-pytriton==0.7.0)"


class TritonNotFound(AdoreError, RuntimeError):
    """The tritonserver binary or one of the pieces it needs is missing."""


class TritonServerError(TritonError):
    """tritonserver failed to start, exited, or refused a request (then with the tail of its log)."""


@dataclass(frozen=True)
class TritonInstall:
    root: Path            # .../site-packages/pytriton/tritonserver
    binary: Path          # root/bin/tritonserver
    libs: Path            # .../site-packages/nvidia_pytriton.libs
    python_backend: Path  # root/backends/python (libtriton_python.so, triton_python_backend_utils.py)
    stub: Path            # root/python_backend_stubs/X.Y/triton_python_backend_stub


NUMPY1_ENV = "ADORE_TRITON_NUMPY1_SITE"


def numpy1_site() -> Path:
    """Folder holding numpy 1.x for the python-backend stub (see the module docstring)."""
    return Path(os.environ.get(NUMPY1_ENV) or Path(sys.prefix) / "triton-stub" / "site")


def needs_numpy1() -> bool:
    import importlib.metadata as md

    try:
        return int(md.version("numpy").split(".")[0]) >= 2
    except md.PackageNotFoundError:
        return False


def find_triton(python_version: str | None = None) -> TritonInstall:
    """Locate tritonserver and its python backend in the installed nvidia-pytriton wheel.

    Uses find_spec, not import: pytriton's __init__ needs dependencies that
    install-triton.sh deliberately skips (it pins numpy<2).
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFound(f"the nvidia-pytriton package (which ships tritonserver) is not installed; {INSTALL_HINT}")
    pkg = Path(list(spec.submodule_search_locations)[0])
    root = pkg / "tritonserver"
    pyver = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    inst = TritonInstall(
        root=root, binary=root / "bin" / "tritonserver", libs=pkg.parent / "nvidia_pytriton.libs",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / pyver / "triton_python_backend_stub")
    needed = {
        "tritonserver binary": inst.binary,
        "bundled libraries folder nvidia_pytriton.libs": inst.libs,
        "python backend libtriton_python.so": inst.python_backend / "libtriton_python.so",
        "python backend triton_python_backend_utils.py": inst.python_backend / "triton_python_backend_utils.py",
        f"python backend stub for Python {pyver}": inst.stub,
    }
    missing = [f"{what} ({path})" for what, path in needed.items() if not path.exists()]
    if missing:
        raise TritonNotFound("nvidia-pytriton is installed but incomplete, missing: " + "; ".join(missing)
                             + f"; {INSTALL_HINT}")
    return inst


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def stub_python(workdir: Path) -> Path:
    """A venv for the stub's embedded Python: this venv's packages, with numpy 1.x first.

    Returns the bin folder to put first on PATH. Only used when this
    Python's numpy is >= 2 (see the module docstring).
    """
    site_np1 = numpy1_site()
    if not (site_np1 / "numpy").is_dir():
        raise TritonNotFound(
            f"the python backend stub of nvidia-pytriton 0.7.0 needs numpy < 2 (this venv has numpy >= 2, which "
            f"garbles every tensor the stub passes to Python), and no numpy 1.x was found in {site_np1}; "
            f"{INSTALL_HINT.split(' (')[0]} (it installs numpy 1.26 there with pip --target), or set {NUMPY1_ENV}")
    venv = Path(workdir) / "stub-venv"
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_dir = venv / "lib" / pyver / "site-packages"
    site_dir.mkdir(parents=True, exist_ok=True)
    (venv / "bin").mkdir(exist_ok=True)
    base = Path(getattr(sys, "_base_executable", None) or sys.executable).resolve()
    for name in ("python3", "python", pyver):
        link = venv / "bin" / name
        if not link.is_symlink():
            link.symlink_to(base)
    (venv / "pyvenv.cfg").write_text(f"home = {base.parent}\ninclude-system-site-packages = false\n"
                                     f"version = {sys.version.split()[0]}\n")
    import site

    lines = [str(site_np1.resolve())] + [f"import site; site.addsitedir({p!r})" for p in site.getsitepackages()]
    (site_dir / "adore_triton_stub.pth").write_text("\n".join(lines) + "\n")
    return venv / "bin"


def triton_env(inst: TritonInstall, workdir: Path, base: dict | None = None) -> dict[str, str]:
    """The environment tritonserver and the python-backend stub need."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir or not any(Path(libdir).glob("libpython3*.so*")):
        raise TritonNotFound(f"no shared libpython in this Python's LIBDIR ({libdir}); the python backend stub needs a "
                             "Python built with --enable-shared")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [libdir, str(inst.libs)] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    # The venv's bin first: the stub's embedded Python finds its prefix (and site-packages) from PATH.
    # Not resolve(): a venv's python is a symlink to the base interpreter.
    first = [str(Path(sys.executable).parent)]
    if needs_numpy1():
        first.insert(0, str(stub_python(workdir)))
    env["PATH"] = os.pathsep.join(first + [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in first])
    for var in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV"):  # the stub ignores PYTHONPATH anyway
        env.pop(var, None)
    return env


def prepare_backends(inst: TritonInstall, dest: Path) -> Path:
    """Build DEST/python with the python backend and this Python's stub; return DEST."""
    py = Path(dest) / "python"
    py.mkdir(parents=True, exist_ok=True)
    for src in (inst.python_backend / "libtriton_python.so", inst.python_backend / "triton_python_backend_utils.py",
                inst.stub):
        shutil.copy2(src, py / src.name)
    (py / inst.stub.name).chmod(0o755)
    return Path(dest)


class TritonServer:
    """A tritonserver process serving REPO_PATH with explicit model control.

        with TritonServer(repo, http_port=8000, grpc_port=8001, metrics_port=8002) as server:
            server.load("adore-student")
            ...  # adore.serving.client.score(server.http_url, "adore-student", ...)

    Ports of 0 pick free ones. The server's log goes to `log_path`; errors
    quote its tail.
    """

    def __init__(self, repo_path: Path | str, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                 *, host: str = "127.0.0.1", startup_timeout: float = 60.0, workdir: Path | str | None = None,
                 log_verbose: int = 0, exit_timeout: int = 10, extra_args: list[str] | tuple[str, ...] = ()):
        self.repo_path = Path(repo_path).resolve()
        self.host = host
        self.http_port = http_port or free_port(host)
        self.grpc_port = grpc_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.startup_timeout = startup_timeout
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)
        self.exit_timeout = exit_timeout
        self._workdir_arg = Path(workdir) if workdir else None
        self.workdir: Path | None = None
        self._own_workdir = False
        self.install: TritonInstall | None = None
        self.proc: subprocess.Popen | None = None
        # Our own prefix for the python backend's /dev/shm regions, so stop() can remove
        # what a crashed or killed stub leaves behind (Triton cleans up only on a clean exit).
        self.shm_prefix = f"adore_triton_{uuid.uuid4().hex[:12]}_"
        self.log_path: Path | None = None
        self._log = None

    # -- addresses ---------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    # -- lifecycle ---------------------------------------------------------
    def command(self, backend_dir: Path) -> list[str]:
        inst = self.install or find_triton()
        return [
            str(inst.binary),
            f"--model-repository={self.repo_path}",
            "--model-control-mode=explicit",
            f"--backend-directory={backend_dir}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=true", f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false", "--allow-cpu-metrics=true",
            "--pinned-memory-pool-byte-size=0",  # no CUDA here
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]

    def start(self) -> "TritonServer":
        if self.proc is not None:
            raise TritonServerError("tritonserver is already started")
        if not self.repo_path.is_dir():
            raise TritonServerError(f"model repository {self.repo_path} does not exist")
        self.install = find_triton()
        if self._workdir_arg:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir, self._own_workdir = Path(tempfile.mkdtemp(prefix="adore-triton-")), True
        backend_dir = prepare_backends(self.install, self.workdir / "backends")
        env = triton_env(self.install, self.workdir)
        self.log_path = self.workdir / "tritonserver.log"
        self._log = open(self.log_path, "ab")
        # Own session: on a hard kill we can signal the server and its stub processes together.
        self.proc = subprocess.Popen(self.command(backend_dir), env=env, cwd=self.workdir, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self.wait_ready(self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise TritonServerError(f"tritonserver exited with code {self.proc.returncode} while starting"
                                        + self._tail())
            try:
                if self.control.server_ready(timeout=2):
                    return
            except TritonError:  # not listening yet
                pass
            if time.monotonic() > deadline:
                raise TritonServerError(f"tritonserver not ready on {self.http_url} after {timeout:.0f} s" + self._tail())
            time.sleep(0.2)

    def stop(self, timeout: float | None = None) -> None:
        timeout = self.exit_timeout + 10 if timeout is None else timeout
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # tritonserver unloads models and stops the stubs
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        if proc is not None:
            # A server that crashed leaves its python-backend stubs running (they ignore SIGTERM
            # while waiting on their parent); they are in the server's own process group.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for leftover in Path("/dev/shm").glob(self.shm_prefix + "*"):
            try:
                leftover.unlink()
            except OSError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir, self._own_workdir = None, False

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- model control -----------------------------------------------------
    @property
    def control(self) -> TritonControl:
        self._started()
        return TritonControl(self.http_url)

    def load(self, model: str, timeout: float = 120.0) -> None:
        """Load (or reload) MODEL from the repository; raises with Triton's reason on failure."""
        self._with_tail(lambda: self.control.load(model, timeout))

    def unload(self, model: str, timeout: float = 60.0) -> None:
        self._with_tail(lambda: self.control.unload(model, timeout))

    def model_ready(self, model: str, version: int | str | None = None) -> bool:
        return self._with_tail(lambda: self.control.ready(model, version))

    def repository_index(self) -> list[dict]:
        return self._with_tail(lambda: self.control.repository_index())

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
            return r.read().decode()

    # -- internals ---------------------------------------------------------
    def _started(self) -> None:
        if self.proc is None:
            raise TritonServerError("tritonserver is not started")

    def _with_tail(self, request):
        # The server's own log says why it refused (a model's traceback); the reply only says that it did.
        try:
            return request()
        except TritonServerError:
            raise
        except TritonError as e:
            raise TritonServerError(f"{e}{self._tail()}") from e

    def _tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        if self._log is not None:
            self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"\n--- last lines of {self.log_path} ---\n" + "\n".join(text)
