"""Compile generated C with cffi into a cache folder keyed by content.

The key hashes the source and its cffi interface, the compiler flags, the
compiler's version, the cffi and Python versions, the BLAS library's folder
and the CPU's model and flags, so a warm cache loads the extension without
running the compiler. The cache folder is $MOCHAC_CACHE_DIR, or ~/.cache/mochac.
The key leaves out the net name in the source's header comment, so nets that
differ only in name (a train net and its test net of the same layers) share
one extension, and the C file kept beside it names the net compiled first.

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
import re
import shutil
import stat
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import cffi

from mochac.codegen.c_source import CDEF
from mochac.codegen.compiler_output import (
    CompilerOutput,
    build_folder_problem,
    free_bytes,
    same_file_system,
)
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
    if setting:
        path = Path(setting)
    elif os.environ.get("HOME") == "":
        # Python takes an empty HOME as the root folder.
        raise CompileError(
            "cannot find the default build cache ~/.cache/mochac: HOME is set "
            "but empty; set HOME to your home folder or MOCHAC_CACHE_DIR to a "
            "writable folder"
        )
    else:
        try:
            path = Path.home() / ".cache" / "mochac"
        except RuntimeError as error:
            # HOME is unset and the user has no entry in the password database
            # (a container run with an arbitrary uid, say).
            raise CompileError(
                "cannot find the default build cache ~/.cache/mochac: HOME is "
                f"not set and user id {os.getuid()} has no entry in the password "
                "database; set MOCHAC_CACHE_DIR to a writable folder"
            ) from error
    source = "MOCHAC_CACHE_DIR" if setting else "the default cache folder"
    if path.exists() and not path.is_dir():
        raise CompileError(
            f"cannot use {path} ({source}) as the build cache: it is a file, not "
            "a folder; set MOCHAC_CACHE_DIR to a writable folder"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CompileError(
            f"cannot use {path} ({source}) as the build cache: {error.strerror}; "
            "set MOCHAC_CACHE_DIR to a writable folder"
        ) from error
    return path


# Environment variables that setuptools' compiler setup (customize_compiler)
# reads, so a change of any of them changes the built extension.
BUILD_ENVIRONMENT = ("CC", "CPPFLAGS", "CFLAGS", "LDSHARED", "LDFLAGS")


def compiler_version() -> str:
    """Return the first line of ``--version`` of the compiler setuptools runs:
    $CC when set, else the one Python was built with."""
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return _compiler_version(compiler)


@functools.cache
def _compiler_version(compiler: str) -> str:
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


# The header comment's line that names the net (templates/c/net.c.j2). The
# name appears nowhere else in the generated C, and comment_text keeps it on
# one line.
NET_NAME_LINE = re.compile(
    r'\A(/\*\n \* Generated by mochac .* from net )".*"( \(\w+\)\.\n)'
)


def without_net_name(source: str) -> str:
    """Return ``source`` with the net name of its header comment replaced by
    "*", which leaves the compiled code unchanged."""
    return NET_NAME_LINE.sub(r'\1"*"\2', source, count=1)


def source_key(source: str) -> str:
    """Return the cache key of a generated source: the source without its net
    name and every input of its build (flags, compiler, the compiler's
    environment variables, cffi, Python, BLAS, CPU)."""
    digest = hashlib.sha256()
    for part in (
        source_digest(without_net_name(source)),
        " ".join(COMPILE_ARGS),
        compiler_version(),
        repr([os.environ.get(name) for name in BUILD_ENVIRONMENT]),
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
        if sha256 == DAMAGED_RECORD:
            return "its SHA-256 record cannot be read"
        if sha256 is not None:
            if file_sha256(path) != sha256:
                return "its SHA-256 differs from the one recorded when it was written"
            return None
        return elf_problem(path)
    except OSError as error:
        return f"it cannot be read ({error})"


def recorded_sha256(extension: Path) -> str | None:
    """Return the SHA-256 recorded beside a cached extension, or None when
    there is no record (caches written before records existed).

    A record that exists but cannot be read or parsed returns
    DAMAGED_RECORD, which matches no digest, so the extension is compiled
    again and the record rewritten rather than trusted to the ELF check.
    """
    record = digest_path(extension)
    try:
        text = record.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return DAMAGED_RECORD
    return parse_digest(text, extension.name) or DAMAGED_RECORD


# The value recorded_sha256 returns for a damaged record, which is no hex digest.
DAMAGED_RECORD = "damaged record"


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
    """Import a compiled cffi extension from ``path``.

    The extension needs OpenBLAS by its soname, and its run path is the
    library folder of the environment that built it. Importing
    scipy_openblas32 loads this environment's OpenBLAS under that soname
    first, so the dynamic linker reuses it. A compiled package then loads in
    another environment, and after the one that built it is deleted.
    Raises CompileError when the extension still cannot be loaded.
    """
    import scipy_openblas32  # noqa: F401  (loads its library with RTLD_GLOBAL)

    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        raise CompileError(
            f"cannot load the compiled extension {path}: {error}. Compile it "
            "again in this environment: run `mochac compile` again for a "
            "compiled package, or delete the file from the cache folder",
            source_path=str(path),
        ) from error
    return module


BUILD_FOLDER_PREFIX = "mochac-build-"
# A build takes seconds, so a build folder this old belongs to a process
# that was killed before it could remove it.
STALE_BUILD_SECONDS = 24 * 3600


def remove_stale_build_folders(folder: Path | None = None, now: float | None = None):
    """Remove this user's build folders in the temporary folder that are
    older than STALE_BUILD_SECONDS; a build killed with SIGKILL leaves its
    folder behind."""
    folder = Path(tempfile.gettempdir()) if folder is None else folder
    now = time.time() if now is None else now
    try:
        candidates = list(folder.glob(f"{BUILD_FOLDER_PREFIX}*"))
    except OSError:
        return
    for candidate in candidates:
        try:
            info = candidate.lstat()
        except OSError:
            continue
        if not candidate.is_dir() or candidate.is_symlink():
            continue
        if info.st_uid != os.getuid() or now - info.st_mtime < STALE_BUILD_SECONDS:
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        logger.debug("removed the stale build folder %s", candidate)


def remove_stale_cache_temporaries(folder: Path, now: float | None = None) -> None:
    """Remove this user's temporary files (temporary_file) in the cache
    ``folder`` that are older than STALE_BUILD_SECONDS. A process killed
    while it copied an extension or its record into the cache leaves one
    behind, and no later build reuses its random name."""
    now = time.time() if now is None else now
    try:
        candidates = list(folder.glob("._mochac_*.tmp"))
    except OSError:
        return
    for candidate in candidates:
        try:
            info = candidate.lstat()
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                continue
            if now - info.st_mtime < STALE_BUILD_SECONDS:
                continue
            candidate.unlink()
        except OSError:
            continue
        logger.debug("removed the stale cache temporary file %s", candidate)


def build_folder_message(
    net_name: str, build_folder: Path, cache_folder: Path, problem: str, output: str
) -> str:
    """Return the error message of a build that failed because
    ``build_folder`` ``problem`` (build_folder_problem), ending with the
    compiler's ``output``."""
    free = free_bytes(build_folder)
    space = "" if free is None else f" ({free / 2**20:.1f} MiB free)"
    message = (
        f"net '{net_name}': the C compiler failed because the build folder "
        f"{build_folder} {problem}{space}, not because of the generated code. "
        "Free space there, or set TMPDIR to a writable folder on a disk with "
        "free space"
    )
    if same_file_system(build_folder, cache_folder):
        message += (
            f". The cache folder {cache_folder} is on the same file system, so "
            "set MOCHAC_CACHE_DIR to another folder as well"
        )
    return f"{message}\n{output}"


# The source keys whose compiler output this process has written to stderr.
SHOWN_OUTPUT_KEYS: set[str] = set()
SHOWN_OUTPUT_LOCK = threading.Lock()


def show_compiler_output(compiler_output: CompilerOutput, key: str, net_name: str):
    """Write the compiler's output of a successful build to stderr, where it
    would have gone without the capture, unless a build of the same source
    key in this process showed its output already.

    The same key compiles again into an empty cache (`mochac bench` times
    that), and its warnings would then show twice. A repeat goes to the
    DEBUG log.
    """
    if not compiler_output.text:
        return
    with SHOWN_OUTPUT_LOCK:
        shown = key in SHOWN_OUTPUT_KEYS
        SHOWN_OUTPUT_KEYS.add(key)
    if shown:
        logger.debug(
            "net '%s': the C compiler's output, as an earlier build of this "
            "source showed it:\n%s",
            net_name,
            compiler_output.text.rstrip(),
        )
        return
    compiler_output.forward()


def build_extension(source: str, net_name: str, cache_hit_level=logging.INFO):
    """Return (module, path) of the compiled extension for ``source``.

    Compiles only when the cache lacks it. A cache hit is logged at
    ``cache_hit_level`` and a compile always at INFO. Raises CompileError with
    the compiler's output and the path of the generated C file on failure.
    """
    key = source_key(source)
    module_name = f"_mochac_{key}"
    folder = cache_dir()
    path = folder / (module_name + extension_suffix())
    if path.exists():
        problem = extension_problem(path, None, recorded_sha256(path))
        if problem is None:
            logger.log(
                cache_hit_level,
                "net '%s': compiled module cache hit (%s)",
                net_name,
                path.name,
            )
            return load_extension(path, module_name), path
        logger.warning(
            "net '%s': cached extension %s is damaged (%s); compiling it again",
            net_name,
            path,
            problem,
        )

    logger.info("net '%s': compiling %s", net_name, path.name)
    include_dir, lib_dir, lib_name = blas_location()
    remove_stale_cache_temporaries(folder)
    try:
        remove_stale_build_folders()
        build_folder = tempfile.TemporaryDirectory(prefix=BUILD_FOLDER_PREFIX)
    except OSError as error:
        raise CompileError(
            f"net '{net_name}': cannot create a build folder in the temporary "
            f"folder: {error}; check that it has free space, or set TMPDIR to "
            "a writable folder"
        ) from error
    # The compiler names the folder by its resolved path (getcwd), which
    # differs from the one tempfile gives when TMPDIR is a symbolic link.
    folder_names = dict.fromkeys(
        [build_folder.name, os.path.realpath(build_folder.name)]
    )
    prefix_maps = [f"-fdebug-prefix-map={name}=." for name in folder_names]
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        module_name,
        source,
        include_dirs=[include_dir],
        library_dirs=[lib_dir],
        libraries=[lib_name],
        # Python's CFLAGS usually hold -g, which would write the random build
        # folder's path into the debug info. Two processes that compile one
        # key at once must write the same bytes, or the digest record one of
        # them renames into place may not match the extension of the other.
        extra_compile_args=[*COMPILE_ARGS, *prefix_maps],
        extra_link_args=["-fopenmp", f"-Wl,-rpath,{lib_dir}"],
    )
    with build_folder as tmp:
        c_path = Path(tmp) / f"{module_name}.c"
        try:
            with CompilerOutput() as compiler_output:
                built = ffi.compile(tmpdir=tmp, verbose=False)
        except OSError as error:
            # cffi writes the C file itself, so this is no compiler failure.
            compiler_output.forward()
            raise CompileError(
                f"net '{net_name}': cannot write the build files in {tmp}: "
                f"{error}; check that the temporary folder has free space, or "
                "set TMPDIR to another folder"
            ) from error
        except Exception as error:  # cffi raises VerificationError and others
            output = "\n".join(
                text for text in (compiler_output.text.rstrip(), str(error)) if text
            )
            problem = build_folder_problem(Path(tmp), output)
            if problem is not None:
                raise CompileError(
                    build_folder_message(net_name, Path(tmp), folder, problem, output),
                    output=output,
                ) from error
            kept = folder / f"{module_name}.failed.c"
            try:
                kept.write_text(source)
                where = f"the source is kept at {kept}"
            except OSError as write_error:
                where = f"the source could not be kept at {kept} ({write_error})"
            raise CompileError(
                f"net '{net_name}': the C compiler failed on generated code; "
                f"{where}\n{output}",
                output=output,
                source_path=str(kept),
            ) from error
        except BaseException:
            # A Ctrl-C: what the compiler wrote still reaches the terminal.
            compiler_output.forward()
            raise
        show_compiler_output(compiler_output, key, net_name)
        logger.debug("net '%s': generated C at %s", net_name, c_path)
        try:
            publish_extension(Path(built), path)
        except OSError as error:
            raise CompileError(
                f"net '{net_name}': cannot store the compiled extension in the "
                f"cache folder {folder}: {error}; check that it is a writable "
                "folder with free space, or set MOCHAC_CACHE_DIR to another one"
            ) from error
    keep_source_copy(folder / f"{module_name}.c", source, net_name)
    return load_extension(path, module_name), path


def keep_source_copy(path: Path, source: str, net_name: str) -> None:
    """Write the generated C beside its extension in the cache, for reading.

    Nothing loads this copy, so a failed write (a full disk, a cache folder
    deleted meanwhile) logs a warning and the build goes on. The copy is
    renamed into place when complete, so a reader never finds it cut short.
    """
    staging = None
    try:
        staging = temporary_file(path.parent, path.name)
        staging.write_text(source)
        os.replace(staging, path)
    except OSError as error:
        logger.warning(
            "net '%s': could not keep the generated C source at %s (%s); the "
            "compiled extension is in the cache and loads without it",
            net_name,
            path,
            error,
        )
    finally:
        if staging is not None:
            staging.unlink(missing_ok=True)
