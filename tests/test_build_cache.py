"""The compiled-extension cache: publishing across file systems, digest
records, and damaged entries compiled again instead of loaded."""

import errno
import hashlib
import os
import subprocess
import sys
import tempfile
import textwrap
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
        text=True,
        env=dict(os.environ, MOCHAC_CACHE_DIR=str(tmp_path / "cache")),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cannot write the build files" in result.stdout, result.stdout
    assert "File too large" in result.stdout
    assert "C compiler failed" not in result.stdout


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
