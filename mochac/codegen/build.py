"""Compile generated C with cffi into a cache folder keyed by content.

The key hashes the source, the compiler flags, the compiler's version and the
cffi and Python versions, so a warm cache loads the extension without running
the compiler. The cache folder is $MOCHAC_CACHE_DIR, or ~/.cache/mochac.

Beside each extension, <extension file name>.sha256 records its SHA-256 in
sha256sum's format. A cached extension whose digest does not match (a truncated or
damaged file) is compiled again rather than loaded, because loading a
truncated shared library can kill the process with SIGBUS.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import NamedTuple

import cffi

from mochac.codegen.c_source import CDEF
from mochac.durable_files import (
    digest_path,
    file_sha256,
    fsync_folder,
    parse_digest,
    write_digest,
)
from mochac.errors import CompileError

logger = logging.getLogger(__name__)

COMPILE_ARGS = ["-O3", "-march=native", "-fopenmp", "-std=c99", "-Wno-unused-function"]


def cache_dir() -> Path:
    """Return the build cache folder, created if needed; raise CompileError
    naming it when it cannot be."""
    setting = os.environ.get("MOCHAC_CACHE_DIR")
    path = Path(setting or Path.home() / ".cache" / "mochac")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        source = "MOCHAC_CACHE_DIR" if setting else "the default cache folder"
        raise CompileError(
            f"cannot use {path} ({source}) as the build cache: {error.strerror}; "
            "set MOCHAC_CACHE_DIR to a writable folder"
        ) from error
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


class ElfLayout(NamedTuple):
    """Byte offsets of the ELF fields elf_problem reads, from the System V ABI."""

    word: str  # struct format of an address or offset
    table_offset_at: int  # e_phoff; e_shoff follows it
    entry_sizes_at: int  # e_phentsize; e_phnum, e_shentsize, e_shnum follow it
    header_size: int  # the ELF header
    entry_size: int  # one program header
    segment_offset_at: int  # p_offset in a program header
    segment_size_at: int  # p_filesz in a program header


# Per EI_CLASS: 1 is 32-bit, 2 is 64-bit.
ELF_LAYOUTS = {
    1: ElfLayout("I", 0x1C, 0x2A, 52, 32, 4, 16),
    2: ElfLayout("Q", 0x20, 0x36, 64, 56, 8, 32),
}
PT_LOAD = 1


def elf_problem(path: Path) -> str | None:
    """Return why the shared library at ``path`` is cut short, or None when its
    program headers, loaded segments and section headers lie inside the file.

    This cheap check catches a truncated extension without a recorded
    digest. Loading one maps pages past the end of the file, which kills
    the process with SIGBUS. Platforms other than Linux are not checked.
    """
    if not sys.platform.startswith("linux"):
        return None
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header = handle.read(64)
        layout = ELF_LAYOUTS.get(header[4]) if len(header) > 4 else None
        if header[:4] != b"\x7fELF" or layout is None:
            return f"it is not an ELF shared library ({size} bytes)"
        if len(header) < layout.header_size:
            return f"its ELF header ends past its {size} bytes"
        order = "<" if header[5] == 1 else ">"
        table_at, sections_at = struct.unpack_from(
            f"{order}2{layout.word}", header, layout.table_offset_at
        )
        entry_size, entries, section_size, sections = struct.unpack_from(
            f"{order}4H", header, layout.entry_sizes_at
        )
        if entries and entry_size < layout.entry_size:
            return f"its program header size {entry_size} is invalid"
        if table_at + entry_size * entries > size:
            return f"its program headers end past its {size} bytes"
        if sections_at + section_size * sections > size:
            return f"its section headers end past its {size} bytes"
        handle.seek(table_at)
        table = handle.read(entry_size * entries)
    for index in range(entries):
        start = index * entry_size
        kind = struct.unpack_from(f"{order}I", table, start)[0]
        offset = struct.unpack_from(
            f"{order}{layout.word}", table, start + layout.segment_offset_at
        )[0]
        file_size = struct.unpack_from(
            f"{order}{layout.word}", table, start + layout.segment_size_at
        )[0]
        # Loading maps each PT_LOAD segment from the file.
        if kind == PT_LOAD and offset + file_size > size:
            return f"a loaded segment ends at byte {offset + file_size} of {size}"
    return None


def extension_problem(path: Path, size: int | None, sha256: str | None) -> str | None:
    """Return why the extension at ``path`` is damaged, or None when it can be
    loaded: its size and SHA-256 when they are known, else elf_problem."""
    try:
        actual = path.stat().st_size
        if size is not None and actual != size:
            return f"it has {actual} bytes instead of {size}"
        if sha256 is not None:
            if file_sha256(path) != sha256:
                return "its SHA-256 differs from the one recorded when it was written"
            return None
        return elf_problem(path)
    except OSError as error:
        return f"it cannot be read ({error})"


def recorded_sha256(extension: Path) -> str | None:
    """Return the SHA-256 recorded beside a cached extension, or None when
    there is no readable record (caches written before records existed)."""
    try:
        text = digest_path(extension).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    return parse_digest(text, extension.name)


def temporary_file(folder: Path, name: str) -> Path:
    """Create an empty file with a unique name ".<name>.<random>.tmp" in ``folder``."""
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{name}.", suffix=".tmp", dir=folder
    )
    os.close(descriptor)
    return Path(temporary)


def publish_extension(built: Path, path: Path) -> None:
    """Copy the built extension into the cache as ``path``, with its digest record.

    The copy goes to a temporary name in the cache folder and is renamed,
    because the build folder may be on another file system, where a rename
    fails with EXDEV. Both files are fsynced before their rename, so a
    power loss cannot leave a truncated extension under its final name.
    """
    folder = path.parent
    record = digest_path(path)
    staging = record_staging = None
    try:
        staging = temporary_file(folder, path.name)
        record_staging = temporary_file(folder, record.name)
        shutil.copyfile(built, staging)
        shutil.copymode(built, staging)
        write_digest(staging, record_staging, path.name)
        # The record is renamed first, so a reader that finds the new
        # extension also finds its record.
        os.replace(record_staging, record)
        os.replace(staging, path)
        fsync_folder(folder)
    finally:
        for leftover in (staging, record_staging):
            if leftover is not None:
                leftover.unlink(missing_ok=True)


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
        problem = extension_problem(path, None, recorded_sha256(path))
        if problem is None:
            logger.info("net '%s': compiled module cache hit (%s)", net_name, path.name)
            return load_extension(path, module_name), path
        logger.warning(
            "net '%s': cached extension %s is damaged (%s); compiling it again",
            net_name,
            path,
            problem,
        )

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
            try:
                kept.write_text(source)
                where = f"the source is kept at {kept}"
            except OSError as write_error:
                where = f"the source could not be kept at {kept} ({write_error})"
            output = str(error)
            raise CompileError(
                f"net '{net_name}': the C compiler failed on generated code; "
                f"{where}\n{output}",
                output=output,
                source_path=str(kept),
            ) from error
        logger.debug("net '%s': generated C at %s", net_name, c_path)
        try:
            publish_extension(Path(built), path)
        except OSError as error:
            raise CompileError(
                f"net '{net_name}': cannot store the compiled extension in the "
                f"cache folder {folder}: {error}; check that it is a writable "
                "folder with free space, or set MOCHAC_CACHE_DIR to another one"
            ) from error
    (folder / f"{module_name}.c").write_text(source)
    return load_extension(path, module_name), path
