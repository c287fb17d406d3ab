"""Time saving and loading a LeNet snapshot with and without its SHA-256 file.

    python benchmarks/snapshot_digest.py [--repeats 20] [--folder /tmp/digest]

Builds the MNIST tutorial's LeNet at batch 64 (random data), takes one SGD
step so the snapshot has its history buffers, then alternates, round by
round: save_snapshot as mochac runs it (the file, its ``.sha256`` digest
file and the fsync calls around the renames) and the same save without the
digest (write_atomically's ``digest=False``), then loading the parameters
from a snapshot with and without its digest file. Prints the medians in
milliseconds and the snapshot's size. Both saves go to the same folder, so
they share its file system.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

from mochac import SGD, CPUBackend, Net, load_snapshot
from mochac.bench.nets import lenet
from mochac.runtime import snapshot
from mochac.runtime.solver import SolverState


def elapsed_ms(function) -> float:
    start = time.perf_counter()
    function()
    return 1000 * (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="rounds per case")
    parser.add_argument(
        "--folder", default="/tmp/mochac-digest-bench", help="scratch folder"
    )
    args = parser.parse_args()

    folder = Path(args.folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    net = Net("lenet", CPUBackend(seed=0), lenet(64))
    method = SGD()
    net.forward()
    net.backward()
    method.update(net, 0.01, 0.9, 0.0005)
    state = SolverState(iter=1, method="SGD")
    buffers = method.buffers

    with_digest = folder / "with.h5"
    without_digest = folder / "without.h5"
    original = snapshot.write_atomically

    def save_with():
        snapshot.save_snapshot(with_digest, net, state, buffers=buffers)

    def save_without():
        snapshot.write_atomically = lambda path, fill, digest=False: original(
            path, fill, digest=False
        )
        try:
            snapshot.save_snapshot(without_digest, net, state, buffers=buffers)
        finally:
            snapshot.write_atomically = original

    save_with()
    save_without()
    saves = {"with digest": [], "without digest": []}
    loads = {"with digest": [], "without digest": []}
    for _ in range(args.repeats):
        saves["with digest"].append(elapsed_ms(save_with))
        saves["without digest"].append(elapsed_ms(save_without))
        loads["with digest"].append(elapsed_ms(lambda: load_snapshot(net, with_digest)))
        loads["without digest"].append(
            elapsed_ms(lambda: load_snapshot(net, without_digest))
        )

    size = with_digest.stat().st_size
    print(f"LeNet snapshot with SGD history: {size / 1e6:.2f} MB in {folder}")
    for title, table in (("save", saves), ("load parameters", loads)):
        with_ms = statistics.median(table["with digest"])
        without_ms = statistics.median(table["without digest"])
        print(
            f"{title}: {with_ms:.1f} ms with the digest, {without_ms:.1f} ms without "
            f"(median of {args.repeats})"
        )


if __name__ == "__main__":
    main()
