"""The build's guards, checked by configuring (not compiling) copies of the project with CMake.

A patch that does not apply and an unpatched external llama.cpp tree must stop
the build with a clear message; the installed library must carry the patch's API.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pykvd import models, paths

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = models.cache_dir() / "src" / "llama_cpp_python-0.3.36.tar.gz"

needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
needs_archive = pytest.mark.skipif(not ARCHIVE.exists(), reason="the pinned source archive is not cached")


def project_copy(root: Path) -> Path:
    """The files CMake reads, copied so that a test may change them."""
    src = root / "project"
    src.mkdir()
    for part in ("CMakeLists.txt", "cmake", "patches", "native"):
        source = REPO / part
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, src / part)
    return src


def configure(src: Path, build: Path, *defines: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["cmake", "-S", str(src), "-B", str(build), f"-DPython_EXECUTABLE={sys.executable}", *defines],
        capture_output=True,
        text=True,
        timeout=600,
    )


def messages(result: subprocess.CompletedProcess) -> str:
    """CMake's output with its line wrapping undone."""
    return " ".join((result.stdout + result.stderr).split())


@needs_cmake
@needs_archive
def test_a_patch_that_does_not_apply_stops_the_build(tmp_path):
    src = project_copy(tmp_path)
    (src / "patches" / "9999-broken.patch").write_text(
        "--- a/include/llama.h\n+++ b/include/llama.h\n@@ -1,3 +1,3 @@\n-no such line\n+something\n context\n"
    )
    result = configure(src, tmp_path / "build")
    assert result.returncode != 0
    assert "9999-broken.patch does not apply" in messages(result)


@needs_cmake
def test_an_unpatched_external_tree_is_refused(tmp_path):
    tree = tmp_path / "llama.cpp"
    (tree / "include").mkdir(parents=True)
    (tree / "include" / "llama.h").write_text("/* an unpatched tree */\n")
    result = configure(project_copy(tmp_path), tmp_path / "build", f"-DPYKVD_LLAMA_SOURCE_DIR={tree}")
    assert result.returncode != 0
    assert "is not patched" in messages(result)


def test_the_installed_library_exports_the_patch_api():
    lib = ctypes.CDLL(str(paths.lib_dir() / "libllama.so"))
    lib.llama_kvd_arch_known.restype = ctypes.c_bool
    lib.llama_kvd_arch_known.argtypes = [ctypes.c_char_p]
    assert lib.llama_kvd_arch_known(b"gemma3") and not lib.llama_kvd_arch_known(b"notarealarch")
    assert (paths.include_dir() / "llama-kvd.h").exists()


def test_the_installed_library_exports_the_architecture_list():
    lib = ctypes.CDLL(str(paths.lib_dir() / "libllama.so"))
    lib.llama_kvd_architectures.restype = ctypes.POINTER(ctypes.c_char_p)
    lib.llama_kvd_arch_unsupported_reason.restype = ctypes.c_char_p
    lib.llama_kvd_arch_unsupported_reason.argtypes = [ctypes.c_char_p]
    names = lib.llama_kvd_architectures()
    listed = []
    while names[len(listed)] is not None:
        listed.append(names[len(listed)].decode())
    assert {"llama", "gemma3", "gpt-oss"} <= set(listed)
    assert all(lib.llama_kvd_arch_unsupported_reason(name.encode()) is None for name in listed)
    assert b"recurrent" in lib.llama_kvd_arch_unsupported_reason(b"mamba")


def _patch_lines(path: Path) -> list[str]:
    return [
        line
        for line in path.read_text().splitlines()
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]


def test_the_patches_keep_no_global_state():
    """Per-call state travels in graph params and arguments, not in thread-locals or globals."""
    added = [
        line
        for patch in sorted((REPO / "patches").glob("*.patch"))
        for line in _patch_lines(patch)
        if line.startswith("+")
    ]
    assert not [line for line in added if "thread_local" in line]
    assert not [line for line in added if line.startswith("+static") and "(" not in line and "const" not in line]


def test_each_architecture_file_changes_by_two_lines_at_most():
    """build_layer_inp at the top of each layer and keep_attn_rows after attention, nothing else."""
    per_file: dict[str, list[str]] = {}
    for patch in sorted((REPO / "patches").glob("*.patch")):
        current = None
        for line in patch.read_text().splitlines():
            if line.startswith("diff --git"):
                current = line.split()[-1][2:]
            elif current and current.startswith("src/models/") and line.startswith("+") and not line.startswith("+++"):
                per_file.setdefault(current, []).append(line[1:].strip())
    assert len(per_file) >= 13
    for path, lines in per_file.items():
        assert len(lines) == 2, path
        assert lines[0] == "inpL = build_layer_inp(il, inpL);", path
        assert lines[1].endswith("keep_attn_rows(" + lines[1].split(" = ")[0] + ", cur);"), path
