"""Pre-train a DNN on MNIST with stacked denoising auto-encoders (Mocha tutorial).

    python examples/autoencoder/train.py [--threads 1]

The DNN has three hidden InnerProductLayers of 1000 sigmoid units and a
10-way softmax on top. The script runs four steps:

1. Pre-training: for each hidden layer i, a denoising auto-encoder net reads
   the output of the frozen hidden layers below it and copies it with a
   SplitLayer. A RandomMaskLayer zeroes a fraction of one copy (0.1, 0.2,
   0.3 for layers 1, 2, 3). Hidden layer i encodes it, and a
   TiedInnerProductLayer that uses the encoder's weight decodes it. As in
   Mocha, the decoder learns only its bias, so the encoder's gradient alone
   trains the shared weight. A SquareLossLayer compares the reconstruction
   with the uncorrupted copy.
   The encoder shares its parameters with the DNN's hidden layer through
   its param_key.
2. Fine-tuning: the whole DNN, starting from the pre-trained hidden layers,
   is trained with a softmax loss.
3. Random initialization: the backend's registry is cleared and the same
   DNN is trained from random parameters with the same schedule.
4. Both DNNs are evaluated on the 10,000 test images.

The hyper-parameters are the tutorial's (batch size 100, no momentum, no
weight decay, learning rate 0.001 for pre-training and 0.1 for
fine-tuning), but the default iteration counts are smaller: 2,000
pre-training iterations per layer (the tutorial runs 9,000, 15 epochs) and
6,000 fine-tuning iterations (the tutorial runs 600,000, 1,000 epochs).
Pass --pretrain-iter 9000 --finetune-iter 600000 for the tutorial's
schedule.

Output, in --out (default: output/ next to this script):

    pretrain-<i>/statistics.h5   reconstruction loss of auto-encoder i
    finetune/statistics.h5       training objective and test accuracy
    randinit/statistics.h5       the same for the randomly initialized DNN
    <phase>/snapshot-*.h5        parameters at the end of each phase
    summary.json                 settings, test accuracies, times
    curves.png                   fine-tuning curves of both DNNs

A rerun resumes each phase from the newest snapshot in its folder; delete
the folder to start over. A rerun with other net settings, such as
--hidden-units, into the same --out stops with a message to do so.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from plot_curves import plot_comparison

from mochac import (
    SGD,
    AccuracyLayer,
    CPUBackend,
    HDF5DataLayer,
    IdentityLayer,
    InnerProductLayer,
    LRPolicy,
    MomPolicy,
    Net,
    Neurons,
    RandomMaskLayer,
    Snapshot,
    SnapshotError,
    SoftmaxLossLayer,
    Solver,
    SplitLayer,
    SquareLossLayer,
    TiedInnerProductLayer,
    TrainingSummary,
    ValidationPerformance,
    __version__,
    add_coffee_break,
    destroy,
    freeze_all,
    init,
    log_to_console,
    make_solver_parameters,
    setup_coffee_lounge,
    shutdown,
    solve,
    unfreeze,
)
from mochac.runtime.ctrl_c import exit_on_ctrl_c
from mochac.runtime.sigterm import exit_on_sigterm

HERE = Path(__file__).resolve().parent
MNIST_DIR = HERE.parent / "mnist"
logger = logging.getLogger("autoencoder")


def parse_rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(item) for item in text.split(","))
    except ValueError:
        rates = ()
    if not rates or not all(0 < rate < 1 for rate in rates):
        raise argparse.ArgumentTypeError(
            f"invalid corruption rates {text!r}; expected numbers in (0, 1) separated "
            "by commas, one per hidden layer, such as 0.1,0.2,0.3"
        )
    return rates


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=MNIST_DIR / "data",
        help="folder with train.txt and test.txt; MNIST is prepared there when "
        "they are missing (default: examples/mnist/data)",
    )
    parser.add_argument(
        "--out", type=Path, default=HERE / "output", help="output folder"
    )

    parser.add_argument(
        "--hidden-units",
        type=int,
        default=1000,
        help="units per hidden layer (default 1000)",
    )
    parser.add_argument(
        "--corruption",
        type=parse_rates,
        default=(0.1, 0.2, 0.3),
        help="fraction of inputs zeroed for each auto-encoder; their count sets "
        "the number of hidden layers (default 0.1,0.2,0.3)",
    )

    parser.add_argument(
        "--batch-size", type=int, default=100, help="samples per batch (default 100)"
    )
    parser.add_argument(
        "--pretrain-iter",
        type=int,
        default=2000,
        help="pre-training iterations per hidden layer (default 2000)",
    )
    parser.add_argument(
        "--finetune-iter",
        type=int,
        default=6000,
        help="fine-tuning iterations of each DNN (default 6000)",
    )
    parser.add_argument(
        "--pretrain-lr",
        type=float,
        default=0.001,
        help="learning rate of pre-training (default 0.001)",
    )
    parser.add_argument(
        "--finetune-lr",
        type=float,
        default=0.1,
        help="learning rate of fine-tuning (default 0.1)",
    )

    parser.add_argument(
        "--summary-every",
        type=int,
        default=100,
        help="iterations between recorded training objectives (default 100)",
    )
    parser.add_argument(
        "--test-every",
        type=int,
        default=500,
        help="fine-tuning iterations between test-set evaluations (default 500)",
    )

    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    parser.add_argument(
        "--seed", type=int, default=12345678, help="seed for init, shuffling, masks"
    )

    args = parser.parse_args(argv)
    for name in ("hidden_units", "batch_size", "summary_every", "test_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("pretrain_iter", "finetune_iter"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


def ensure_mnist(data: Path):
    """Run examples/mnist/prepare_data.py into ``data`` unless its lists exist."""
    if (data / "train.txt").exists() and (data / "test.txt").exists():
        return
    logger.info("%s has no train.txt and test.txt; preparing MNIST there", data)
    sys.path.insert(0, str(MNIST_DIR))
    import prepare_data

    if prepare_data.main(["--out", str(data)]) != 0:
        raise SystemExit(f"preparing MNIST in {data} failed; see the log above")


def hidden_layers(corruption, n_units) -> list[InnerProductLayer]:
    """Return the DNN's hidden layers ip-1..ip-n, reading blob ip0 (the image).

    Each layer keeps its parameters under the param_key ip-layer-<i>, which
    the auto-encoder's encoder shares.
    """
    return [
        InnerProductLayer(
            name=f"ip-{i}",
            param_key=f"ip-layer-{i}",
            output_dim=n_units,
            neuron=Neurons.Sigmoid(),
            bottoms=[f"ip{i - 1}"],
            tops=[f"ip{i}"],
        )
        for i in range(1, len(corruption) + 1)
    ]


def autoencoder_layers(i, ratio, data_layer, rename_layer, hidden):
    """Return the layers of the denoising auto-encoder of hidden layer ``i`` (1-based).

    Hidden layers below i compute the input ip<i-1>. A SplitLayer copies it
    into orig and corrupt, the RandomMaskLayer zeroes a fraction ``ratio``
    of corrupt, hidden layer i (a copy that reads the masked blob) encodes
    it, and the tied decoder reconstructs orig.
    """
    split = SplitLayer(
        name=f"split-{i}", bottoms=[f"ip{i - 1}"], tops=["orig_data", "corrupt_data"]
    )
    corrupt = RandomMaskLayer(
        name=f"mask-{i}", ratio=ratio, bottoms=["corrupt_data"], tops=["masked_data"]
    )
    encoder = hidden[i - 1].replace(bottoms=["masked_data"])
    decoder = TiedInnerProductLayer(
        name=f"tied-ip-{i}",
        tied_param_key=encoder.param_key,
        bottoms=[f"ip{i}"],
        tops=["recon"],
    )
    loss = SquareLossLayer(name=f"recon-loss-{i}", bottoms=["recon", "orig_data"])
    return [
        data_layer,
        rename_layer,
        *hidden[: i - 1],
        split,
        corrupt,
        encoder,
        decoder,
        loss,
    ]


def make_solver(max_iter, learning_rate, folder: Path, summary_every):
    """Return an SGD solver with the tutorial's settings, saving into ``folder``.

    No momentum and no weight decay. Statistics go to folder/statistics.h5.
    Snapshots are saved at iterations 0 and max_iter, and a rerun resumes
    from the newest snapshot in ``folder``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    method = SGD()
    params = make_solver_parameters(
        method,
        max_iter=max_iter,
        regu_coef=0.0,
        mom_policy=MomPolicy.Fixed(0.0),
        lr_policy=LRPolicy.Fixed(learning_rate),
        load_from=str(folder),
    )
    solver = Solver(method, params)
    setup_coffee_lounge(
        solver, save_into=folder / "statistics.h5", every_n_iter=max(max_iter, 1)
    )
    add_coffee_break(solver, TrainingSummary(), every_n_iter=summary_every)
    add_coffee_break(solver, Snapshot(folder), every_n_iter=max(max_iter, 1))
    return solver


def pretrain(backend, args, data_layer, rename_layer, hidden) -> list[dict]:
    """Train one denoising auto-encoder per hidden layer, bottom to top.

    Returns per layer: the reconstruction losses recorded, the seconds
    taken, and a copy of the encoder's weight after training.
    """
    results = []
    for i, ratio in enumerate(args.corruption, start=1):
        layers = autoencoder_layers(i, ratio, data_layer, rename_layer, hidden)
        da = Net(f"Denoising-Autoencoder-{i}", backend, layers)
        # Only the encoder and decoder of this auto-encoder learn, so the
        # hidden layers below keep their pre-trained parameters, and
        # training steps skip their backward passes.
        freeze_all(da)
        unfreeze(da, f"ip-{i}", f"tied-ip-{i}")

        solver = make_solver(
            args.pretrain_iter,
            args.pretrain_lr,
            args.out / f"pretrain-{i}",
            args.summary_every,
        )
        start = time.perf_counter()
        # A Ctrl-C or SIGTERM logs where a rerun resumes and exits with status
        # 130 or 143.
        with exit_on_ctrl_c(solver), exit_on_sigterm(solver):
            solve(solver, da)
        seconds = time.perf_counter() - start
        losses = solver.lounge.statistics.get("obj_val", {})
        iterations = sorted(losses)
        logger.info(
            "auto-encoder %d: reconstruction loss %.4f at iteration %d, %.4f at %d; "
            "%.1f s",
            i,
            losses[iterations[0]],
            iterations[0],
            losses[iterations[-1]],
            iterations[-1],
            seconds,
        )
        results.append(
            {
                "layer": f"ip-{i}",
                "corruption": ratio,
                "iterations": args.pretrain_iter,
                "seconds": round(seconds, 1),
                "loss": {str(k): losses[k] for k in iterations},
                "weight": da.params[f"ip-{i}"]["weight"].copy(),
            }
        )
        destroy(da)
    return results


def finetune(backend, args, name, train_layers, test_layers) -> dict:
    """Train the DNN ``train_layers`` with a softmax loss; test it every few steps.

    Returns the final test accuracy, the seconds taken, and copies of the
    hidden layers' weights before training.
    """
    net = Net(f"MNIST-{name}", backend, train_layers)
    initial = {
        layer: params["weight"].copy()
        for layer, params in net.params.items()
        if layer.startswith("ip-")
    }
    solver = make_solver(
        args.finetune_iter, args.finetune_lr, args.out / name, args.summary_every
    )
    test_net = Net(f"MNIST-{name}-test", backend, test_layers)
    validation = ValidationPerformance(test_net)
    add_coffee_break(solver, validation, every_n_iter=args.test_every)

    start = time.perf_counter()
    with exit_on_ctrl_c(solver), exit_on_sigterm(solver):
        solve(solver, net)
        seconds = time.perf_counter() - start
        stats = validation.evaluate()
    accuracy = stats["test-accuracy-accuracy"]
    logger.info(
        "%s: test accuracy %.2f%% over %d images after %d iterations; %.1f s",
        name,
        100 * accuracy,
        int(stats["test-accuracy-count"]),
        args.finetune_iter,
        seconds,
    )
    destroy(net)
    destroy(test_net)
    return {
        "test_accuracy": accuracy,
        "test_images": int(stats["test-accuracy-count"]),
        "iterations": args.finetune_iter,
        "seconds": round(seconds, 1),
        "initial_weights": initial,
    }


def write_summary(args, argv, pretrained, finetuned, randinit, seconds) -> dict:
    """Write summary.json into args.out and return its contents."""
    summary = {
        "command": " ".join(["python examples/autoencoder/train.py", *argv]),
        "mochac": __version__,
        "numpy": np.__version__,
        "threads": args.threads,
        "seed": args.seed,
        "hidden_units": args.hidden_units,
        "corruption": list(args.corruption),
        "batch_size": args.batch_size,
        "pretrain_lr": args.pretrain_lr,
        "finetune_lr": args.finetune_lr,
        "pretrain": [
            {key: value for key, value in layer.items() if key != "weight"}
            for layer in pretrained
        ],
        "finetune": {
            key: value for key, value in finetuned.items() if key != "initial_weights"
        },
        "randinit": {
            key: value for key, value in randinit.items() if key != "initial_weights"
        },
        "total_seconds": round(seconds, 1),
    }
    path = args.out / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("wrote %s", path)
    return summary


def remove_console_handler(handler) -> None:
    """Detach the console handler that main added to mochac's and this script's log."""
    logging.getLogger("mochac").removeHandler(handler)
    logger.removeHandler(handler)


def main(argv=None) -> dict:
    """Run pre-training, fine-tuning and the comparison; return the results.

    The result contains "summary" (what summary.json contains), "pretrained"
    (per layer, with the encoder's weight after pre-training), "finetune"
    and "randinit" (each with the hidden weights the DNN started from).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    handler = log_to_console()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    started = time.perf_counter()

    ensure_mnist(args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    backend = CPUBackend(threads=args.threads, seed=args.seed)
    args.threads = backend.threads
    init(backend)

    data_layer = HDF5DataLayer(
        name="train-data",
        source=str(args.data / "train.txt"),
        batch_size=args.batch_size,
        shuffle=True,
    )
    test_data_layer = HDF5DataLayer(
        name="test-data", source=str(args.data / "test.txt"), batch_size=100
    )
    rename_layer = IdentityLayer(name="rename", bottoms=["data"], tops=["ip0"])
    hidden = hidden_layers(args.corruption, args.hidden_units)
    top = f"ip{len(hidden)}"
    pred_layer = InnerProductLayer(
        name="pred", output_dim=10, bottoms=[top], tops=["pred"]
    )
    loss_layer = SoftmaxLossLayer(name="loss", bottoms=["pred", "label"])
    accuracy_layer = AccuracyLayer(name="test-accuracy", bottoms=["pred", "label"])
    train_layers = [data_layer, rename_layer, *hidden, pred_layer, loss_layer]
    test_layers = [test_data_layer, rename_layer, *hidden, pred_layer, accuracy_layer]

    try:
        pretrained = pretrain(backend, args, data_layer, rename_layer, hidden)
        finetuned = finetune(backend, args, "finetune", train_layers, test_layers)

        # The comparison: forget every parameter, so the same layers start
        # from their initializers.
        backend.registry_reset()
        randinit = finetune(backend, args, "randinit", train_layers, test_layers)
    except SnapshotError as error:
        # Each phase resumes from the snapshots in its folder, which fail to
        # load when an earlier run used other settings, such as --hidden-units.
        # A snapshot that cannot be written (a full disk) raises this too.
        shutdown(backend)
        remove_console_handler(handler)
        raise SystemExit(
            f"a snapshot in {args.out} failed: {error}\n"
            f"If an earlier run into {args.out} used other settings, delete "
            f"{args.out} to start over or choose another --out."
        ) from None
    shutdown(backend)

    plot_comparison(
        {
            "pre-trained": args.out / "finetune" / "statistics.h5",
            "random init": args.out / "randinit" / "statistics.h5",
        },
        args.out / "curves.png",
    )
    seconds = time.perf_counter() - started
    summary = write_summary(args, argv, pretrained, finetuned, randinit, seconds)
    logger.info(
        "test accuracy: %.2f%% pre-trained, %.2f%% random init; %.1f s in all",
        100 * finetuned["test_accuracy"],
        100 * randinit["test_accuracy"],
        seconds,
    )
    remove_console_handler(handler)
    return {
        "summary": summary,
        "pretrained": pretrained,
        "finetune": finetuned,
        "randinit": randinit,
    }


if __name__ == "__main__":
    # A Ctrl-C or SIGTERM outside solve() (preparing data, compiling) also
    # exits with 130 or 143.
    with exit_on_ctrl_c(), exit_on_sigterm():
        main(sys.argv[1:])
