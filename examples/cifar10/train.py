"""Train the "full" CIFAR-10 net of Mocha's tutorial.

Run prepare_data.py first; then:

    python examples/cifar10/train.py [--data DIR] [--max-iter 70000]

The solver settings are the tutorial's, translated from Caffe's
cifar10_full_solver*.prototxt: SGD with momentum 0.9, regu_coef 0.004, and a
learning rate of 0.001 for 60,000 iterations, then 0.0001 and 0.00001 for
5,000 each. Snapshots go to examples/cifar10/snapshots every 5,000 iterations
(a rerun resumes from the newest), and the accuracy on the test set is logged
every 1,000 iterations. --filters and --batch-size build smaller copies of
the net for quick checks.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from full_net import FULL_FILTERS, common_layers

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
    XavierInitializer,
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
logger = logging.getLogger("cifar10")


def staged_lr_policy(base_lr: float):
    """Return the tutorial's schedule: base_lr, then a tenth, then a hundredth."""
    return LRPolicy.Staged(
        (60000, LRPolicy.Fixed(base_lr)),
        (5000, LRPolicy.Fixed(base_lr / 10)),
        (5000, LRPolicy.Fixed(base_lr / 100)),
    )


def parse_filters(text: str) -> tuple[int, int, int]:
    values = tuple(int(item) for item in text.split(","))
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"invalid --filters {text!r}; expected three positive ints such as 32,32,64"
        )
    return values


def positive_int(text: str) -> int:
    """Parse a command-line value that must be an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}; expected an int >= 1"
        )
    return value


def non_negative(kind):
    """Return an argparse type that parses ``kind`` (int or float) and rejects values < 0."""

    def parse(text: str):
        value = kind(text)
        if not value >= 0:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}; expected >= 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=HERE / "data", help="prepared data folder"
    )
    parser.add_argument(
        "--max-iter", type=non_negative(int), default=70000, help="iterations to train"
    )
    parser.add_argument(
        "--snapshots", type=Path, default=HERE / "snapshots", help="snapshot folder"
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=100,
        help="samples per batch (default 100)",
    )
    parser.add_argument(
        "--filters",
        type=parse_filters,
        default=FULL_FILTERS,
        help="n_filter of conv1, conv2, conv3 (default 32,32,64)",
    )
    parser.add_argument(
        "--conv-init",
        choices=("tutorial", "xavier"),
        default="tutorial",
        help="initializers of the conv filters: the tutorial's Gaussians (default) "
        "or Xavier, which learns sooner in short check runs",
    )
    parser.add_argument(
        "--base-lr",
        type=non_negative(float),
        default=0.001,
        help="learning rate of the first stage (default 0.001)",
    )
    parser.add_argument(
        "--summary-every",
        type=positive_int,
        default=200,
        help="iterations between summaries",
    )
    parser.add_argument(
        "--test-every",
        type=positive_int,
        default=1000,
        help="iterations between test runs",
    )
    parser.add_argument(
        "--snapshot-every",
        type=positive_int,
        default=5000,
        help="iterations between snapshots",
    )
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="CPU threads"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed for init and shuffling"
    )
    args = parser.parse_args(argv)
    missing = [
        name for name in ("train.txt", "test.txt") if not (args.data / name).is_file()
    ]
    if missing:
        parser.error(
            f"{args.data} has no {' or '.join(missing)}; convert CIFAR-10 there first: "
            f"python examples/cifar10/prepare_data.py --source DIR --out {args.data}"
        )
    return args


def main(argv=None):
    """Train with the command-line options; return (solver, validation coffee break)."""
    args = parse_args(argv)
    handler = log_to_console()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    backend = CPUBackend(threads=args.threads, seed=args.seed)
    init(backend)

    data_layer = HDF5DataLayer(
        name="data-train",
        source=str(args.data / "train.txt"),
        batch_size=args.batch_size,
        shuffle=True,
    )
    conv_init = XavierInitializer() if args.conv_init == "xavier" else None
    common = common_layers(args.filters, conv_init)
    loss_layer = SoftmaxLossLayer(name="softmax", bottoms=["ip1", "label"])
    net = Net("CIFAR10-train", backend, [data_layer, *common, loss_layer])

    # An existing folder is never mistaken for a snapshot file, whatever its name.
    args.snapshots.mkdir(parents=True, exist_ok=True)
    method = SGD()
    params = make_solver_parameters(
        method,
        max_iter=args.max_iter,
        regu_coef=0.004,
        mom_policy=MomPolicy.Fixed(0.9),
        lr_policy=staged_lr_policy(args.base_lr),
        load_from=str(args.snapshots),
    )
    solver = Solver(method, params)
    setup_coffee_lounge(
        solver, save_into=args.snapshots / "statistics.h5", every_n_iter=1000
    )
    add_coffee_break(solver, TrainingSummary(), every_n_iter=args.summary_every)
    add_coffee_break(solver, Snapshot(args.snapshots), every_n_iter=args.snapshot_every)

    test_data = HDF5DataLayer(
        name="data-test", source=str(args.data / "test.txt"), batch_size=args.batch_size
    )
    accuracy = AccuracyLayer(name="accuracy", bottoms=["ip1", "label"])
    test_net = Net("CIFAR10-test", backend, [test_data, *common, accuracy])
    validation = ValidationPerformance(test_net)
    add_coffee_break(solver, validation, every_n_iter=args.test_every)

    start = time.perf_counter()
    # A Ctrl-C or SIGTERM logs where a rerun resumes and exits with status 130
    # or 143.
    with exit_on_ctrl_c(solver), exit_on_sigterm(solver):
        state = solve(solver, net)
    elapsed = time.perf_counter() - start
    trained = state.iter - solver.start_iter
    logger.info(
        "trained %d iterations in %.1f s (%.2f iterations/s, %d threads)",
        trained,
        elapsed,
        trained / elapsed if elapsed else 0.0,
        backend.threads,
    )
    shutdown(backend)
    logging.getLogger("mochac").removeHandler(handler)
    logger.removeHandler(handler)
    return solver, validation


if __name__ == "__main__":
    # A Ctrl-C or SIGTERM outside solve() (compiling, loading data) also exits
    # with 130 or 143.
    with exit_on_ctrl_c(), exit_on_sigterm():
        main(sys.argv[1:])
