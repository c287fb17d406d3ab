"""examples/cifar10: data preparation from the binary batches, the net, training."""

from __future__ import annotations

import hashlib
import importlib.util
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from default_sigint import interrupt_at_line, paused_script_command, script_command
from paused_script import PAUSED_LINE

from mochac import MemoryDataLayer
from mochac.ir import build_ir

REPO = Path(__file__).resolve().parents[1]
CIFAR_DIR = REPO / "examples" / "cifar10"
N_PER_TRAIN_FILE = 40
N_TEST = 50


def load_module(name: str, filename: str):
    """Import an example script; its folder goes on sys.path for its own imports."""
    if str(CIFAR_DIR) not in sys.path:
        sys.path.insert(0, str(CIFAR_DIR))
    spec = importlib.util.spec_from_file_location(name, CIFAR_DIR / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_records(n: int, seed: int) -> np.ndarray:
    """Return n 3073-byte CIFAR-10 records whose images depend on their class.

    Each class has a fixed sign of +-1 per channel and 16x16 quadrant, a
    pattern that survives pooling. An image is 128 plus 60 times its class's
    pattern plus noise, clipped to 0..255.
    """
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(10, 3, 2, 2))
    patterns = np.kron(signs, np.ones((16, 16)))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = 128 + 60 * patterns[labels] + rng.normal(0, 30, size=(n, 3, 32, 32))
    images = np.clip(images, 0, 255).astype(np.uint8)
    return np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(n, -1)], 1)


def write_binary_batches(folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    train = []
    for index in range(1, 6):
        records = synthetic_records(N_PER_TRAIN_FILE, seed=index)
        records.tofile(folder / f"data_batch_{index}.bin")
        train.append(records)
    test = synthetic_records(N_TEST, seed=9)
    test.tofile(folder / "test_batch.bin")
    return {"train": np.concatenate(train), "test": test}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Run prepare_data.py on a synthetic binary set; return (records, out folder)."""
    root = tmp_path_factory.mktemp("cifar10")
    records = write_binary_batches(root / "bin")
    out = root / "data"
    completed = subprocess.run(
        [
            sys.executable,
            str(CIFAR_DIR / "prepare_data.py"),
            "--source",
            str(root / "bin"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return records, out


# --- prepare_data.py ---------------------------------------------------------------


def test_prepare_writes_mocha_layout(prepared):
    records, out = prepared
    train_images = records["train"][:, 1:].reshape(-1, 3, 32, 32).astype(np.float64)
    mean = train_images.mean(axis=0)

    for split in ("train", "test"):
        assert (out / f"{split}.txt").read_text() == f"{split}.hdf5\n"
        with h5py.File(out / f"{split}.hdf5", "r") as handle:
            data = handle["data"][()]
            label = handle["label"][()]
        raw = records[split]
        assert data.dtype == np.float32
        assert data.shape == (len(raw), 3, 32, 32)
        assert label.dtype == np.float32
        assert label.shape == (len(raw), 1)
        np.testing.assert_array_equal(label.ravel(), raw[:, 0])
        images = raw[:, 1:].reshape(-1, 3, 32, 32)
        # The training mean is subtracted from both splits.
        np.testing.assert_allclose(data, images - mean, rtol=0, atol=1e-4)
    with h5py.File(out / "mean.hdf5", "r") as handle:
        np.testing.assert_allclose(handle["mean"][()], mean, rtol=1e-6)


def test_prepare_plane_order(tmp_path):
    prepare_data = load_module("cifar10_prepare_data", "prepare_data.py")
    record = np.zeros(3073, np.uint8)
    record[0] = 7
    record[1 + 1024 + 32 * 2 + 5] = 200  # green plane, row 2, column 5
    record.tofile(tmp_path / "one.bin")
    labels, images = prepare_data.read_batch(tmp_path / "one.bin")

    assert labels.tolist() == [7]
    assert images.shape == (1, 3, 32, 32)
    assert images[0, 1, 2, 5] == 200
    assert images.sum() == 200


def test_prepare_rejects_partial_record(tmp_path):
    prepare_data = load_module("cifar10_prepare_data", "prepare_data.py")
    np.zeros(3073 + 10, np.uint8).tofile(tmp_path / "cut.bin")
    with pytest.raises(prepare_data.CIFARFormatError) as raised:
        prepare_data.read_batch(tmp_path / "cut.bin")
    message = str(raised.value)
    assert str(tmp_path / "cut.bin") in message
    assert "3083 bytes" in message


def test_prepare_rejects_bad_label(tmp_path):
    prepare_data = load_module("cifar10_prepare_data", "prepare_data.py")
    records = np.zeros((2, 3073), np.uint8)
    records[1, 0] = 10
    records.tofile(tmp_path / "bad.bin")
    with pytest.raises(prepare_data.CIFARFormatError, match="record 1 has label 10"):
        prepare_data.read_batch(tmp_path / "bad.bin")


def test_prepare_names_missing_batches(tmp_path):
    prepare_data = load_module("cifar10_prepare_data", "prepare_data.py")
    synthetic_records(2, seed=0).tofile(tmp_path / "data_batch_1.bin")
    with pytest.raises(prepare_data.CIFARFormatError) as raised:
        prepare_data.prepare(tmp_path, tmp_path / "out")
    message = str(raised.value)
    assert "data_batch_2.bin" in message
    assert "test_batch.bin" in message


def test_prepare_writes_digests(prepared):
    _, out = prepared
    for name in ("train.hdf5", "test.hdf5", "mean.hdf5"):
        digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert (out / f"{name}.sha256").read_text() == f"{digest}  {name}\n"


@pytest.mark.parametrize(
    ("signum", "status", "name"),
    [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")],
    ids=["ctrl-c", "sigterm"],
)
def test_prepare_stop_leaves_no_partial_file(tmp_path, signum, status, name):
    """A stop while train.hdf5 is written (paused at the label count of its
    first batch) ends with one line and deletes the temporary file."""
    write_binary_batches(tmp_path / "bin")
    out = tmp_path / "data"
    command = paused_script_command("numpy:bincount", CIFAR_DIR / "prepare_data.py")
    command += ["--source", str(tmp_path / "bin"), "--out", str(out)]
    returncode, stderr = interrupt_at_line(command, PAUSED_LINE, signum=signum)
    assert returncode == status
    assert f" WARNING stopped by {name}\n" in stderr
    assert "Traceback" not in stderr
    # mean.hdf5 was complete, with its sidecar, before train.hdf5 was started.
    assert sorted(path.name for path in out.iterdir()) == [
        "mean.hdf5",
        "mean.hdf5.sha256",
    ]


def test_prepare_stopped_list_leaves_no_file(tmp_path, monkeypatch):
    """A Ctrl-C before the source list is renamed deletes its temporary file."""
    prepare_data = load_module("cifar10_prepare_data", "prepare_data.py")

    def replace(path, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        prepare_data.write_source_list(tmp_path / "train.txt", tmp_path / "train.hdf5")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_prepare_accepts_ready_hdf5(tmp_path, prepared):
    _, out = prepared
    prepare_data = load_module("cifar10_prepare_data", "prepare_data.py")
    lists = prepare_data.prepare(out, tmp_path / "lists")

    for split in ("train", "test"):
        listed = lists[split].parent / lists[split].read_text().strip()
        assert listed.resolve() == (out / f"{split}.hdf5").resolve()


def test_prepare_rejects_wrong_hdf5(tmp_path):
    prepare_data = load_module("cifar10_prepare_data", "prepare_data.py")
    for split in ("train", "test"):
        with h5py.File(tmp_path / f"{split}.hdf5", "w") as handle:
            handle["data"] = np.zeros((4, 1, 28, 28), np.float32)
            handle["label"] = np.zeros((4, 1), np.float32)
    with pytest.raises(prepare_data.CIFARFormatError) as raised:
        prepare_data.prepare(tmp_path, tmp_path / "out")
    message = str(raised.value)
    assert "(4, 1, 28, 28)" in message
    assert "(N, 3, 32, 32)" in message


# --- the net and the solver settings ------------------------------------------------


def test_full_net_shapes():
    full_net = load_module("cifar10_full_net", "full_net.py")
    layers = full_net.common_layers()
    source = MemoryDataLayer(
        name="data",
        batch_size=100,
        data=[np.zeros((100, 3, 32, 32), np.float32), np.zeros((100, 1), np.float32)],
    )
    source_shapes = {0: [(100, 3, 32, 32), (100, 1)]}
    ir = build_ir("cifar10", [source, *layers], source_shapes, np.dtype(np.float32))
    shapes = {name: blob.shape for name, blob in ir.blobs.items()}

    assert shapes["conv1"] == (100, 32, 32, 32)
    assert shapes["pool1"] == (100, 32, 16, 16)
    assert shapes["norm1"] == (100, 32, 16, 16)
    assert shapes["conv2"] == (100, 32, 16, 16)
    assert shapes["pool2"] == (100, 32, 8, 8)
    assert shapes["conv3"] == (100, 64, 8, 8)
    assert shapes["pool3"] == (100, 64, 4, 4)
    assert shapes["ip1"] == (100, 10)


def test_staged_lr_schedule():
    train = load_module("cifar10_train", "train.py")
    policy = train.staged_lr_policy(0.001)
    state = type("State", (), {})()
    # The solver's k-th update reads iteration k - 1: 60000 updates at 1e-3,
    # then 5000 at 1e-4 and 5000 at 1e-5.
    expected = {
        0: 1e-3,
        59999: 1e-3,
        60000: 1e-4,
        64999: 1e-4,
        65000: 1e-5,
        69999: 1e-5,
    }
    for iteration, rate in expected.items():
        state.iter = iteration
        assert policy(state) == pytest.approx(rate, rel=1e-12), iteration


def test_train_loss_falls(prepared, tmp_path):
    _, out = prepared
    train = load_module("cifar10_train", "train.py")
    solver, validation = train.main(
        [
            "--data",
            str(out),
            "--max-iter",
            "40",
            "--batch-size",
            "10",
            "--filters",
            "8,8,16",
            "--conv-init",
            "xavier",
            "--base-lr",
            "0.0002",
            "--summary-every",
            "1",
            "--test-every",
            "40",
            "--snapshot-every",
            "40",
            "--snapshots",
            str(tmp_path / "snapshots"),
            "--seed",
            "0",
            "--threads",
            "2",
        ]
    )
    series = solver.lounge.statistics["obj_val"]
    losses = [series[iteration] for iteration in sorted(series)]

    assert len(losses) == 41
    assert np.all(np.isfinite(losses))
    first = np.mean(losses[1:6])
    last = np.mean(losses[-5:])
    assert last < 0.5 * first
    # Chance level is ln(10) = 2.30 and 10 % accuracy.
    assert last < 1.0
    assert validation.last["accuracy-count"] == N_TEST
    assert validation.last["accuracy-accuracy"] > 0.5
    assert (tmp_path / "snapshots" / "snapshot-000040.h5").exists()


@pytest.mark.parametrize(
    "option, value",
    [
        ("--test-every", "0"),
        ("--summary-every", "-5"),
        ("--snapshot-every", "0"),
        ("--batch-size", "0"),
        ("--max-iter", "-1"),
        ("--base-lr", "-0.1"),
        ("--base-lr", "nan"),
    ],
)
def test_train_rejects_invalid_option(prepared, option, value, capsys):
    _, out = prepared
    train = load_module("cifar10_train", "train.py")
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--data", str(out), option, value])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert f"argument {option}: invalid value {value!r}" in message


def test_train_names_missing_data(tmp_path, capsys):
    train = load_module("cifar10_train", "train.py")
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["--data", str(tmp_path)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert f"{tmp_path} has no train.txt or test.txt" in message
    assert "prepare_data.py --source DIR" in message


def test_ctrl_c_names_resume_snapshot(prepared, tmp_path):
    _, out = prepared
    snapshots = tmp_path / "snapshots"
    command = script_command(CIFAR_DIR / "train.py") + ["--data", str(out)]
    command += ["--snapshots", str(snapshots), "--max-iter", "1000000000"]
    command += ["--batch-size", "10", "--filters", "4,4,4", "--summary-every", "1"]
    command += ["--test-every", "1000000", "--threads", "1"]
    # Iteration 3 comes after the snapshot of iteration 0.
    returncode, stderr = interrupt_at_line(command, "000003 :: TRAIN")
    assert returncode == 130
    assert "net 'CIFAR10-train': training stopped by Ctrl-C at iteration" in stderr
    resume = f"resumes from {snapshots / 'snapshot-000000.h5'} (iteration 0)"
    assert resume in stderr
    assert "Traceback" not in stderr


def test_ctrl_c_in_compile_exits_130(prepared, tmp_path):
    _, out = prepared
    target = "mochac.runtime.net:build_extension"
    command = paused_script_command(target, CIFAR_DIR / "train.py")
    command += ["--data", str(out), "--snapshots", str(tmp_path / "snapshots")]
    returncode, stderr = interrupt_at_line(command, PAUSED_LINE)
    assert returncode == 130
    assert "WARNING:mochac.runtime.ctrl_c:stopped by Ctrl-C\n" in stderr
    assert "Traceback" not in stderr


def test_sigterm_in_compile_exits_143(prepared, tmp_path):
    _, out = prepared
    target = "mochac.runtime.net:build_extension"
    command = paused_script_command(target, CIFAR_DIR / "train.py")
    command += ["--data", str(out), "--snapshots", str(tmp_path / "snapshots")]
    returncode, stderr = interrupt_at_line(command, PAUSED_LINE, signum=signal.SIGTERM)
    assert returncode == 143
    assert "WARNING:mochac.runtime.sigterm:stopped by SIGTERM\n" in stderr
    assert "Traceback" not in stderr
