"""examples/mnist/train.py and predict.py: invalid options and a missing data
folder end in a one-line usage error before any net is built."""

import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from default_sigint import interrupt_at_line, paused_script_command, script_command
from paused_script import PAUSED_LINE
from test_data_layers import fake_wheel

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist"
TRAIN = EXAMPLE / "train.py"
PREDICT = EXAMPLE / "predict.py"
PREPARE = EXAMPLE / "prepare_data.py"


def run_train(*options):
    return subprocess.run(
        [sys.executable, str(TRAIN), *options],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )


def test_missing_data_names_prepare_command(tmp_path):
    result = run_train("--data", str(tmp_path))
    assert result.returncode == 2
    assert "train.txt and test.txt not found" in result.stderr
    assert f"prepare_data.py --out {tmp_path}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("option", "value"), [("--max-iter", "-1"), ("--threads", "0")]
)
def test_invalid_count_rejected(tmp_path, option, value):
    result = run_train("--data", str(tmp_path), option, value)
    assert result.returncode == 2
    assert f"argument {option}: invalid value '{value}'" in result.stderr


def write_tiny_mnist(folder):
    """Write train and test source lists over 100 zero images of class 0."""
    with h5py.File(folder / "tiny.hdf5", "w") as handle:
        handle["data"] = np.zeros((100, 1, 28, 28), dtype=np.float32)
        handle["label"] = np.zeros((100, 1), dtype=np.float32)
    for name in ("train.txt", "test.txt"):
        (folder / name).write_text(f"{folder / 'tiny.hdf5'}\n")


def test_ctrl_c_names_resume_snapshot(tmp_path):
    write_tiny_mnist(tmp_path)
    snapshots = tmp_path / "snapshots"
    command = script_command(TRAIN) + ["--data", str(tmp_path)]
    command += ["--snapshots", str(snapshots), "--max-iter", "1000000000"]
    # Iteration 100 comes after the snapshot of iteration 0.
    returncode, stderr = interrupt_at_line(command, "000100 :: TRAIN")
    assert returncode == 130
    assert "training stopped by Ctrl-C at iteration" in stderr
    resume = f"resumes from {snapshots / 'snapshot-000000.h5'} (iteration 0)"
    assert resume in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "target",
    ["mochac.runtime.net:build_extension", "mochac.runtime.data_sources:load_hdf5"],
    ids=["compile", "data-loading"],
)
def test_ctrl_c_before_solve_exits_130(tmp_path, target):
    write_tiny_mnist(tmp_path)
    command = paused_script_command(target, TRAIN) + ["--data", str(tmp_path)]
    command += ["--snapshots", str(tmp_path / "snapshots")]
    returncode, stderr = interrupt_at_line(command, PAUSED_LINE)
    assert returncode == 130
    assert "WARNING:mochac.runtime.ctrl_c:stopped by Ctrl-C\n" in stderr
    assert "Traceback" not in stderr


def test_ctrl_c_in_final_evaluation(tmp_path):
    """The validation of the coffee breaks runs; the one after solve()
    returned is stopped."""
    write_tiny_mnist(tmp_path)
    snapshots = tmp_path / "snapshots"
    target = "mochac.runtime.coffee_breaks:ValidationPerformance.evaluate"
    command = paused_script_command(target, TRAIN) + ["--data", str(tmp_path)]
    command += ["--snapshots", str(snapshots), "--max-iter", "3"]
    returncode, stderr = interrupt_at_line(command, PAUSED_LINE)
    assert returncode == 130
    assert "Ctrl-C after training finished at iteration 3 (solve() had returned)" in (
        stderr
    )
    assert f"resumes from {snapshots / 'snapshot-000003.h5'} (iteration 3)" in stderr
    assert "Traceback" not in stderr


def test_sigterm_names_resume_snapshot(tmp_path):
    write_tiny_mnist(tmp_path)
    snapshots = tmp_path / "snapshots"
    command = script_command(TRAIN) + ["--data", str(tmp_path)]
    command += ["--snapshots", str(snapshots), "--max-iter", "1000000000"]
    # Iteration 100 comes after the snapshot of iteration 0.
    returncode, stderr = interrupt_at_line(
        command, "000100 :: TRAIN", signum=signal.SIGTERM
    )
    assert returncode == 143
    assert "training stopped by SIGTERM at iteration" in stderr
    resume = f"resumes from {snapshots / 'snapshot-000000.h5'} (iteration 0)"
    assert resume in stderr
    assert "Traceback" not in stderr
    assert list(snapshots.glob(".*.tmp")) == []


def test_sigterm_in_compile_exits_143(tmp_path):
    write_tiny_mnist(tmp_path)
    target = "mochac.runtime.net:build_extension"
    command = paused_script_command(target, TRAIN) + ["--data", str(tmp_path)]
    command += ["--snapshots", str(tmp_path / "snapshots")]
    returncode, stderr = interrupt_at_line(command, PAUSED_LINE, signum=signal.SIGTERM)
    assert returncode == 143
    assert "WARNING:mochac.runtime.sigterm:stopped by SIGTERM\n" in stderr
    assert "Traceback" not in stderr


def test_predict_ctrl_c_in_compile(tmp_path):
    with h5py.File(tmp_path / "test.hdf5", "w") as handle:
        handle["data"] = np.zeros((1, 1, 28, 28), dtype=np.float32)
        handle["label"] = np.zeros((1, 1), dtype=np.float32)
    command = paused_script_command("mochac.runtime.net:build_extension", PREDICT)
    command += ["--data", str(tmp_path), "--snapshot", str(tmp_path / "none.h5")]
    returncode, stderr = interrupt_at_line(command, PAUSED_LINE)
    assert returncode == 130
    # predict.py does not call log_to_console(), so Python's last-resort
    # handler prints the warning alone.
    assert stderr.endswith("stopped by Ctrl-C\n")
    assert "Traceback" not in stderr


def test_predict_sigterm_in_compile(tmp_path):
    with h5py.File(tmp_path / "test.hdf5", "w") as handle:
        handle["data"] = np.zeros((1, 1, 28, 28), dtype=np.float32)
        handle["label"] = np.zeros((1, 1), dtype=np.float32)
    command = paused_script_command("mochac.runtime.net:build_extension", PREDICT)
    command += ["--data", str(tmp_path), "--snapshot", str(tmp_path / "none.h5")]
    returncode, stderr = interrupt_at_line(command, PAUSED_LINE, signum=signal.SIGTERM)
    assert returncode == 143
    assert stderr.endswith("stopped by SIGTERM\n")
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("signum", "status", "name"),
    [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")],
    ids=["ctrl-c", "sigterm"],
)
def test_prepare_data_stop_leaves_no_file(tmp_path, signum, status, name):
    """A stop while train.hdf5 is written (paused at the label count of its
    first rows) ends with one line and deletes the temporary file."""
    wheel = fake_wheel(tmp_path / "fake.whl", [5, 0, 9], [7, 2])
    out = tmp_path / "out"
    command = paused_script_command("numpy:bincount", PREPARE)
    command += ["--wheel", str(wheel), "--out", str(out)]
    returncode, stderr = interrupt_at_line(command, PAUSED_LINE, signum=signum)
    assert returncode == status
    assert f" WARNING stopped by {name}\n" in stderr
    assert "Traceback" not in stderr
    assert list(out.iterdir()) == []


def run_predict(data_folder, *arguments):
    """Run predict.py on ``data_folder`` with a snapshot path that does not exist."""
    return subprocess.run(
        [sys.executable, str(PREDICT), "--data", str(data_folder), *arguments]
        + ["--snapshot", str(data_folder / "missing.hdf5")],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("index", ["3", "-4"])
def test_predict_index_out_of_range(tmp_path, index):
    with h5py.File(tmp_path / "test.hdf5", "w") as handle:
        handle["data"] = np.zeros((3, 1, 28, 28), dtype=np.float32)
        handle["label"] = np.zeros((3, 1), dtype=np.float32)
    # The index is checked before the snapshot is read, so none is needed.
    result = run_predict(tmp_path, "--index", index)
    assert result.returncode == 2
    assert f"--index {index}:" in result.stderr
    # Negative indexes count from the end, so -3 is valid too.
    assert "has 3 images, so the index must be from -3 to 2" in result.stderr
    assert "Traceback" not in result.stderr


def test_predict_without_test_file(tmp_path):
    result = run_predict(tmp_path)
    assert result.returncode == 2
    assert f"{tmp_path / 'test.hdf5'} not found; run prepare_data.py" in result.stderr
    assert "Traceback" not in result.stderr


def test_prepare_data_main_leaves_logging_alone(tmp_path):
    """A program that calls prepare_data.main() (the autoencoder example)
    keeps its own logging: main() adds no root handler, which would print
    every later log line a second time."""
    for split in ("train", "test"):
        (tmp_path / f"{split}.hdf5").write_bytes(b"")
        (tmp_path / f"{split}.txt").write_text("")
    program = (
        "import logging, sys; "
        f"sys.path.insert(0, {str(EXAMPLE)!r}); "
        "import prepare_data; "
        f"code = prepare_data.main(['--out', {str(tmp_path)!r}]); "
        "print(code, len(logging.getLogger().handlers))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0"]
