"""examples/mnist/train.py: invalid options and a missing data folder end in
a one-line usage error before any net is built."""

import subprocess
import sys
from pathlib import Path

import pytest

TRAIN = Path(__file__).resolve().parents[1] / "examples" / "mnist" / "train.py"


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
