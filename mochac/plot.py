"""Learning curves from a coffee lounge file, drawn with matplotlib.

    mochac plot snapshots/statistics.h5 -o curve.png

Draws one panel per statistic the lounge recorded (objective, validation
accuracy, learning rate, ...) against the iteration.
"""

from __future__ import annotations

from pathlib import Path

from mochac.errors import DataError
from mochac.runtime.coffee_lounge import read_statistics

LABELS = {
    "obj_val": "training objective",
    "learning_rate": "learning rate",
    "momentum": "momentum",
}


def image_formats() -> list[str]:
    """Return the file suffixes (without the dot) matplotlib can save, sorted."""
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def plot_statistics(stats_path, out_path, names=None) -> list[str]:
    """Draw the statistics in ``stats_path`` into the image ``out_path``.

    ``names`` picks statistics (default: all but the sample counts). Returns
    the names drawn. Raises DataError when the file contains none of them.
    """
    figure, chosen = draw_statistics(stats_path, names)
    try:
        figure.savefig(Path(out_path))
    finally:
        close_figure(figure)
    return chosen


def draw_statistics(stats_path, names=None):
    """Draw the statistics in ``stats_path`` into a new matplotlib figure.

    Returns the figure and the names drawn, as plot_statistics does. The
    caller saves the figure and then releases it with close_figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = read_statistics(stats_path)
    available = [name for name in stats if not name.endswith("-count")]
    chosen = list(names) if names else available
    if not available:
        raise DataError(
            f"{stats_path} contains no statistics to draw, because the coffee "
            "breaks of its training recorded none; add TrainingSummary() (the "
            "objective) or ValidationPerformance(test_net) (its accuracies and "
            "losses) to the solver that writes it"
        )
    missing = [name for name in chosen if name not in stats]
    if missing:
        raise DataError(
            f"{stats_path} has no statistic {', '.join(missing)}; "
            f"it has: {', '.join(available)}; pick names from that list "
            "(mochac plot --stat NAME)"
        )
    figure, axes = plt.subplots(
        len(chosen), 1, figsize=(7, 2.6 * len(chosen)), squeeze=False
    )
    for axis, name in zip(axes[:, 0], chosen):
        series = stats[name]
        iterations = sorted(series)
        axis.plot(
            iterations,
            [series[i] for i in iterations],
            marker="." if len(series) < 50 else None,
        )
        axis.set_ylabel(LABELS.get(name, name))
        axis.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("iteration")
    figure.tight_layout()
    return figure, chosen


def close_figure(figure) -> None:
    """Release a figure of draw_statistics, which pyplot keeps until closed."""
    import matplotlib.pyplot as plt

    plt.close(figure)
