"""Classify one MNIST test image with a trained LeNet snapshot.

    python examples/mnist/predict.py [--snapshot PATH] [--index 0]

The deploy net swaps the HDF5 data layer for a MemoryDataLayer and the loss
for a SoftmaxLayer, as in Mocha's tutorial; it prints the class probabilities.
"""

import argparse
from pathlib import Path

import h5py
import numpy as np
from lenet import common_layers

from mochac import CPUBackend, MemoryDataLayer, Net, SoftmaxLayer, load_snapshot
from mochac.runtime.ctrl_c import exit_on_ctrl_c
from mochac.runtime.sigterm import exit_on_sigterm
from mochac.runtime.snapshot import latest_snapshot

HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", type=Path, help="snapshot file (default: newest)")
    parser.add_argument(
        "--data", type=Path, default=HERE / "data", help="prepared data"
    )
    parser.add_argument("--index", type=int, default=0, help="test image index")
    args = parser.parse_args()

    snapshot = args.snapshot or latest_snapshot(HERE / "snapshots")
    if snapshot is None:
        parser.error("no snapshot found; run train.py first or pass --snapshot")

    image = np.zeros((1, 1, 28, 28), dtype=np.float32)
    test_file = args.data / "test.hdf5"
    if not test_file.is_file():
        parser.error(f"{test_file} not found; run prepare_data.py first or pass --data")
    with h5py.File(test_file, "r") as handle:
        count = len(handle["data"])
        if count == 0:
            parser.error(f"{args.data / 'test.hdf5'} contains no images")
        # Negative indexes count from the end, as in Python.
        if not -count <= args.index < count:
            parser.error(
                f"--index {args.index}: {args.data / 'test.hdf5'} has {count} "
                f"images, so the index must be from {-count} to {count - 1}"
            )
        image[0] = handle["data"][args.index]
        label = int(handle["label"][args.index, 0])

    data_layer = MemoryDataLayer(name="data", tops=["data"], batch_size=1, data=[image])
    softmax = SoftmaxLayer(name="prob", tops=["prob"], bottoms=["ip2"])
    net = Net(
        "MNIST-deploy", CPUBackend(threads=1), [data_layer, *common_layers(), softmax]
    )
    load_snapshot(net, snapshot)
    net.forward()
    probabilities = net.blobs["prob"][0]
    print(f"Snapshot: {snapshot}")
    print(f"Correct label: {label}")
    print(f"Predicted label: {int(np.argmax(probabilities))}")
    print("Label probability vector:")
    for digit, value in enumerate(probabilities):
        print(f"  {digit}: {value:.6e}")


if __name__ == "__main__":
    # A Ctrl-C or SIGTERM (while the net compiles, say) exits with status 130
    # or 143.
    with exit_on_ctrl_c(), exit_on_sigterm():
        main()
