"""Time opening an HDF5 data layer's files with and without their SHA-256 file.

    python benchmarks/data_digest.py [--source examples/mnist/data/train.txt]
        [--repeats 10]

The files named in the source list need their ``.sha256`` sidecars, which
examples/mnist/prepare_data.py writes. Each round opens the source of an
HDF5DataLayer (reads the files whole) and of an AsyncHDF5DataLayer (reads
only their metadata), once with the sidecars and once with them renamed
aside, and hashes the files alone. The record of files already checked in
this process is cleared before each open, as in a new process. Prints the
medians in seconds and the files' total size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from mochac import AsyncHDF5DataLayer, HDF5DataLayer
from mochac.durable_files import file_sha256
from mochac.runtime import hdf5_files
from mochac.runtime.data_sources import make_source
from mochac.runtime.file_digest import digest_path

SCRIPT_DIR = Path(__file__).resolve().parent


def elapsed_s(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def open_and_close(layer) -> None:
    hdf5_files._matched_digests.clear()
    make_source(layer, np.float32, np.random.default_rng(0)).close()


def hash_files(paths) -> None:
    for path in paths:
        file_sha256(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=SCRIPT_DIR.parent / "examples" / "mnist" / "data" / "train.txt",
        help="source list of HDF5 files with sidecars (default: %(default)s)",
    )
    parser.add_argument("--repeats", type=int, default=10, help="rounds per case")
    args = parser.parse_args()

    layers = {
        "HDF5DataLayer": HDF5DataLayer(source=str(args.source), batch_size=64),
        "AsyncHDF5DataLayer": AsyncHDF5DataLayer(
            source=str(args.source), batch_size=64
        ),
    }
    paths = hdf5_files.read_source_list(layers["HDF5DataLayer"])
    sidecars = [digest_path(path) for path in paths]
    missing = [str(sidecar) for sidecar in sidecars if not sidecar.is_file()]
    if missing:
        parser.error(f"no sidecar {', '.join(missing)}; run prepare_data.py first")
    aside = [sidecar.with_name(sidecar.name + ".aside") for sidecar in sidecars]

    times = {(kind, case): [] for kind in layers for case in ("with", "without")}
    hashes = []
    # A warm-up round fills the page cache.
    for layer in layers.values():
        open_and_close(layer)
    for _ in range(args.repeats):
        for kind, layer in layers.items():
            times[kind, "with"].append(elapsed_s(open_and_close, layer))
        for sidecar, moved in zip(sidecars, aside):
            sidecar.rename(moved)
        try:
            for kind, layer in layers.items():
                times[kind, "without"].append(elapsed_s(open_and_close, layer))
        finally:
            for sidecar, moved in zip(sidecars, aside):
                moved.rename(sidecar)
        hashes.append(elapsed_s(hash_files, paths))

    size = sum(path.stat().st_size for path in paths)
    print(f"{len(paths)} file(s) in {args.source}: {size / 1e6:.1f} MB")
    for kind in layers:
        with_s = statistics.median(times[kind, "with"])
        without_s = statistics.median(times[kind, "without"])
        print(
            f"{kind} source: {with_s:.3f} s with the digest, {without_s:.3f} s "
            f"without (median of {args.repeats})"
        )
    print(f"SHA-256 of the files alone: {statistics.median(hashes):.3f} s")


if __name__ == "__main__":
    main()
