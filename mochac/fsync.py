"""Flush written files to the disk before and after renaming them into place,
and hash their bytes.

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
from pathlib import Path

logger = logging.getLogger(__name__)


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
