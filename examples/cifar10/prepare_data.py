"""Convert CIFAR-10 to the HDF5 layout that Mocha's CIFAR-10 tutorial reads.

Input, in the folder given by --source, one of:

- the binary version of CIFAR-10: data_batch_1.bin .. data_batch_5.bin and
  test_batch.bin (the cifar-10-batches-bin folder of cifar-10-binary.tar.gz).
  Each file is a sequence of 3073-byte records: one label byte 0..9, then
  1024 red, 1024 green and 1024 blue bytes, each a 32x32 image in row-major
  order. This script downloads nothing; fetch the archive yourself.
- train.hdf5 and test.hdf5 already in the layout below (converted elsewhere,
  e.g. by Mocha's convert.jl): they are checked and only the source lists are
  written.

Output, in the folder given by --out (default: data/ next to this script):

    train.hdf5, test.hdf5   dataset "data": float32 (N, 3, 32, 32), pixel
                            values 0..255 minus the mean training image
                            dataset "label": float32 (N, 1), the class 0..9
    mean.hdf5               dataset "mean": float32 (3, 32, 32), the mean
                            training image (DataTransformers.SubMean reads it)
    <name>.hdf5.sha256      the SHA-256 digest of each HDF5 file above in
                            sha256sum's format, which the data layers and
                            SubMean check before they read the file
    train.txt, test.txt     source lists for HDF5DataLayer, each naming its
                            HDF5 file relative to the list's own folder

As in the tutorial, the mean is subtracted here, during conversion, in place
of Caffe's mean_file transform.

Usage:

    python examples/cifar10/prepare_data.py --source DIR [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import h5py
import numpy as np

from mochac.durable_files import temporary_path
from mochac.runtime.ctrl_c import exit_on_ctrl_c
from mochac.runtime.file_digest import replace_with_digest
from mochac.runtime.interrupts import held_signals
from mochac.runtime.sigterm import exit_on_sigterm

logger = logging.getLogger(__name__)

SIDE = 32
CHANNELS = 3
N_CLASSES = 10
RECORD_BYTES = 1 + CHANNELS * SIDE * SIDE
TRAIN_FILES = [f"data_batch_{index}.bin" for index in range(1, 6)]
TEST_FILES = ["test_batch.bin"]

SCRIPT_DIR = Path(__file__).resolve().parent


class CIFARFormatError(ValueError):
    """An input file does not have the CIFAR-10 binary or HDF5 layout."""


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels (N,) uint8, images (N, 3, 32, 32) uint8) of a binary batch file.

    Raises CIFARFormatError when the size is not a multiple of 3073 bytes or a
    label is not a class 0..9.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise CIFARFormatError(
            f"{path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte "
            "records; expected a file of the binary version of CIFAR-10"
        )
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0]
    bad = np.flatnonzero(labels >= N_CLASSES)
    if bad.size:
        raise CIFARFormatError(
            f"{path}: record {bad[0]} has label {labels[bad[0]]}; expected a class "
            f"0..{N_CLASSES - 1}"
        )
    # Each record lists the red plane, then green, then blue, each row-major:
    # exactly the (C, H, W) order of a Mocha blob.
    images = records[:, 1:].reshape(-1, CHANNELS, SIDE, SIDE)
    return labels, images


def binary_inputs(source: Path) -> dict[str, list[Path]] | None:
    """Return the binary batch files per split, or None when ``source`` has none.

    Raises CIFARFormatError when only some of the files are present.
    """
    names = {"train": TRAIN_FILES, "test": TEST_FILES}
    found = {split: [source / name for name in files] for split, files in names.items()}
    present = [path for paths in found.values() for path in paths if path.exists()]
    if not present:
        return None
    missing = [path for paths in found.values() for path in paths if not path.exists()]
    if missing:
        raise CIFARFormatError(
            f"{source} has some CIFAR-10 binary batches but lacks "
            f"{', '.join(path.name for path in missing)}; expected "
            f"{', '.join(TRAIN_FILES + TEST_FILES)}"
        )
    return found


def mean_image(paths: list[Path]) -> np.ndarray:
    """Return the mean (3, 32, 32) float64 image over the batch files, file by file."""
    total = np.zeros((CHANNELS, SIDE, SIDE), dtype=np.float64)
    count = 0
    for path in paths:
        _, images = read_batch(path)
        total += images.sum(axis=0, dtype=np.float64)
        count += len(images)
    return total / count


def write_split(paths: list[Path], mean: np.ndarray, out_path: Path) -> np.ndarray:
    """Write the batch files, mean subtracted, as one HDF5 file; return label counts.

    The file is written under a temporary name and renamed when complete
    (install).
    """
    # Sizes come from the file lengths; read_batch checks them below.
    counts = [path.stat().st_size // RECORD_BYTES for path in paths]
    temp_path = temporary_path(out_path)
    label_counts = np.zeros(N_CLASSES, dtype=np.int64)
    try:
        with h5py.File(temp_path, "w") as output:
            total = sum(counts)
            data = output.create_dataset(
                "data", shape=(total, CHANNELS, SIDE, SIDE), dtype="f4"
            )
            label = output.create_dataset("label", shape=(total, 1), dtype="f4")
            start = 0
            for path in paths:
                labels, images = read_batch(path)
                stop = start + len(labels)
                data[start:stop] = (images - mean).astype(np.float32)
                label[start:stop, 0] = labels.astype(np.float32)
                label_counts += np.bincount(labels, minlength=N_CLASSES)
                start = stop
        install(temp_path, out_path)
    finally:
        temp_path.unlink(missing_ok=True)
    return label_counts


def write_mean(mean: np.ndarray, out_path: Path):
    temp_path = temporary_path(out_path)
    try:
        with h5py.File(temp_path, "w") as output:
            output["mean"] = mean.astype(np.float32)
        install(temp_path, out_path)
    finally:
        temp_path.unlink(missing_ok=True)


def install(temp_path: Path, out_path: Path):
    """Rename the complete HDF5 file ``temp_path`` to ``out_path``, with its
    SHA-256 sidecar ``<out_path>.sha256`` put in place first.

    A Ctrl-C waits until both are in place, so the file at ``out_path``
    always matches its sidecar.
    """
    with held_signals():
        replace_with_digest(temp_path, out_path)


def check_hdf5(path: Path):
    """Raise CIFARFormatError unless ``path`` has data (N, 3, 32, 32), label (N, 1)."""
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise CIFARFormatError(f"cannot open {path} as HDF5: {error}") from error
    with handle:
        for name in ("data", "label"):
            if not isinstance(handle.get(name), h5py.Dataset):
                raise CIFARFormatError(f"{path} has no dataset '{name}'")
        data, label = handle["data"], handle["label"]
        if data.shape[1:] != (CHANNELS, SIDE, SIDE):
            raise CIFARFormatError(
                f"{path}: dataset 'data' has shape {data.shape}; expected "
                f"(N, {CHANNELS}, {SIDE}, {SIDE})"
            )
        if label.shape != (data.shape[0], 1):
            raise CIFARFormatError(
                f"{path}: dataset 'label' has shape {label.shape}; expected "
                f"({data.shape[0]}, 1), one label per image"
            )


def write_source_list(list_path: Path, hdf5_path: Path):
    """Write a source list naming ``hdf5_path`` relative to the list's folder,
    under a temporary name that is renamed once written or deleted on error."""
    temp_path = temporary_path(list_path)
    try:
        temp_path.write_text(f"{os.path.relpath(hdf5_path, list_path.parent)}\n")
        temp_path.replace(list_path)
    finally:
        temp_path.unlink(missing_ok=True)


def prepare(source, out, *, force: bool = False) -> dict[str, Path]:
    """Write the HDF5 files and source lists into ``out``; return the lists by split.

    Splits whose HDF5 file and list exist are kept unless ``force``. Raises
    CIFARFormatError when ``source`` contains neither input layout.
    """
    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lists = {split: out / f"{split}.txt" for split in ("train", "test")}
    binaries = binary_inputs(source)
    if binaries is None:
        ready = [source / "train.hdf5", source / "test.hdf5"]
        if not all(path.exists() for path in ready):
            raise CIFARFormatError(
                f"{source} has neither the CIFAR-10 binary batches "
                f"({', '.join(TRAIN_FILES + TEST_FILES)}) nor train.hdf5 and "
                "test.hdf5"
            )
        for split, path in zip(("train", "test"), ready):
            check_hdf5(path)
            write_source_list(lists[split], path.resolve())
            logger.info("%s: using %s as it is", split, path)
        return lists

    done = all(
        (out / f"{split}.hdf5").exists() and lists[split].exists() for split in lists
    )
    if done and not force:
        logger.info("all outputs exist in %s; pass --force to rewrite them", out)
        return lists
    mean = mean_image(binaries["train"])
    write_mean(mean, out / "mean.hdf5")
    for split, paths in binaries.items():
        hdf5_path = out / f"{split}.hdf5"
        label_counts = write_split(paths, mean, hdf5_path)
        write_source_list(lists[split], hdf5_path)
        logger.info(
            "wrote %s: %d images; images per class 0..9: %s",
            hdf5_path,
            int(label_counts.sum()),
            label_counts.tolist(),
        )
    return lists


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source",
        type=Path,
        required=True,
        help="folder with the CIFAR-10 binary batches, or with train.hdf5 and "
        "test.hdf5",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=SCRIPT_DIR / "data",
        help="output folder (default: %(default)s)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rewrite outputs that already exist"
    )
    args = parser.parse_args(argv)
    try:
        lists = prepare(args.source, args.out, force=args.force)
    except CIFARFormatError as error:
        logger.error("%s", error)
        return 1
    for split, path in lists.items():
        logger.info("%s source list: %s", split, path)
    return 0


if __name__ == "__main__":
    # Only when run as a script, so that a program calling main() keeps its
    # own logging.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    # A Ctrl-C or SIGTERM logs one line and exits with status 130 or 143. The
    # output file being written is then deleted (write_split, write_mean).
    with exit_on_ctrl_c(), exit_on_sigterm():
        sys.exit(main())
