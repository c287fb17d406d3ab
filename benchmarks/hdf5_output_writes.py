"""Time appending batches to an HDF5 file through WriteGuard against h5py's
own file driver, in one process.

HDF5OutputLayer writes through mochac.durable_files.WriteGuard, a Python
file object, so that a failed write never reaches HDF5. This measures what
that costs per batch, doing what HDF5Output.collect does: resize the
dataset, write the batch, flush.

    python benchmarks/hdf5_output_writes.py [--batches 300] [--width 1024]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from mochac.durable_files import WriteGuard


def append_batches(handle, batch: np.ndarray, count: int) -> float:
    """Append ``batch`` ``count`` times; return the seconds per batch."""
    dataset = handle.create_dataset(
        "x",
        shape=(0, batch.shape[1]),
        maxshape=(None, batch.shape[1]),
        dtype=batch.dtype,
        chunks=True,
    )
    start = time.perf_counter()
    for _ in range(count):
        rows = dataset.shape[0]
        dataset.resize(rows + len(batch), axis=0)
        dataset[rows:] = batch
        handle.flush()
    return (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300, help="batches per run")
    parser.add_argument("--width", type=int, default=1024, help="values per row")
    parser.add_argument("--batch", type=int, default=64, help="rows per batch")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each")
    args = parser.parse_args()
    batch = np.random.default_rng(0).normal(size=(args.batch, args.width))
    batch = batch.astype(np.float32)
    times = {"h5py driver": [], "WriteGuard": []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            path = Path(folder) / f"direct-{repeat}.h5"
            with h5py.File(path, "w") as handle:
                times["h5py driver"].append(append_batches(handle, batch, args.batches))
            path = Path(folder) / f"guarded-{repeat}.h5"
            path.touch()
            stream = WriteGuard(path)
            with h5py.File(stream, "w") as handle:
                times["WriteGuard"].append(append_batches(handle, batch, args.batches))
            stream.close()
    medians = {name: float(np.median(values)) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:12s} {value * 1e6:8.0f} us per batch (median of {args.repeats})")
    ratio = medians["WriteGuard"] / medians["h5py driver"]
    print(f"WriteGuard / h5py driver: {ratio:.2f}")
    print(f"h5py {h5py.__version__}, HDF5 {h5py.version.hdf5_version}")


if __name__ == "__main__":
    main()
