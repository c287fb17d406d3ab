"""Compile generated C with cffi into a cache folder keyed by content.

The key hashes the source, the compiler flags, the compiler's version and the
cffi and Python versions, so a warm cache loads the extension without running
the compiler. The cache folder is $MOCHAC_CACHE_DIR, or ~/.cache/mochac.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import cffi

from mochac.codegen.c_source import CDEF
from mochac.errors import CompileError

logger = logging.getLogger(__name__)

COMPILE_ARGS = ["-O3", "-march=native", "-fopenmp", "-std=c99", "-Wno-unused-function"]


def cache_dir() -> Path:
    root = os.environ.get("MOCHAC_CACHE_DIR") or Path.home() / ".cache" / "mochac"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def compiler_version() -> str:
    compiler = sysconfig.get_config_var("CC") or "cc"
    try:
        result = subprocess.run(
            compiler.split()[:1] + ["--version"],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.splitlines()[0] if result.stdout else compiler
    except OSError:
        return compiler


def blas_location() -> tuple[str, str, str]:
    """Return (include dir, library dir, library name) of the linked BLAS."""
    import scipy_openblas32

    return (
        scipy_openblas32.get_include_dir(),
        scipy_openblas32.get_lib_dir(),
        scipy_openblas32.get_library(),
    )


@functools.cache
def cpu_signature() -> str:
    """Return a short hash of this CPU's model and instruction-set flags.

    The code is built with -march=native, so an extension is only safe on a
    CPU with the same flags.
    """
    described = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags", "Features")):
                described += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        described += platform.processor()
    return hashlib.sha256(described.encode()).hexdigest()[:12]


def source_digest(source: str) -> str:
    """Return the hash of a generated source and its interface alone."""
    digest = hashlib.sha256()
    for part in (source, CDEF):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def source_key(source: str) -> str:
    """Return the cache key of a generated source: the source and every input
    of its build (flags, compiler, cffi, Python, BLAS, CPU)."""
    digest = hashlib.sha256()
    for part in (
        source_digest(source),
        " ".join(COMPILE_ARGS),
        compiler_version(),
        cffi.__version__,
        sys.version,
        blas_location()[1],
        cpu_signature(),
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def extension_suffix() -> str:
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def load_extension(path: Path, module_name: str):
    """Import a compiled cffi extension from ``path``."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_extension(source: str, net_name: str):
    """Return (module, path) of the compiled extension for ``source``.

    Compiles only when the cache lacks it. Raises CompileError with the
    compiler's output and the path of the generated C file on failure.
    """
    key = source_key(source)
    module_name = f"_mochac_{key}"
    folder = cache_dir()
    path = folder / (module_name + extension_suffix())
    if path.exists():
        logger.info("net '%s': compiled module cache hit (%s)", net_name, path.name)
        return load_extension(path, module_name), path

    logger.info("net '%s': compiling %s", net_name, path.name)
    include_dir, lib_dir, lib_name = blas_location()
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        module_name,
        source,
        include_dirs=[include_dir],
        library_dirs=[lib_dir],
        libraries=[lib_name],
        extra_compile_args=COMPILE_ARGS,
        extra_link_args=["-fopenmp", f"-Wl,-rpath,{lib_dir}"],
    )
    with tempfile.TemporaryDirectory(prefix="mochac-build-") as tmp:
        c_path = Path(tmp) / f"{module_name}.c"
        try:
            built = ffi.compile(tmpdir=tmp, verbose=False)
        except Exception as error:  # cffi raises VerificationError and others
            kept = folder / f"{module_name}.failed.c"
            kept.write_text(source)
            output = str(error)
            raise CompileError(
                f"net '{net_name}': the C compiler failed on generated code; the "
                f"source is kept at {kept}\n{output}",
                output=output,
                source_path=str(kept),
            ) from error
        logger.debug("net '%s': generated C at %s", net_name, c_path)
        # Publish atomically so a concurrent build never loads a partial file.
        staging = folder / f".{module_name}.{os.getpid()}.tmp"
        os.replace(built, staging)
        os.replace(staging, path)
    (folder / f"{module_name}.c").write_text(source)
    return load_extension(path, module_name), path
