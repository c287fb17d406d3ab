"""Files written to survive a crash: flushed to the disk around their rename,
and checked by a SHA-256 digest kept beside them.

A file written under a temporary name and renamed is complete for readers
at once. After a power loss or kernel crash, though, the rename can reach
the disk before the file's data, leaving the final name on an empty or
partial file. Calling fsync on the file before the rename, and on its
folder after it, orders the two on disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

# A file being written is named ".<name>.<host>-<process id>.tmp" beside its
# final name until it is complete (temporary_path). Versions before the host
# part wrote ".<name>.<process id>.tmp", which still matches, without a host.
TEMPORARY_NAME = re.compile(
    r"^\.(?P<name>.+)\.(?:(?P<host>[A-Za-z0-9_]+)-)?(?P<pid>\d+)\.tmp$"
)


def host_tag() -> str:
    """Return this host's name as it appears in temporary names: letters,
    digits and underscores only, at most 32 of them."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32]
    return name or "host"


def special_file_kind(path) -> str | None:
    """Return what ``path`` is when it exists and is neither a regular file
    nor a folder ("a character device", "a named pipe", ...), else None.

    A finished file replaces its path by a rename, which would replace such
    a file (/dev/null, say) with a regular file where the process may do so.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, kind in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return None


def temporary_path(path: Path) -> Path:
    """Return the name this process writes ``path`` under until it is complete."""
    return path.with_name(f".{path.name}.{host_tag()}-{os.getpid()}.tmp")


def writer_may_run(match: re.Match) -> bool:
    """Return False only when the writer of a temporary file (a match of
    TEMPORARY_NAME) ran on this host and no longer runs.

    A writer on another host, or one of an older version that did not name
    its host, may still be writing: its process id means nothing here.
    """
    if match["host"] != host_tag():
        return True
    return process_may_run(int(match["pid"]))


def process_may_run(pid: int) -> bool:
    """Return False only when no process ``pid`` runs on this host.

    A process of another user, or a number that is no process id here (a
    writer on another host sharing the folder), may still be writing.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def fsync_file(path) -> None:
    """Flush the data of the file at ``path`` to the disk; raise OSError on failure."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_folder(folder) -> None:
    """Flush the entries of ``folder`` (a rename in it) to the disk.

    Some file systems and platforms cannot open or fsync a folder. The error
    is logged at debug level and ignored there, because the rename itself
    has succeeded.
    """
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError as error:
        logger.debug("cannot open folder %s to fsync it: %s", folder, error)
        return
    try:
        os.fsync(descriptor)
    except OSError as error:
        logger.debug("fsync of folder %s failed: %s", folder, error)
    finally:
        os.close(descriptor)


def replace_durably(temporary, path) -> None:
    """Rename the finished file ``temporary`` to ``path`` (os.replace), with
    fsync calls on the file before and on the folder after."""
    fsync_file(temporary)
    os.replace(temporary, path)
    fsync_folder(Path(path).parent)


def file_sha256(path) -> str:
    """Return the SHA-256 digest of the bytes of ``path`` as 64 hex digits.

    Reads 1 MiB at a time, so memory stays flat for files of any size.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# A digest file is "<file>.sha256" with sha256sum's line: the digest, a
# space, " " (text) or "*" (binary), and the file name.
DIGEST_SUFFIX = ".sha256"
DIGEST_LINE = re.compile(r"(?P<digest>[0-9a-fA-F]{64}) [ *](?P<name>[^\n]+)\n?")


def digest_path(path) -> Path:
    """Return the digest file of ``path``: ``snapshot-000120.h5.sha256``."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def parse_digest(text: str, name: str | None = None) -> str | None:
    """Return the lower-case hex digest of a sha256sum line, or None when
    ``text`` is not one such line, or not one for the file ``name`` (if given)."""
    match = DIGEST_LINE.fullmatch(text)
    if match is None or (name is not None and match["name"] != name):
        return None
    return match["digest"].lower()


def write_digest(source: Path, sidecar: Path, name: str) -> None:
    """Write the digest of ``source`` to ``sidecar`` as sha256sum's line for
    the file ``name``, and flush both files to the disk."""
    fsync_file(source)
    sidecar.write_text(f"{file_sha256(source)}  {name}\n", encoding="ascii")
    fsync_file(sidecar)


class WriteGuard:
    """A binary file for h5py's file-object driver that records the first
    error of a write instead of raising it into HDF5.

    After a write of its own fails (a full disk, an I/O error), HDF5 2.0
    as bundled with h5py 3.16 crashes the process when the file is closed
    or at exit. Through this object every write seems to succeed, so HDF5
    stays consistent. The owner checks ``error`` after each h5py call and
    discards the file when it is set. Any exception raised inside a method's
    body counts, a MemoryError included.

    Python runs signal handlers when a function starts, before its ``try``,
    so an exception a handler raises there would still reach HDF5. The
    callers hold signals with Python handlers back around HDF5 calls
    (interrupts.held_signals). NOTE: that leaves out the fault signals
    of interrupts.UNHELD_SIGNALS, whose Python handlers can still raise
    here when another process sends such a signal with kill().

    NOTE: each HDF5 write is a Python call here, so appending a batch of
    64 x 1024 float32 values takes 584 us against 434 us with HDF5's own
    driver (benchmarks/hdf5_output_writes.py, docs/benchmarks.md).
    """

    def __init__(self, path: Path):
        self.raw = open(path, "r+b", buffering=0)  # noqa: SIM115 - closed in close()
        self.error: BaseException | None = None

    def record(self, error: BaseException) -> None:
        """Keep ``error`` unless an earlier one is kept."""
        if self.error is None:
            self.error = error

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        try:
            return self.raw.seek(offset, whence)
        except BaseException as error:  # noqa: BLE001 - see the class
            self.record(error)
            return offset

    def tell(self) -> int:
        try:
            return self.raw.tell()
        except BaseException as error:  # noqa: BLE001 - see the class
            self.record(error)
            return 0

    def readinto(self, buffer) -> int:
        try:
            return self.raw.readinto(buffer)
        except BaseException as error:  # noqa: BLE001 - see the class
            self.record(error)
            return 0

    def read(self, size: int = -1) -> bytes:
        try:
            return self.raw.read(size)
        except BaseException as error:  # noqa: BLE001 - see the class
            self.record(error)
            return b""

    def write(self, data) -> int:
        # Nothing may raise into HDF5, the except clauses included.
        try:
            view = memoryview(data).cast("B")
        except BaseException as error:  # noqa: BLE001 - see the class
            self.record(error)
            return 0
        size = len(view)
        try:
            start = self.raw.tell()
            if self.error is None:
                written = 0
                # An unbuffered write may store only part of the bytes.
                while written < size:
                    count = self.raw.write(view[written:])
                    if not count:
                        raise OSError(f"wrote 0 of {size - written} bytes")
                    written += count
                return size
            # After an error the file is discarded, so the bytes are skipped.
            self.raw.seek(start + size)
        except BaseException as error:  # noqa: BLE001 - see the class
            self.record(error)
        return size

    def truncate(self, size: int | None = None) -> int:
        try:
            return self.raw.truncate(size)
        except BaseException as error:  # noqa: BLE001 - see the class
            self.record(error)
            return 0 if size is None else size

    def flush(self) -> None:
        try:
            self.raw.flush()
        except BaseException as error:  # noqa: BLE001 - see the class
            self.record(error)

    def close(self) -> None:
        self.raw.close()


def close_quietly(file, stream) -> None:
    """Close an h5py file and its WriteGuard; an error of the close goes to
    ``stream.error``, so that the caller discards the file."""
    try:
        if file is not None and file.id.valid:
            file.close()
    except Exception as error:  # noqa: BLE001 - recorded for the caller
        stream.record(error)
    finally:
        stream.close()
