"""SHA-256 digests of whole snapshot, statistics and data files, kept in
sidecar files.

HDF5's Fletcher-32 checksums cover only the chunks of datasets. A damaged
byte in the metadata (attributes, a datatype or layout message) can make
libhdf5 read other values without an error, or crash the process, and a
chunk of zero bytes passes its checksum. So save_snapshot stores the SHA-256
digest of the finished file in ``<file>.sha256``, in the format of
``sha256sum`` (one line "<64 hex digits>  <file name>"), and open_model
compares the file with it before h5py parses a byte. The coffee lounge's
statistics file gets one the same way (CoffeeLounge.save,
read_statistics). The examples' prepare_data.py scripts give their HDF5
data files sidecars too (replace_with_digest), which the HDF5 data layers
(hdf5_files.check_digest) and SubMean's mean_file check. A file without a
sidecar (snapshots of older mochac versions, Caffe exports, model files
written by other tools) is opened without this check.

While a snapshot replaces an older file of the same name, the sidecar lists
both digests, the new one first, so the file at the path matches it at
every moment. A writer interrupted by an exception in that window (Ctrl-C)
reduces the sidecar to the digest of the file at the path before it
stops. One killed outright leaves both lines: either file version loads,
and the first load keeps only the matching line, so that ``sha256sum -c``
passes again. A load while a writer of this host is still replacing the
file leaves both lines to that writer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mochac.durable_files import (
    DIGEST_LINE,
    TEMPORARY_NAME,
    digest_path,
    file_sha256,
    fsync_file,
    fsync_folder,
    parse_digest,
    temporary_path,
    write_digest,
    writer_may_run,
)
from mochac.errors import SnapshotError

__all__ = [
    "DATA_FILE_ADVICE",
    "digest_path",
    "read_digests",
    "replace_with_digest",
    "rewrite_sidecar",
    "sidecar_path",
    "verify_digest",
    "write_digest",
]

logger = logging.getLogger(__name__)

# How many times verify_digest reads the sidecar and hashes the file when a
# writer replaces one of them during each check.
VERIFY_ATTEMPTS = 3

# The advice that ends the error for a data file (written by a data
# preparation step) that does not match its SHA-256 sidecar.
DATA_FILE_ADVICE = (
    "write it again with the step that made it (the examples' prepare_data.py "
    "needs --force to rewrite a file) or restore it from a copy"
)


def read_digests(sidecar: Path, advice: str) -> list[str]:
    """Return the hex digests stored in ``sidecar``, in lower case.

    Raises SnapshotError, ending with ``advice``, when the sidecar cannot be
    read or its lines are not sha256sum's lines for one file.
    """
    # The data file may be intact when only its digest file is damaged.
    keep = (
        f"; or, if the data file is intact, delete only {sidecar.name} to load it "
        "without the check"
    )
    try:
        text = sidecar.read_bytes().decode("ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise SnapshotError(
            f"cannot read the SHA-256 digest {sidecar}: {error}; {advice}{keep}"
        ) from error
    lines = text.splitlines(keepends=True)
    digests = [parse_digest(line) for line in lines]
    names = {
        DIGEST_LINE.fullmatch(line)["name"] for line in lines if parse_digest(line)
    }
    if not 1 <= len(lines) <= 2 or None in digests or len(names) != 1:
        raise SnapshotError(
            f"{sidecar} is not a SHA-256 digest line ('<64 hex digits>  <file "
            f"name>'): it is damaged; {advice}{keep}"
        )
    return digests


def verify_digest(path, advice: str) -> bool:
    """Compare the bytes of ``path`` with the digest in its sidecar file.

    Returns False when there is no sidecar, True when the digest matches.
    Raises SnapshotError, ending with ``advice``, when it does not match or
    the sidecar is damaged.
    """
    path = Path(path)
    sidecar = sidecar_path(path)
    for _ in range(VERIFY_ATTEMPTS):
        if not sidecar.is_file():
            return False
        sidecar_before = identity_or_none(sidecar)
        expected = read_digests(sidecar, advice)
        try:
            identity = file_identity(path)
            actual = file_sha256(path)
        except OSError as error:
            raise SnapshotError(f"cannot read {path}: {error}; {advice}") from error
        if actual in expected:
            break
        # A writer (replace_with_digest) that put a new sidecar and file in
        # place after the sidecar was read leaves a mismatch without damage,
        # so the check reads the pair again when either changed meanwhile.
        if identity_or_none(sidecar) == sidecar_before and (
            identity_or_none(path) == identity
        ):
            break
    if actual not in expected:
        raise SnapshotError(
            f"{path} does not match its SHA-256 digest in {sidecar.name}: the file "
            f"was damaged or changed after it was written; {advice}. If you "
            f"changed the file on purpose, delete {sidecar.name} to load it "
            "without the check"
        )
    if len(expected) > 1:
        _reduce_after_load(path, sidecar, expected, identity, actual)
    return True


def identity_or_none(path) -> tuple | None:
    """Return file_identity(path), or None when the file cannot be read."""
    try:
        return file_identity(path)
    except OSError:
        return None


def sidecar_path(path: Path) -> Path:
    """Return the sidecar that verify_digest compares ``path`` with."""
    # A snapshot written through a link has its sidecar beside the linked file.
    return digest_path(os.path.realpath(path) if path.is_symlink() else path)


def file_identity(path) -> tuple[int, int, int, int, int]:
    """Return the device, inode, size, modification time and inode change
    time of ``path``, which a rename over it or a write to it changes.

    The change time counts because a write that keeps the size and then
    restores the modification time (``cp -p`` over the file, or a write
    followed by ``touch -r``) changes only it, and utime cannot set it.
    """
    status = os.stat(path)
    return (
        status.st_dev,
        status.st_ino,
        status.st_size,
        status.st_mtime_ns,
        status.st_ctime_ns,
    )


def _reduce_after_load(path, sidecar, expected, identity, actual) -> None:
    """Reduce a two-digest sidecar to ``actual``, the digest of the file that
    was just read, unless a writer may still be replacing that file.

    A writer lists the new digest first and renames the new file over the
    old one next. Reducing the sidecar to the old digest before that rename
    would leave the new file without its digest. So the old digest is kept
    alone only when no writer may be running (a temporary file of a writer
    on another host counts as running), and only while the file at ``path``
    is still the one that was read.
    """
    if actual != expected[0] and _writer_running(path):
        logger.debug(
            "%s lists two digests while a writer replaces %s, so it stays",
            sidecar,
            path.name,
        )
        return

    def unchanged() -> bool:
        try:
            return file_identity(path) == identity and (
                read_digests(sidecar, "") == expected
            )
        except (OSError, SnapshotError):
            return False

    # A writer that renamed its file after the scan above changes the file's
    # identity, which the check just before the rename compares.
    if rewrite_sidecar(sidecar, f"{actual}  {path.name}\n", unchanged):
        logger.info(
            "%s listed the digests of two versions of %s, left by an interrupted "
            "writer; kept the digest of the file there",
            sidecar,
            path.name,
        )


def _writer_running(path: Path) -> bool:
    """Return whether a process that may still run has a temporary file of
    ``path`` (durable_files.temporary_path), so it may still rename it."""
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return True
    for entry in entries:
        match = TEMPORARY_NAME.match(entry.name)
        if match is None or match["name"] != path.name:
            continue
        if writer_may_run(match):
            return True
    return False


def rewrite_sidecar(sidecar: Path, line: str, still_valid=None) -> bool:
    """Replace ``sidecar`` with the one digest ``line``; return whether it did.

    ``still_valid``, when given, is called just before the rename, and a
    False result leaves the sidecar as it is. A folder that rejects the
    write gets a warning and keeps the two-line sidecar, which still loads.
    """
    temporary = temporary_path(sidecar)
    try:
        temporary.write_text(line, encoding="ascii")
        fsync_file(temporary)
        if still_valid is not None and not still_valid():
            temporary.unlink()
            return False
        os.replace(temporary, sidecar)
        fsync_folder(sidecar.parent)
        return True
    except OSError as error:
        logger.warning(
            "could not reduce %s to the digest of the file beside it: %s; "
            "sha256sum -c reports its other line as failed",
            sidecar,
            error,
        )
        temporary.unlink(missing_ok=True)
        return False


def replace_with_digest(temporary: Path, path: Path) -> None:
    """Rename the finished file ``temporary`` to ``path`` and write its
    SHA-256 sidecar, both flushed to the disk.

    The sidecar goes in place first. Over an older file, it first lists both
    digests, then the file is renamed into place, then the sidecar keeps
    only the new digest. So the file at ``path`` matches its sidecar at
    every moment, and a kill never leaves it missing. Raises OSError. After
    an error or a Ctrl-C the sidecar lists the digest of the file at
    ``path`` alone, and the caller deletes ``temporary`` if it is still there.
    """
    path = Path(path)
    sidecar = digest_path(path)
    sidecar_temporary = temporary_path(sidecar)
    # The sha256sum lines of the new file and of the file it replaces, while
    # an overwrite may leave the sidecar listing both.
    new_line = old_line = None
    try:
        write_digest(temporary, sidecar_temporary, path.name)
        new_line = sidecar_temporary.read_text(encoding="ascii")
        old_line = _current_digest_line(path, sidecar)
        if old_line is not None:
            sidecar_temporary.write_text(new_line + old_line, encoding="ascii")
            fsync_file(sidecar_temporary)
        os.replace(sidecar_temporary, sidecar)
        fsync_folder(path.parent)
        os.replace(temporary, path)
        fsync_folder(path.parent)
        if old_line is not None:
            sidecar_temporary.write_text(new_line, encoding="ascii")
            fsync_file(sidecar_temporary)
            os.replace(sidecar_temporary, sidecar)
            fsync_folder(path.parent)
    finally:
        if old_line is not None:
            # An error or Ctrl-C may have stopped the overwrite while the
            # sidecar lists both digests. Flags set after a rename can miss
            # a Ctrl-C that arrives just after it, so the files show which
            # renames ran. ``temporary`` is gone once the new file is at
            # ``path``.
            _reduce_sidecar(sidecar, old_line if temporary.exists() else new_line)
        sidecar_temporary.unlink(missing_ok=True)


def _reduce_sidecar(sidecar: Path, line: str) -> None:
    """Replace ``sidecar`` with ``line`` when it lists two digests, so that
    sha256sum -c passes. A sidecar of one line, or none, stays as it is."""
    try:
        lines = sidecar.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return
    if len(lines) == 2:
        rewrite_sidecar(sidecar, line)


def _current_digest_line(path: Path, sidecar: Path) -> str | None:
    """Return the sha256sum line of the file now at ``path`` (None: no file).

    The line comes from the sidecar when it has one valid line, so a damaged
    file stays unmatched; else from hashing the file.
    """
    if not path.is_file():
        return None
    try:
        text = sidecar.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        text = ""
    if parse_digest(text, path.name) is not None:
        return text if text.endswith("\n") else text + "\n"
    return f"{file_sha256(path)}  {path.name}\n"
