"""examples/mnist/train.py and predict.py: invalid options and a missing data
folder end in a one-line usage error before any net is built."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist"
TRAIN = EXAMPLE / "train.py"
PREDICT = EXAMPLE / "predict.py"


def run_train(*options):
    return subprocess.run(
        [sys.executable, str(TRAIN), *options],
        capture_output=True,
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
