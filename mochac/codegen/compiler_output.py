"""The C compiler's output during a cffi build, and why a failed build failed.

cffi builds through setuptools, which runs the compiler with the process's
own stderr and raises only "command ... failed with exit code 1". So the
compiler's messages reach the terminal but not the error, and a compiler
that could not write its files to a full disk reads as a compiler failure.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

# The reason a folder takes no files, by errno value. The compiler's output
# is searched for the values' strerror messages as the C locale prints them.
FOLDER_PROBLEMS = {
    errno.ENOSPC: "is on a full disk",
    errno.EROFS: "is on a read-only file system",
}
if hasattr(errno, "EDQUOT"):
    FOLDER_PROBLEMS[errno.EDQUOT] = "is over its disk quota"
NOT_WRITABLE = (errno.EACCES, errno.EPERM)
# One block of common file systems: a disk that cannot take it is full.
PROBE_BYTES = 4096
# How long to wait for the end of the compiler's output once the compiler has
# exited. A process that the compiler started and left running (a compiler
# cache server) may keep the pipe open, and its output is not waited for.
READER_JOIN_SECONDS = 1.0
# File descriptor 2 is shared by the whole process, so builds in several
# threads redirect it one at a time. Otherwise a later block would save an
# earlier block's pipe as the descriptor to restore. NOTE: so nets built in
# several threads of one process compile one at a time. A pipe per compiler
# process would avoid that, but distutils.spawn.spawn of setuptools 65.5
# starts the compiler with this process's stderr and takes no argument for
# another one.
REDIRECT_LOCK = threading.Lock()


class CompilerOutput:
    """A context that collects what this process and its child processes
    write to file descriptor 2 during the block.

    A thread drains a pipe, so that collecting needs no disk space and a
    long output cannot block the compiler. Output of other threads during
    the block is collected too, and ``forward()`` passes it on. Where file
    descriptor 2 is closed, nothing is collected.
    """

    def __init__(self):
        self.text = ""
        self._chunks: list[bytes] = []
        self._saved: int | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> CompilerOutput:  # noqa: PYI034 - Self needs Python 3.11
        REDIRECT_LOCK.acquire()
        try:
            saved = os.dup(2)
        except OSError:
            REDIRECT_LOCK.release()
            return self
        try:
            read_end, write_end = os.pipe()
        except OSError:
            os.close(saved)
            REDIRECT_LOCK.release()
            return self
        flush_stderr()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._saved = saved
        self._reader = threading.Thread(
            target=self._read,
            args=(read_end,),
            name="mochac-compiler-output",
            daemon=True,
        )
        self._reader.start()
        return self

    def _read(self, descriptor: int) -> None:
        try:
            while chunk := os.read(descriptor, 65536):
                self._chunks.append(chunk)
        finally:
            os.close(descriptor)

    def __exit__(self, *exc_info) -> None:
        if self._saved is None:
            return
        flush_stderr()
        # Restoring file descriptor 2 closes this process's last write end,
        # so the reader ends once the compiler's processes have exited.
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None
        REDIRECT_LOCK.release()
        self._reader.join(READER_JOIN_SECONDS)
        self.text = b"".join(list(self._chunks)).decode(errors="replace")

    def forward(self) -> None:
        """Write the collected output to file descriptor 2, where it would
        have gone without the block."""
        if not self.text:
            return
        try:
            with os.fdopen(2, "w", closefd=False, errors="replace") as stream:
                stream.write(self.text)
        except OSError:
            # Nowhere is left to report to; the build itself succeeded.
            pass


def flush_stderr() -> None:
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()


def build_folder_problem(folder: Path, output: str) -> str | None:
    """Return why the C compiler could not write to ``folder`` after a failed
    build, as a predicate of the folder, or None when the folder is fine.

    The compiler's ``output`` is searched for the errno messages of
    FOLDER_PROBLEMS. Because that output may be translated, a free space of
    0 bytes and a failed probe write of PROBE_BYTES also count.
    """
    for number, problem in FOLDER_PROBLEMS.items():
        if os.strerror(number) in output:
            return problem
    try:
        if shutil.disk_usage(folder).free == 0:
            return FOLDER_PROBLEMS[errno.ENOSPC]
    except OSError:
        pass
    try:
        descriptor, probe = tempfile.mkstemp(prefix=".mochac-probe-", dir=folder)
    except OSError as error:
        return write_problem(error)
    try:
        os.write(descriptor, bytes(PROBE_BYTES))
    except OSError as error:
        return write_problem(error)
    finally:
        os.close(descriptor)
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return None


def write_problem(error: OSError) -> str:
    if error.errno in FOLDER_PROBLEMS:
        return FOLDER_PROBLEMS[error.errno]
    if error.errno in NOT_WRITABLE:
        return f"is not writable ({error.strerror})"
    return f"cannot be written to ({error})"


def free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def same_file_system(first: Path, second: Path) -> bool:
    try:
        return os.stat(first).st_dev == os.stat(second).st_dev
    except OSError:
        return False
