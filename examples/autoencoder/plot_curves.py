"""Draw the fine-tuning curves of several runs on shared axes.

    python examples/autoencoder/plot_curves.py OUT_DIR [-o curves.png]

``mochac plot`` draws the statistics of one coffee lounge file. This script
overlays the files of the pre-trained and the randomly initialized DNN, with
the training objective in the upper panel and the test accuracy below it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mochac.runtime.coffee_lounge import read_statistics

PANELS = (
    ("obj_val", "training objective"),
    ("test-accuracy-accuracy", "test accuracy"),
)


def plot_comparison(stats_paths: dict[str, Path], out_path: Path):
    """Draw each run's objective and test accuracy into the PNG ``out_path``.

    ``stats_paths`` maps a legend label to a coffee lounge HDF5 file. A
    statistic missing from a file is left out of its panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(PANELS), 1, figsize=(6.4, 5.2), sharex=True)
    for label, path in stats_paths.items():
        stats = read_statistics(path)
        for axis, (name, _) in zip(axes, PANELS):
            series = stats.get(name)
            if not series:
                continue
            iterations = sorted(series)
            axis.plot(iterations, [series[i] for i in iterations], label=label)
    for axis, (_, title) in zip(axes, PANELS):
        axis.set_ylabel(title)
        axis.grid(True, alpha=0.3)
    axes[0].legend()
    axes[-1].set_xlabel("fine-tuning iteration")
    figure.tight_layout()
    figure.savefig(out_path, dpi=80)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="output folder of train.py")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="image (default OUT_DIR/curves.png)",
    )
    args = parser.parse_args(argv)
    plot_comparison(
        {
            "pre-trained": args.out_dir / "finetune" / "statistics.h5",
            "random init": args.out_dir / "randinit" / "statistics.h5",
        },
        args.output or args.out_dir / "curves.png",
    )


if __name__ == "__main__":
    main()
