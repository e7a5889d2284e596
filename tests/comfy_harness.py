"""The real ComfyUI engine for tests, benchmarks and the screenshot: where it is, how it imports, tiny models.

ComfyUI is not on the package index: tests use the source snapshot at ``../shared/comfyui/ComfyUI`` (seen from
the repository root) or the folder named by ``COMFYUI_PATH``, and skip with that reason where neither exists.

torchvision: the package index's wheels are built against CUDA torch and fail to load beside the CPU torch the
project pins. ComfyUI imports it at module level only in ``comfy.ldm.cascade``, ``comfy.ldm.cosmos`` and
``comfy.ldm.ace`` (Stable Cascade, Cosmos and ACE, families these tests never build). Where the real torchvision
cannot load, ``torchvision_stub()`` answers those three packages' ``import torchvision`` (and nothing else) with
a stand-in whose every attribute raises ImportError; every other module sees torchvision as absent, as before.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
SNAPSHOT = REPO.parent / "shared" / "comfyui" / "ComfyUI"
# the only importers the stub answers: packages of model families that the tests never build
STUB_IMPORTERS = ("comfy.ldm.cascade", "comfy.ldm.cosmos", "comfy.ldm.ace")
STUB_MODULES = ("torchvision", "torchvision.models", "torchvision.transforms")


def comfyui_path() -> Path | None:
    """The ComfyUI source folder: ``COMFYUI_PATH`` if set, else the shared snapshot; None if neither exists."""
    given = os.environ.get("COMFYUI_PATH")
    path = Path(given) if given else SNAPSHOT
    return path if (path / "comfy" / "sd.py").is_file() else None


SKIP_REASON = (
    f"ComfyUI not found: neither COMFYUI_PATH nor {SNAPSHOT} holds a ComfyUI source folder (comfy/sd.py)"
)


class _Unavailable(types.ModuleType):
    """A module whose public attributes raise: the model family that needs torchvision is not usable here."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or f"{self.__name__}.{name}" in STUB_MODULES:
            raise AttributeError(name)  # a submodule not imported yet: the import system imports it
        raise ImportError(
            f"{self.__name__}.{name}: torchvision cannot load beside this CPU torch; the test harness stands "
            "it in only so that ComfyUI imports (Stable Cascade, Cosmos and ACE are unusable here)"
        )


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``STUB_MODULES`` to importers under ``STUB_IMPORTERS`` only, and drops the stand-in from
    ``sys.modules`` at the next unrelated import, so that no other module ever receives it."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in STUB_MODULES:
            self._forget()
            return None
        if not _importer().startswith(STUB_IMPORTERS):
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=name == "torchvision")

    def create_module(self, spec: Any) -> types.ModuleType:
        return _Unavailable(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ == "torchvision":
            module.__path__ = []  # a package, so that its two submodules import

    @staticmethod
    def _forget() -> None:
        for name in STUB_MODULES:
            if isinstance(sys.modules.get(name), _Unavailable):
                del sys.modules[name]


def _importer() -> str:
    """The ``__name__`` of the module whose import statement is running (outside importlib's own frames)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith(("importlib", "_frozen_importlib")) and frame.f_code.co_filename != __file__:
            return name
        frame = frame.f_back
    return ""


def torchvision_loads() -> bool:
    """Whether the real torchvision imports beside this torch."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # a CUDA-built wheel raises OSError or RuntimeError, not only ImportError
        sys.modules.pop("torchvision", None)
        return False
    return True


def install_torchvision_stub() -> bool:
    """Install the scoped stand-in for the process where the real torchvision cannot load (True if installed)."""
    if torchvision_loads() or any(isinstance(f, _StubFinder) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, _StubFinder())
    return True


@contextmanager
def torchvision_stub() -> Iterator[None]:
    """The stand-in for the duration of the block (ComfyUI's imports), removed afterwards."""
    finder = _StubFinder()
    installed = not torchvision_loads()
    if installed:
        sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        if installed:
            sys.meta_path.remove(finder)
            finder._forget()


def import_engine(path: Path) -> types.ModuleType:
    """Import ComfyUI's engine from ``path`` without a server (CPU, no argument parsing of pytest's argv);
    returns its ``nodes`` module. Idempotent."""
    if "nodes" in sys.modules and hasattr(sys.modules["nodes"], "common_ksampler"):
        return sys.modules["nodes"]
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    argv = sys.argv
    sys.argv = [argv[0], "--cpu"]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()
        with torchvision_stub():
            import comfy.samplers  # noqa: F401
            import comfy.sd  # noqa: F401
            import nodes
    finally:
        sys.argv = argv
    return nodes


# -- a real ComfyUI server (the server test, the screenshot) -------------------------------------------------
START_TIMEOUT = 240  # seconds for the server to answer (imports, node packs) on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post(url: str, payload: dict, timeout: float = 10) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{url}: HTTP {error.code}: {error.read()[:2000]!r}") from None


def make_base(base: Path) -> None:
    """A server base directory: the tiny SD1.5 model file (float16), this repository as a cloned node pack (a
    link in ``custom_nodes/``, as ``git clone`` would leave it), and the test fixture node pack
    (``comfy_fixture_nodes`` plus this module's torchvision stand-in as its prestartup script)."""
    import torch
    from safetensors.torch import save_file

    import_engine(comfyui_path())  # the tiny model is made by ComfyUI's own classes
    import comfy_models

    models = base / "models" / "diffusion_models"
    models.mkdir(parents=True)
    sd = comfy_models.state_dict("sd15")
    save_file({k: v.to(torch.float16).contiguous() for k, v in sd.items()}, models / "tiny_sd15.safetensors")
    nodes_dir = base / "custom_nodes"
    nodes_dir.mkdir()
    (nodes_dir / "sparke").symlink_to(REPO, target_is_directory=True)
    fixtures = nodes_dir / "sparke_test_fixtures"
    fixtures.mkdir()
    shutil.copy(TESTS / "comfy_fixture_nodes.py", fixtures / "__init__.py")
    (fixtures / "prestartup_script.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport comfy_harness\n"
        "comfy_harness.install_torchvision_stub()\n"
    )


@contextmanager
def running_server(base: Path) -> Iterator[tuple[str, Path]]:
    """(url, log file) of ``main.py --cpu`` on 127.0.0.1 with ``--base-directory base``; stopped on exit
    (terminate, then kill), every wait bounded."""
    port = free_port()
    log = base / "server.log"
    env = {**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
               "--base-directory", str(base), "--disable-auto-launch"]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=comfyui_path(), stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise AssertionError(f"ComfyUI exited ({process.returncode}):\n{log.read_text()[-4000:]}")
            try:
                get(f"{url}/system_stats", timeout=2)
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"ComfyUI did not answer within {START_TIMEOUT} s:\n{log.read_text()[-4000:]}"
                    ) from None
                time.sleep(0.5)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)
