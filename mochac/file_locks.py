"""Locks, held with flock(2), between processes that write the same files.

``mochac compile`` locks its output folder itself while it renames a package
into place, and waits for another compile that holds it (output_folder_lock).
Loading a compiled package holds a shared lock on that folder
(shared_folder_lock), so the rename waits until the load has read its files.
``solve()`` locks a file in each folder it writes into and fails at once when
another run holds it (holder_lock). The kernel releases a flock when its
holder exits, however it exits, so a lock file that a killed process left
behind locks nothing. A child of fork() closes its copies of the lock
descriptors at once, so it holds no lock of its parent.

Where Python has no fcntl (Windows), the exclusive locks run without the lock
and log that. Where the file system cannot lock (some network file systems),
they log a warning and run without the lock. The shared lock runs without it
in both cases and logs that at debug level only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

logger = logging.getLogger(__name__)

# The descriptors of the locks this process holds. A child of fork() gets
# copies that share each lock with its parent, so the lock would stay held
# while the child runs, after the parent released it or was killed. The
# child closes its copies at the fork (_close_after_fork).
_LOCK_DESCRIPTORS: set[int] = set()


def _open_lock_descriptor(path: Path, flags: int, mode: int = 0o777) -> int:
    descriptor = os.open(path, flags, mode)
    _LOCK_DESCRIPTORS.add(descriptor)
    return descriptor


def _close_lock_descriptor(descriptor: int) -> None:
    """Close a descriptor of _open_lock_descriptor, which releases its lock,
    unless a fork closed it already in this process."""
    if descriptor in _LOCK_DESCRIPTORS:
        _LOCK_DESCRIPTORS.discard(descriptor)
        os.close(descriptor)


def _close_after_fork() -> None:
    # Closing a copy releases nothing while the parent's descriptor is open.
    # flock(LOCK_UN) would release the parent's lock too.
    for descriptor in _LOCK_DESCRIPTORS:
        with contextlib.suppress(OSError):
            os.close(descriptor)
    _LOCK_DESCRIPTORS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_after_fork)


class LockHeld(Exception):
    """Another open file holds the lock; ``holder`` is what it recorded in
    the lock file (holder_lock), or None."""

    def __init__(self, path: Path, holder: dict | None):
        super().__init__(f"{path} is locked")
        self.path = path
        self.holder = holder


def try_exclusive_flock(descriptor: int, path: Path, unlocked: str) -> bool:
    """Take an exclusive flock on ``descriptor`` without waiting.

    Return False when another open file has the lock, True when taken. Where the
    file system cannot lock, log a warning that names ``path`` and ends with
    ``unlocked`` (what runs without the lock), and return True.
    """
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        logger.warning(
            "%s: cannot lock (%s); %s", path, error.strerror or error, unlocked
        )
    return True


@contextlib.contextmanager
def output_folder_lock(out_dir: Path):
    """Hold an exclusive flock on the folder ``out_dir`` itself, waiting for
    another process that holds it.

    The lock needs no lock file, so the folder contains only packages. Where
    the folder cannot be locked, the block runs unlocked, and
    module_writer.replace_package reports a run that collides with it.
    """
    if fcntl is None:
        logger.info("%s: no fcntl on this platform; writing without a lock", out_dir)
        yield
        return
    descriptor = _open_lock_descriptor(out_dir, os.O_RDONLY)
    try:
        unlocked = (
            "writing packages without the lock, so do not run another mochac "
            "compile into it at the same time"
        )
        if not try_exclusive_flock(descriptor, out_dir, unlocked):
            logger.info(
                "%s: waiting for another process to finish writing packages here",
                out_dir,
            )
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        # Closing the descriptor releases the lock.
        _close_lock_descriptor(descriptor)


@contextlib.contextmanager
def shared_folder_lock(folder: Path):
    """Hold a shared flock on the folder ``folder`` itself, waiting while a
    ``mochac compile`` holds output_folder_lock on it.

    Readers of a compiled package hold it, so that a compile cannot replace
    the package between their reads of its files. Where the folder cannot be
    opened or locked (no fcntl, no read permission, a file system without
    locks), the block runs unlocked.
    """
    if fcntl is None:
        yield
        return
    try:
        descriptor = _open_lock_descriptor(folder, os.O_RDONLY)
    except OSError as error:
        logger.debug("%s: cannot open to lock (%s); reading unlocked", folder, error)
        yield
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH)
        except OSError as error:
            logger.debug("%s: cannot lock (%s); reading unlocked", folder, error)
        yield
    finally:
        _close_lock_descriptor(descriptor)


@contextlib.contextmanager
def holder_lock(lock_file: Path, purpose: str, unlocked: str):
    """Hold an exclusive flock on ``lock_file``, created if missing, and
    record this process in it: its pid, host and ``purpose``.

    Raises LockHeld, without waiting, when another open file holds the lock,
    a solve() of this process included. Raises OSError when the lock file
    cannot be created or opened. ``unlocked`` ends the warning logged where
    the file system cannot lock.

    The lock file stays after the block: deleting it would let a process
    that opened it before the deletion lock the deleted file while a third
    one locks a new file of that name.
    """
    if fcntl is None:
        logger.info(
            "%s: no fcntl on this platform, so this run takes no lock; %s",
            lock_file,
            unlocked,
        )
        yield
        return
    try:
        # 0o666 less the umask, as for the snapshots, so that a group that
        # shares the folder can write the record.
        descriptor = _open_lock_descriptor(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        # Another user's run created the lock file. flock needs no write
        # access, so the lock works, but without this run's record.
        # NOTE: the file then keeps the record of that earlier run, which a
        # run that finds the lock held names as the holder.
        descriptor = _open_lock_descriptor(lock_file, os.O_RDONLY)
    try:
        if not try_exclusive_flock(descriptor, lock_file, unlocked):
            raise LockHeld(lock_file, read_holder(descriptor))
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "purpose": purpose,
        }
        with contextlib.suppress(OSError):
            # The record only helps the message of a run that finds the lock
            # held; the lock works without it.
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, json.dumps(record).encode("utf-8") + b"\n", 0)
        yield
    finally:
        _close_lock_descriptor(descriptor)


def held_by(lock_file: Path) -> tuple[bool, dict | None]:
    """Return whether another open file holds the lock of ``lock_file``, and
    the record its holder wrote (holder_lock), without taking the lock.

    Returns (False, None) when the file is missing or unreadable, or the
    platform or file system cannot lock, because then nothing is known.
    """
    if fcntl is None:
        return False, None
    try:
        descriptor = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return False, None
    try:
        # A shared lock conflicts only with a holder's exclusive one.
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True, read_holder(descriptor)
    except OSError:
        return False, None
    finally:
        # Closing the descriptor also drops the shared lock, if taken.
        os.close(descriptor)
    return False, None


def read_holder(descriptor: int) -> dict | None:
    """Return the record a holder_lock holder wrote into the lock file, or
    None when it cannot be read (the holder may not have written it yet)."""
    try:
        data = os.pread(descriptor, 4096, 0)
        record = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def describe_holder(holder: dict | None) -> str:
    """Describe the process of a lock file's record for a message."""
    if holder is None:
        return "another process (its pid and host are not recorded yet)"
    pid, host = holder.get("pid"), holder.get("host")
    purpose = holder.get("purpose")
    doing = f", {purpose}" if purpose else ""
    if pid == os.getpid() and host == socket.gethostname():
        return f"this process (pid {pid} on host {host}{doing})"
    return f"process {pid} on host {host}" + (f" ({purpose})" if purpose else "")
