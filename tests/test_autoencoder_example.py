"""examples/autoencoder: stacked denoising auto-encoders, end to end on small data."""

from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from default_sigint import interrupt_at_line, paused_script_command
from paused_script import PAUSED_LINE

from mochac.runtime.coffee_lounge import read_statistics

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = REPO / "examples" / "autoencoder"
N_TRAIN = 400
N_TEST = 100
PRETRAIN_ITER = 80
FINETUNE_ITER = 60


def load_train_module():
    """Import train.py, putting its folder on sys.path for its own imports."""
    if str(EXAMPLE_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLE_DIR))
    spec = importlib.util.spec_from_file_location(
        "autoencoder_train", EXAMPLE_DIR / "train.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_split(folder: Path, name: str, n: int, seed: int):
    """Write n 8x8 images in [0, 1]: a random binary pattern per class plus noise."""
    patterns = np.random.default_rng(0).random((10, 1, 8, 8)) > 0.5
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = 0.8 * patterns[labels] + 0.2 * rng.random((n, 1, 8, 8))
    with h5py.File(folder / f"{name}.hdf5", "w") as handle:
        handle["data"] = images.astype(np.float32)
        handle["label"] = labels.astype(np.float32)[:, None]
    (folder / f"{name}.txt").write_text(f"{name}.hdf5\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Run train.py once on synthetic data; return (its result, output folder)."""
    root = tmp_path_factory.mktemp("autoencoder")
    data = root / "data"
    data.mkdir()
    write_split(data, "train", N_TRAIN, seed=1)
    write_split(data, "test", N_TEST, seed=2)
    out = root / "out"
    train = load_train_module()
    result = train.main(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--hidden-units",
            "24",
            "--corruption",
            "0.1,0.2",
            "--batch-size",
            "20",
            "--pretrain-iter",
            str(PRETRAIN_ITER),
            "--pretrain-lr",
            "0.01",
            "--finetune-iter",
            str(FINETUNE_ITER),
            "--summary-every",
            "1",
            "--test-every",
            "30",
            "--threads",
            "1",
            "--seed",
            "3",
        ]
    )
    return result, out


def test_reconstruction_loss_falls(run):
    result, _ = run
    assert [layer["layer"] for layer in result["pretrained"]] == ["ip-1", "ip-2"]
    for layer in result["pretrained"]:
        losses = [layer["loss"][key] for key in sorted(layer["loss"], key=int)]
        assert len(losses) == PRETRAIN_ITER + 1, layer["layer"]
        assert np.all(np.isfinite(losses)), layer["layer"]
        first = np.mean(losses[:5])
        last = np.mean(losses[-5:])
        assert last < 0.5 * first, (layer["layer"], first, last)


def test_finetune_starts_from_encoders(run):
    """The DNN starts from the auto-encoders' weights: one registry entry."""
    result, _ = run
    initial = result["finetune"]["initial_weights"]
    assert sorted(initial) == ["ip-1", "ip-2"]
    for layer in result["pretrained"]:
        np.testing.assert_array_equal(initial[layer["layer"]], layer["weight"])


def test_lower_layer_frozen(run):
    """Training auto-encoder 2 leaves ip-1 as auto-encoder 1 left it."""
    result, out = run
    with h5py.File(out / "pretrain-2" / f"snapshot-{PRETRAIN_ITER:06d}.h5") as handle:
        names = list(handle)
        saved = {name: handle[name][()] for name in names if name.endswith("weight")}
    first = result["pretrained"][0]["weight"]
    lower = [value for name, value in saved.items() if name.startswith("ip-1")]
    assert len(lower) == 1, names
    np.testing.assert_array_equal(lower[0], first)


def test_randinit_starts_elsewhere(run):
    result, _ = run
    initial = result["randinit"]["initial_weights"]
    for layer in result["pretrained"]:
        weight = initial[layer["layer"]]
        assert weight.shape == layer["weight"].shape
        assert not np.allclose(weight, layer["weight"]), layer["layer"]


def test_summary_contains_accuracies(run):
    _, out = run
    summary = json.loads((out / "summary.json").read_text())
    for name in ("finetune", "randinit"):
        assert 0.0 <= summary[name]["test_accuracy"] <= 1.0, name
        assert summary[name]["test_images"] == N_TEST, name
        assert summary[name]["iterations"] == FINETUNE_ITER, name
    assert summary["threads"] == 1
    assert summary["corruption"] == [0.1, 0.2]
    assert "--pretrain-iter" in summary["command"]


def test_statistics_files(run):
    _, out = run
    for name in ("finetune", "randinit"):
        stats = read_statistics(out / name / "statistics.h5")
        assert sorted(stats["test-accuracy-accuracy"]) == [0, 30, 60], name
        assert len(stats["obj_val"]) == FINETUNE_ITER + 1, name
    for index in (1, 2):
        stats = read_statistics(out / f"pretrain-{index}" / "statistics.h5")
        assert len(stats["obj_val"]) == PRETRAIN_ITER + 1, index


def test_curves_written(run):
    _, out = run
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_corruption_rates_rejected():
    train = load_train_module()
    with pytest.raises(argparse.ArgumentTypeError, match="invalid corruption rates"):
        train.parse_rates("0.1,1.5")


def test_rerun_other_units_exits_with_advice(tmp_path):
    """A rerun whose nets differ from the snapshots in --out stops with the
    snapshot error and what to do, instead of a traceback."""
    data = tmp_path / "data"
    data.mkdir()
    write_split(data, "train", 40, seed=1)
    write_split(data, "test", 20, seed=2)
    out = tmp_path / "out"
    train = load_train_module()

    def run_with_units(units):
        return train.main(
            ["--data", str(data), "--out", str(out), "--hidden-units", units]
            + ["--corruption", "0.1", "--batch-size", "20", "--threads", "1"]
            + ["--pretrain-iter", "1", "--finetune-iter", "1", "--test-every", "1"]
        )

    run_with_units("4")
    with pytest.raises(SystemExit) as raised:
        run_with_units("5")
    # A string exit code is printed to stderr, and the exit status is 1.
    message = raised.value.code
    assert isinstance(message, str)
    assert f"a snapshot in {out} failed" in message
    assert "has shape (4, 64), but the net expects (5, 64)" in message
    assert f"delete {out} to start over or choose another --out." in message


def ctrl_c_command(tmp_path, target):
    """Return the command that runs train.py on small data, paused in ``target``."""
    data = tmp_path / "data"
    data.mkdir()
    write_split(data, "train", 40, seed=1)
    write_split(data, "test", 20, seed=2)
    command = paused_script_command(target, EXAMPLE_DIR / "train.py")
    return command + (
        ["--data", str(data), "--out", str(tmp_path / "out"), "--hidden-units", "4"]
        + ["--corruption", "0.1", "--batch-size", "20", "--threads", "1"]
        + ["--pretrain-iter", "1", "--finetune-iter", "2", "--test-every", "1"]
    )


def test_ctrl_c_in_compile_exits_130(tmp_path):
    command = ctrl_c_command(tmp_path, "mochac.runtime.net:build_extension")
    returncode, stderr = interrupt_at_line(command, PAUSED_LINE)
    assert returncode == 130
    assert "WARNING:mochac.runtime.ctrl_c:stopped by Ctrl-C\n" in stderr
    assert "Traceback" not in stderr


def test_ctrl_c_in_final_evaluation(tmp_path):
    """The evaluation after the fine-tuning's solve() returned is stopped."""
    target = "mochac.runtime.coffee_breaks:ValidationPerformance.evaluate"
    command = ctrl_c_command(tmp_path, target)
    returncode, stderr = interrupt_at_line(command, PAUSED_LINE)
    assert returncode == 130
    finished = (
        "net 'MNIST-finetune': Ctrl-C after training finished at iteration 2 "
        "(solve() had returned)"
    )
    assert finished in stderr
    snapshot = tmp_path / "out" / "finetune" / "snapshot-000002.h5"
    assert f"resumes from {snapshot} (iteration 2)" in stderr
    assert "Traceback" not in stderr


def test_sigterm_in_final_evaluation(tmp_path):
    """A SIGTERM in the evaluation after the fine-tuning's solve() returned
    names where a rerun resumes, as a Ctrl-C does."""
    target = "mochac.runtime.coffee_breaks:ValidationPerformance.evaluate"
    command = ctrl_c_command(tmp_path, target)
    returncode, stderr = interrupt_at_line(command, PAUSED_LINE, signum=signal.SIGTERM)
    assert returncode == 143
    finished = (
        "net 'MNIST-finetune': SIGTERM after training finished at iteration 2 "
        "(solve() had returned)"
    )
    assert finished in stderr
    snapshot = tmp_path / "out" / "finetune" / "snapshot-000002.h5"
    assert f"resumes from {snapshot} (iteration 2)" in stderr
    assert "Traceback" not in stderr
