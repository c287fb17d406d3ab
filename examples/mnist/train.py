"""Train LeNet on MNIST, as in Mocha's tutorial.

Run prepare_data.py first; then:

    python examples/mnist/train.py [--max-iter 10000]

Snapshots go to examples/mnist/snapshots (a rerun resumes from the newest),
statistics to snapshots/statistics.h5, and the validation accuracy on the
10,000 test images is logged every 1,000 iterations.
"""

import argparse
import logging
import time
from pathlib import Path

from lenet import common_layers

from mochac import (
    SGD,
    AccuracyLayer,
    CPUBackend,
    HDF5DataLayer,
    LRPolicy,
    MomPolicy,
    Net,
    Snapshot,
    SoftmaxLossLayer,
    Solver,
    TrainingSummary,
    ValidationPerformance,
    add_coffee_break,
    init,
    log_to_console,
    make_solver_parameters,
    setup_coffee_lounge,
    shutdown,
    solve,
)
from mochac.runtime.ctrl_c import exit_on_ctrl_c
from mochac.runtime.sigterm import exit_on_sigterm

HERE = Path(__file__).resolve().parent
logger = logging.getLogger("mnist")


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected >= 0")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected >= 1")
    return value


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--max-iter", type=non_negative_int, default=10000, help="iterations to train"
    )
    parser.add_argument(
        "--data", type=Path, default=HERE / "data", help="prepared data folder"
    )
    parser.add_argument(
        "--snapshots", type=Path, default=HERE / "snapshots", help="snapshot folder"
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed for init and shuffling"
    )
    args = parser.parse_args()
    missing = [
        name for name in ("train.txt", "test.txt") if not (args.data / name).is_file()
    ]
    if missing:
        parser.error(
            f"--data {args.data}: {' and '.join(missing)} not found; prepare the "
            f"data first: python {HERE / 'prepare_data.py'} --out {args.data}"
        )
    return args


def main():
    args = parse_args()
    log_to_console()
    logger.addHandler(logging.getLogger("mochac").handlers[0])
    logger.setLevel(logging.INFO)

    backend = CPUBackend(threads=args.threads, seed=args.seed)
    init(backend)

    data_layer = HDF5DataLayer(
        name="train-data",
        source=str(args.data / "train.txt"),
        batch_size=64,
        shuffle=True,
    )
    common = common_layers()
    loss_layer = SoftmaxLossLayer(name="loss", bottoms=["ip2", "label"])
    net = Net("MNIST-train", backend, [data_layer, *common, loss_layer])

    method = SGD()
    params = make_solver_parameters(
        method,
        max_iter=args.max_iter,
        regu_coef=0.0005,
        mom_policy=MomPolicy.Fixed(0.9),
        lr_policy=LRPolicy.Inv(0.01, 0.0001, 0.75),
        load_from=str(args.snapshots),
    )
    solver = Solver(method, params)
    setup_coffee_lounge(
        solver, save_into=args.snapshots / "statistics.h5", every_n_iter=1000
    )
    add_coffee_break(solver, TrainingSummary(), every_n_iter=100)
    snapshots = Snapshot(args.snapshots)
    add_coffee_break(solver, snapshots, every_n_iter=5000)

    test_data = HDF5DataLayer(
        name="test-data", source=str(args.data / "test.txt"), batch_size=100
    )
    accuracy = AccuracyLayer(name="accuracy", bottoms=["ip2", "label"])
    test_net = Net("MNIST-test", backend, [test_data, *common, accuracy])
    validation = ValidationPerformance(test_net)
    add_coffee_break(solver, validation, every_n_iter=1000)

    start = time.perf_counter()
    # A Ctrl-C or SIGTERM logs where a rerun resumes and exits with status 130
    # or 143.
    with exit_on_ctrl_c(solver), exit_on_sigterm(solver):
        state = solve(solver, net)
        elapsed = time.perf_counter() - start
        if state.iter % 5000:
            # A run shorter than the snapshot interval (--max-iter 300) would
            # leave predict.py only the untrained snapshot of iteration 0.
            snapshots.enjoy(solver, net)
        final = validation.evaluate()["accuracy-accuracy"]
    first_iter = solver.start_iter
    logger.info(
        "trained %d iterations in %.1f s (%.1f iterations/s, %d thread(s)); "
        "test accuracy %.2f%%",
        state.iter - first_iter,
        elapsed,
        (state.iter - first_iter) / elapsed if elapsed else 0.0,
        backend.threads,
        100 * final,
    )
    shutdown(backend)


if __name__ == "__main__":
    # A Ctrl-C or SIGTERM outside solve() (compiling, loading data) also exits
    # with 130 or 143.
    with exit_on_ctrl_c(), exit_on_sigterm():
        main()
