"""The compiled-extension cache: publishing across file systems, digest
records, and damaged entries compiled again instead of loaded."""

import errno
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mochac import CPUBackend, InnerProductLayer, MemoryDataLayer, Net
from mochac.codegen.build import digest_path, elf_problem, recorded_sha256

X = np.arange(24, dtype=np.float32).reshape(8, 3)


def cache_net(output_dim: int):
    layers = [
        MemoryDataLayer(name="d", batch_size=4, data=[X], tops=["x"]),
        InnerProductLayer(name="ip", output_dim=output_dim, bottoms=["x"], tops=["y"]),
    ]
    return Net("cached", CPUBackend(threads=1, seed=0), layers)


def cached_extension(cache) -> Path:
    (extension,) = cache.glob("_mochac_*.so")
    return extension


def test_cache_on_other_file_system(tmp_path, monkeypatch, request):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MOCHAC_CACHE_DIR", str(cache))
    # The build folder goes to /dev/shm, a tmpfs, where there is one. The
    # patched os.replace also fails with EXDEV for any rename between
    # folders, as a rename between file systems does, so the test needs no
    # second file system.
    shared_memory = Path("/dev/shm")
    if shared_memory.is_dir() and os.access(shared_memory, os.W_OK):
        build_root = tempfile.TemporaryDirectory(dir=shared_memory)
        request.addfinalizer(build_root.cleanup)
        monkeypatch.setattr(tempfile, "tempdir", build_root.name)
    real_replace = os.replace

    def replace_within_folder(source, target):
        if Path(source).parent != Path(target).parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(source))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_within_folder)
    net = cache_net(output_dim=7)
    net.forward()
    assert net.blobs["y"].shape == (4, 7)
    extension = cached_extension(cache)
    digest = hashlib.sha256(extension.read_bytes()).hexdigest()
    assert recorded_sha256(extension) == digest
    assert not list(cache.glob(".*.tmp"))
    net.destroy()


# Builds cache_net in a fresh interpreter, because a process that has loaded
# an extension keeps using it, and a truncated one kills the process.
BUILD_IN_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from test_build_cache import cache_net
    net = cache_net(output_dim=5)
    net.forward()
    print(float(net.blobs["y"].sum()))
    """
)


def build_in_child(cache) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-c", BUILD_IN_CHILD, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "MOCHAC_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, (result.returncode, result.stderr)
    return result


@pytest.mark.parametrize("recorded", [True, False], ids=["record", "no-record"])
def test_truncated_cache_entry_rebuilt(tmp_path, recorded):
    cache = tmp_path / "cache"
    first = build_in_child(cache)
    extension = cached_extension(cache)
    if not recorded:
        # Caches written before records existed have only the extension.
        digest_path(extension).unlink()
    with open(extension, "r+b") as handle:
        handle.truncate(1000)
    second = build_in_child(cache)
    assert second.stdout == first.stdout
    assert "is damaged" in second.stderr
    assert "compiling it again" in second.stderr
    digest = hashlib.sha256(extension.read_bytes()).hexdigest()
    assert recorded_sha256(extension) == digest


def test_cache_entry_without_record_loads(tmp_path):
    cache = tmp_path / "cache"
    first = build_in_child(cache)
    extension = cached_extension(cache)
    digest_path(extension).unlink()
    modified = extension.stat().st_mtime_ns
    second = build_in_child(cache)
    assert second.stdout == first.stdout
    assert "damaged" not in second.stderr
    assert extension.stat().st_mtime_ns == modified


@pytest.mark.parametrize(
    "record", [b"not a digest\n", b"\xff\xfe\n"], ids=["text", "bytes"]
)
def test_damaged_record_rebuilds_extension(tmp_path, record):
    """A garbage digest record is not taken as a missing one: the extension
    is compiled again and the record rewritten."""
    cache = tmp_path / "cache"
    first = build_in_child(cache)
    extension = cached_extension(cache)
    digest_path(extension).write_bytes(record)
    second = build_in_child(cache)
    assert second.stdout == first.stdout
    assert "record cannot be read" in second.stderr
    assert "compiling it again" in second.stderr
    digest = hashlib.sha256(extension.read_bytes()).hexdigest()
    assert recorded_sha256(extension) == digest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF is Linux's")
def test_elf_problem_finds_truncation(tmp_path):
    cache = tmp_path / "cache"
    build_in_child(cache)
    data = cached_extension(cache).read_bytes()
    copy = tmp_path / "copy.so"
    copy.write_bytes(data)
    assert elf_problem(copy) is None
    for size in (0, 30, 64, 1000, len(data) // 2, len(data) - 1):
        copy.write_bytes(data[:size])
        assert elf_problem(copy) is not None, size


def test_cache_folder_that_is_a_file(tmp_path, monkeypatch):
    from mochac.errors import CompileError

    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MOCHAC_CACHE_DIR", str(blocker))
    with pytest.raises(CompileError, match=r"MOCHAC_CACHE_DIR.*writable folder"):
        cache_net(3)


def test_default_cache_without_home(monkeypatch):
    """Without HOME and a password database entry, Path.home() raises
    RuntimeError; the build reports it as a CompileError with the fix."""
    import pwd

    from mochac.codegen.build import cache_dir
    from mochac.errors import CompileError

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("MOCHAC_CACHE_DIR", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(CompileError) as caught:
        cache_dir()
    message = str(caught.value)
    assert "HOME is not set" in message
    assert "set MOCHAC_CACHE_DIR to a writable folder" in message


def test_default_cache_with_empty_home(monkeypatch):
    """An empty HOME would put the cache in the root folder, so the build
    raises a CompileError with the fix instead."""
    from mochac.codegen.build import cache_dir
    from mochac.errors import CompileError

    monkeypatch.delenv("MOCHAC_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", "")
    with pytest.raises(CompileError) as caught:
        cache_dir()
    message = str(caught.value)
    assert "HOME is set but empty" in message
    assert "MOCHAC_CACHE_DIR" in message


def test_source_copy_on_full_disk(tmp_path, monkeypatch, caplog):
    """A full disk while the build keeps its C source beside the extension
    leaves no cut-short copy, and the net still loads."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MOCHAC_CACHE_DIR", str(cache))
    real_write_text = Path.write_text
    source_copy = re.compile(r"_mochac_[0-9a-f]+\.c(\.|$)")

    def write_half(self, data, *args, **kwargs):
        if not source_copy.search(self.name):
            return real_write_text(self, data, *args, **kwargs)
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", write_half)
    with caplog.at_level("WARNING", logger="mochac.codegen.build"):
        net = cache_net(3)
    net.forward()
    assert net.blobs["y"].shape == (4, 3)
    assert cached_extension(cache).exists()
    assert list(cache.glob("*.c")) == []
    assert list(cache.glob(".*.tmp")) == []
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.name == "mochac.codegen.build" and record.levelno >= logging.WARNING
    ]
    assert any("could not keep the generated C source" in text for text in warnings)


def test_nets_differing_in_name_share_extension(tmp_path, monkeypatch):
    """The net name appears only in a comment, so the cache key leaves it out."""
    monkeypatch.setenv("MOCHAC_CACHE_DIR", str(tmp_path))

    def named_net(name: str, output_dim: int):
        layers = [
            MemoryDataLayer(name="d", batch_size=4, data=[X], tops=["x"]),
            InnerProductLayer(
                name="ip", output_dim=output_dim, bottoms=["x"], tops=["y"]
            ),
        ]
        return Net(name, CPUBackend(threads=1, seed=0), layers)

    first = named_net("train", 3)
    renamed = named_net('test "*/', 3)
    wider = named_net("train", 4)
    assert renamed.source != first.source
    assert renamed.extension_path == first.extension_path
    assert wider.extension_path != first.extension_path
    assert len(list(tmp_path.glob("_mochac_*.so"))) == 2
    renamed.forward()
    assert renamed.blobs["y"].shape == (4, 3)


def test_cflags_change_builds_again(tmp_path, monkeypatch):
    """setuptools passes $CFLAGS to the compiler, so the cache key covers it."""
    monkeypatch.setenv("MOCHAC_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("CFLAGS", raising=False)

    def built_path():
        layers = [
            MemoryDataLayer(name="d", batch_size=4, data=[X], tops=["x"]),
            InnerProductLayer(name="ip", output_dim=3, bottoms=["x"], tops=["y"]),
        ]
        return Net("flags", CPUBackend(threads=1, seed=0), layers).extension_path

    plain = built_path()
    monkeypatch.setenv("CFLAGS", "-DMOCHAC_TEST_FLAG=1")
    flagged = built_path()
    assert flagged != plain
    assert len(list(tmp_path.glob("_mochac_*.so"))) == 2
    monkeypatch.delenv("CFLAGS")
    assert built_path() == plain


def test_builds_of_one_key_are_identical(tmp_path, monkeypatch):
    """Two processes that compile one key at once each rename a digest record
    and then an extension into place, so the record that ends up beside the
    extension may be the other build's. The pair then matches only when both
    builds write the same bytes, although each compiles in its own build
    folder."""
    monkeypatch.setenv("CFLAGS", "-g")
    built = []
    for name in ("first", "second"):
        cache = tmp_path / name
        monkeypatch.setenv("MOCHAC_CACHE_DIR", str(cache))
        cache_net(5)
        built.append(cached_extension(cache))
    assert built[0].name == built[1].name
    assert built[0].read_bytes() == built[1].read_bytes()


def test_builds_identical_with_linked_tmpdir(tmp_path, monkeypatch):
    """The compiler writes the build folder's resolved path into the debug
    info, so builds of one key match also when the temporary folder is
    reached through a symbolic link."""
    real = tmp_path / "real-tmp"
    real.mkdir()
    link = tmp_path / "linked-tmp"
    link.symlink_to(real, target_is_directory=True)
    monkeypatch.setattr(tempfile, "tempdir", str(link))
    monkeypatch.setenv("CFLAGS", "-g")
    built = []
    for name in ("first", "second"):
        cache = tmp_path / name
        monkeypatch.setenv("MOCHAC_CACHE_DIR", str(cache))
        cache_net(7)
        built.append(cached_extension(cache))
    assert built[0].read_bytes() == built[1].read_bytes()
    assert str(real).encode() not in built[0].read_bytes()


# Builds a net in a child process whose files may grow to 64 KiB, less than
# the generated C file, with SIGXFSZ ignored so that writes fail with EFBIG.
BUILD_WITH_SMALL_FILE_LIMIT = textwrap.dedent(
    """
    import resource
    import signal

    import numpy as np

    from mochac import CompileError, CPUBackend, InnerProductLayer, MemoryDataLayer, Net

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    x = np.zeros((4, 3), np.float32)
    layers = [
        MemoryDataLayer(name="data", tops=["data"], batch_size=2, data=[x]),
        InnerProductLayer(name="ip", output_dim=7, bottoms=["data"], tops=["ip"]),
    ]
    try:
        Net("small-files", CPUBackend(threads=1), layers)
    except CompileError as error:
        print(error)
    """
)


def test_build_file_write_failure_message(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", BUILD_WITH_SMALL_FILE_LIMIT],
        capture_output=True,
        check=False,
        text=True,
        env=dict(os.environ, MOCHAC_CACHE_DIR=str(tmp_path / "cache")),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cannot write the build files" in result.stdout, result.stdout
    assert "File too large" in result.stdout
    assert "C compiler failed" not in result.stdout


def test_stale_cache_temporaries_removed(tmp_path):
    """Temporary files that a build killed while publishing left in the cache
    more than a day ago go; fresh ones and other files stay."""
    from mochac.codegen.build import (
        STALE_BUILD_SECONDS,
        remove_stale_cache_temporaries,
    )

    now = 1_000_000_000.0
    old = now - STALE_BUILD_SECONDS - 60
    name = "_mochac_0123456789abcdef0123.so"
    stale = tmp_path / f".{name}.k2j4h5g6.tmp"
    stale_record = tmp_path / f".{name}.sha256.a1b2c3d4.tmp"
    fresh = tmp_path / f".{name}.z9y8x7w6.tmp"
    extension = tmp_path / name
    other = tmp_path / ".other.q1w2e3r4.tmp"
    for path in (stale, stale_record, fresh, extension, other):
        path.write_text("")
    for path in (stale, stale_record, extension, other):
        os.utime(path, (old, old))
    os.utime(fresh, (now, now))
    remove_stale_cache_temporaries(tmp_path, now)
    assert not stale.exists()
    assert not stale_record.exists()
    assert fresh.exists()
    assert extension.exists()
    assert other.exists()


def test_compile_removes_stale_cache_temporaries(tmp_path, monkeypatch):
    """A compile into the cache removes what a killed publish left there."""
    from mochac.codegen.build import STALE_BUILD_SECONDS

    monkeypatch.setenv("MOCHAC_CACHE_DIR", str(tmp_path))
    stale = tmp_path / "._mochac_0123456789abcdef0123.so.k2j4h5g6.tmp"
    stale.write_text("")
    old = time.time() - STALE_BUILD_SECONDS - 60
    os.utime(stale, (old, old))
    cache_net(6)
    assert not stale.exists()


def test_stale_build_folders_removed(tmp_path):
    """Build folders a killed build left more than a day ago go; fresh ones,
    other folders and files stay."""
    from mochac.codegen.build import STALE_BUILD_SECONDS, remove_stale_build_folders

    now = 1_000_000_000.0
    old = now - STALE_BUILD_SECONDS - 60
    paths = {
        "stale": tmp_path / "mochac-build-stale",
        "fresh": tmp_path / "mochac-build-fresh",
        "other": tmp_path / "other-build-stale",
    }
    for path in paths.values():
        (path / "sub").mkdir(parents=True)
        (path / "sub" / "net.c").write_text("int x;")
    plain_file = tmp_path / "mochac-build-file"
    plain_file.write_text("")
    for path in (paths["stale"], paths["other"], plain_file):
        os.utime(path, (old, old))
    os.utime(paths["fresh"], (now, now))
    remove_stale_build_folders(tmp_path, now)
    assert not paths["stale"].exists()
    assert paths["fresh"].exists()
    assert paths["other"].exists()
    assert plain_file.exists()


def test_cache_path_that_is_a_file(tmp_path, monkeypatch):
    from mochac.codegen.build import cache_dir
    from mochac.errors import CompileError

    path = tmp_path / "cache"
    path.write_text("")
    monkeypatch.setenv("MOCHAC_CACHE_DIR", str(path))
    with pytest.raises(CompileError) as caught:
        cache_dir()
    message = str(caught.value)
    assert f"cannot use {path} (MOCHAC_CACHE_DIR)" in message
    assert "it is a file, not a folder" in message


def fake_compiler(folder: Path, message: str, then: str = "exit 1") -> Path:
    """Write a compiler script that prints ``message`` to stderr, then runs
    the shell command ``then``."""
    script = folder / "fake-cc"
    script.write_text(f"#!/bin/sh\necho '{message}' >&2\n{then}\n")
    script.chmod(0o755)
    return script


def build_with_compiler(tmp_path, monkeypatch, compiler: Path):
    from mochac.errors import CompileError

    monkeypatch.setenv("MOCHAC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(compiler))
    with pytest.raises(CompileError) as caught:
        cache_net(output_dim=4)
    return caught.value


def test_compiler_on_full_disk(tmp_path, monkeypatch):
    compiler = fake_compiler(
        tmp_path, "cc1: fatal error: cannot write /tmp/cc1.s: No space left on device"
    )
    error = build_with_compiler(tmp_path, monkeypatch, compiler)
    message = str(error)
    assert "because the build folder" in message
    assert f"{tempfile.gettempdir()}{os.sep}mochac-build-" in message
    assert "is on a full disk" in message
    assert "set TMPDIR" in message
    assert "failed on generated code" not in message
    assert "cannot write /tmp/cc1.s: No space left on device" in error.output
    assert error.source_path is None
    assert not list((tmp_path / "cache").glob("*.failed.c"))


def test_compiler_failure_without_free_space(tmp_path, monkeypatch):
    """A compiler whose messages are translated still gets the full-disk
    message, from the free space of the build folder's disk."""
    from mochac.codegen import compiler_output

    real_disk_usage = shutil.disk_usage

    def no_free_space(path):
        usage = real_disk_usage(path)
        return usage._replace(used=usage.total, free=0)

    monkeypatch.setattr(compiler_output.shutil, "disk_usage", no_free_space)
    compiler = fake_compiler(tmp_path, "cc1: Fehler: Kein Platz mehr")
    message = str(build_with_compiler(tmp_path, monkeypatch, compiler))
    assert "is on a full disk (0.0 MiB free)" in message
    assert "cc1: Fehler: Kein Platz mehr" in message


def test_compiler_failure_in_unwritable_folder(tmp_path, monkeypatch):
    """The probe write after a failed build finds a build folder that is
    not writable. It is patched, since root may write anywhere."""

    def reject(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", reject)
    compiler = fake_compiler(tmp_path, "cc1: error: cannot open output file")
    message = str(build_with_compiler(tmp_path, monkeypatch, compiler))
    assert "is not writable (Permission denied)" in message
    assert "failed on generated code" not in message


def test_compiler_failure_keeps_source(tmp_path, monkeypatch):
    compiler = fake_compiler(tmp_path, "cc1: internal compiler error: Segmentation")
    error = build_with_compiler(tmp_path, monkeypatch, compiler)
    message = str(error)
    assert "the C compiler failed on generated code" in message
    assert "cc1: internal compiler error: Segmentation" in message
    assert "disk" not in message
    assert Path(error.source_path).read_text().startswith("/*")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_invalid_c_reports_compiler_errors(tmp_path, monkeypatch):
    from mochac.codegen.build import build_extension
    from mochac.errors import CompileError

    monkeypatch.setenv("MOCHAC_CACHE_DIR", str(tmp_path / "cache"))
    source = "int mochac_broken(void) { return undeclared_name; }\n"
    with pytest.raises(CompileError) as caught:
        build_extension(source, "broken")
    message = str(caught.value)
    assert "the C compiler failed on generated code" in message
    # gcc quotes the name with the locale's quotation marks.
    assert re.search(r"error: .undeclared_name. undeclared", caught.value.output)
    assert re.search(r"error: .undeclared_name. undeclared", message)
    assert "disk" not in message


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_compiler_warnings_reach_stderr(tmp_path, monkeypatch, capfd):
    """The compiler's output of a build that succeeds still reaches stderr."""
    compiler = fake_compiler(tmp_path, "note from the compiler", 'exec gcc "$@"')
    monkeypatch.setenv("MOCHAC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(compiler))
    net = cache_net(output_dim=6)
    net.forward()
    assert net.blobs["y"].shape == (4, 6)
    assert "note from the compiler" in capfd.readouterr().err
    net.destroy()


def test_compiler_output_in_threads(capfd):
    """Blocks in several threads each collect their own writes and leave
    file descriptor 2 where it was."""
    import threading

    from mochac.codegen.compiler_output import REDIRECT_LOCK, CompilerOutput

    before = os.fstat(2)
    texts = {}
    locked = {}

    def build(index):
        # An assert inside a thread would not fail the test, so the thread
        # records what it saw and the checks run after the join.
        with CompilerOutput() as output:
            locked[index] = REDIRECT_LOCK.locked()
            os.write(2, f"thread {index}\n".encode())
        texts[index] = output.text

    threads = [threading.Thread(target=build, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
    assert not REDIRECT_LOCK.locked()
    assert locked == {index: True for index in range(8)}
    assert texts == {index: f"thread {index}\n" for index in range(8)}
    assert texts == {i: f"thread {i}\n" for i in range(8)}


@pytest.mark.parametrize("raised", [KeyboardInterrupt, PermissionError])
def test_compiler_output_of_interrupted_build(tmp_path, monkeypatch, capfd, raised):
    """What the compiler wrote before a Ctrl-C, or before the build files
    could not be written, still reaches stderr."""
    import cffi

    from mochac.errors import CompileError

    def compile_and_stop(self, *args, **kwargs):
        os.write(2, b"output before the stop\n")
        raise raised("stopped")

    monkeypatch.setenv("MOCHAC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cffi.FFI, "compile", compile_and_stop)
    expected = CompileError if raised is PermissionError else KeyboardInterrupt
    with pytest.raises(expected):
        cache_net(output_dim=5)
    assert "output before the stop" in capfd.readouterr().err
