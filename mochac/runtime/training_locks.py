"""The locks that solve() holds on the files a training writes, so that two
trainings never write into one Snapshot folder or statistics file at once.

Each Snapshot folder gets the lock file ``.mochac-solve.lock`` in it, and
the coffee lounge's statistics file ``<name>`` the lock file
``.<name>.mochac-solve.lock`` beside it. A statistics file gets a lock of
its own, not its folder's, because runs that save their statistics as
different files of one folder do not collide. Reading needs no lock, so
a load_from folder that no Snapshot break writes stays unlocked. A
load_from folder that another training has locked, or a file in it, gets
a warning. The locks are flocks (mochac.file_locks), which the kernel
releases when their process exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from mochac.errors import LockHeldError, SnapshotError
from mochac.file_locks import LockHeld, describe_holder, held_by, holder_lock
from mochac.runtime.coffee_breaks import Snapshot, check_snapshot_folder

# The solver's messages keep the solver module's logger name, so that a
# level or filter set on it also covers these.
logger = logging.getLogger("mochac.runtime.solver")

SNAPSHOT_FOLDER_LOCK = ".mochac-solve.lock"


def statistics_lock_path(save_into: Path) -> Path:
    """Return the lock file of the statistics file ``save_into``: beside the
    file that the path names after resolving links and relative paths, so
    that every path to one file gives one lock file.

    A Snapshot folder needs no such step, because its lock file is inside
    it, and every path to the folder reaches that one file. The coffee
    lounge writes a linked ``save_into`` to the file it names
    (write_atomically), so the lock and the writes agree.
    """
    real = save_into.resolve()
    return real.with_name(f".{real.name}.mochac-solve.lock")


@contextlib.contextmanager
def training_locks(solver, net):
    """Hold the locks of the solver's Snapshot folders, created if missing,
    and of its statistics file for the block.

    Raises ConfigError for a Snapshot folder that is a file, SnapshotError
    for a folder or lock file that cannot be created, and LockHeldError
    when another training holds one of the locks.
    """
    purpose = f"solve() of net '{net.name}'"
    folders = snapshot_folders(solver)
    with contextlib.ExitStack() as stack:
        for folder in folders:
            create_snapshot_folder(folder)
            stack.enter_context(_snapshot_folder_lock(folder, purpose))
        save_into = solver.lounge.save_into
        if save_into is not None:
            stack.enter_context(_statistics_lock(save_into, purpose))
        warn_if_load_from_in_use(solver, folders)
        yield


def snapshot_folders(solver) -> list[Path]:
    """Return the folders of the solver's Snapshot breaks, each once even
    when named two ways."""
    folders: dict[Path, Path] = {}
    for coffee_break, *_ in solver.breaks:
        if isinstance(coffee_break, Snapshot):
            folders.setdefault(coffee_break.folder.resolve(), coffee_break.folder)
    return list(folders.values())


def create_snapshot_folder(folder: Path) -> None:
    """Create the Snapshot folder ``folder`` when missing, or raise:
    ConfigError when it is a file, SnapshotError when it cannot be created."""
    check_snapshot_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SnapshotError(
            f"cannot write into Snapshot folder {folder}: creating it failed "
            f"({error.strerror or error}); pass a folder path that can be created"
        ) from error


@contextlib.contextmanager
def _snapshot_folder_lock(folder: Path, purpose: str):
    lock_file = folder / SNAPSHOT_FOLDER_LOCK
    unlocked = (
        "training without it, so make sure that no other training writes "
        "snapshots into this folder"
    )
    try:
        with holder_lock(lock_file, purpose, unlocked):
            yield
    except LockHeld as held:
        raise LockHeldError(
            f"cannot write into Snapshot folder {folder}: "
            f"{describe_holder(held.holder)} holds the lock {lock_file}, so "
            f"another training writes snapshots there. {_advice(held.holder)}, or "
            "give this run another Snapshot folder (and load_from, to resume "
            "from it)"
        ) from None
    except OSError as error:
        raise SnapshotError(
            f"cannot write into Snapshot folder {folder}: cannot create its "
            f"lock file {lock_file} ({error.strerror or error}); check that "
            f"{folder} is a writable folder"
        ) from error


@contextlib.contextmanager
def _statistics_lock(save_into: Path, purpose: str):
    lock_file = statistics_lock_path(save_into)
    unlocked = (
        "training without it, so make sure that no other training saves its "
        "statistics into this file"
    )
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        with holder_lock(lock_file, purpose, unlocked):
            yield
    except LockHeld as held:
        raise LockHeldError(
            f"cannot write the statistics file {save_into}: "
            f"{describe_holder(held.holder)} holds the lock {lock_file}, so "
            f"another training saves its statistics there. {_advice(held.holder)}, "
            "or pass this run another save_into to setup_coffee_lounge"
        ) from None
    except OSError as error:
        raise SnapshotError(
            f"cannot write the statistics file {save_into}: cannot create its "
            f"lock file {lock_file} ({error.strerror or error}); check that "
            f"{lock_file.parent} is a writable folder"
        ) from error


def _advice(holder: dict | None) -> str:
    if holder is not None and holder.get("pid") == os.getpid():
        return (
            "A solve() that a coffee break starts cannot write where the running "
            "solve() writes"
        )
    return "Wait until that training ends, or stop it"


def warn_if_load_from_in_use(solver, locked: list[Path]) -> None:
    """Log a warning when load_from names a folder that another training
    holds, or a file in such a folder, because this run then resumes from a
    snapshot of a run that is still writing. ``locked`` lists the folders
    this run holds."""
    load_from = solver.params.get("load_from")
    if not load_from:
        return
    path = Path(load_from)
    if path.is_dir():
        folder = path
        risk = (
            "so this run resumes from a snapshot that the other run may replace "
            "with a newer one"
        )
        kind = "is the Snapshot folder"
    elif path.is_file():
        folder = path.parent
        risk = (
            "which may save that file again, for example once the coffee breaks "
            "after its Snapshot break have run"
        )
        kind = "is a file in the Snapshot folder"
    else:
        return
    if any(folder.resolve() == own.resolve() for own in locked):
        return
    held, holder = held_by(folder / SNAPSHOT_FOLDER_LOCK)
    if held:
        logger.warning(
            "load_from=%r %s of a running training (%s), %s",
            str(load_from),
            kind,
            describe_holder(holder),
            risk,
        )
