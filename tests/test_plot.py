"""mochac plot: learning curves from a coffee lounge file."""

import sys
from pathlib import Path

import numpy as np
import pytest

from mochac.cli import main
from mochac.errors import DataError
from mochac.plot import plot_statistics
from mochac.runtime.coffee_lounge import CoffeeLounge


def lounge_file(tmp_path):
    lounge = CoffeeLounge(tmp_path / "statistics.h5")
    for iteration in range(0, 50, 10):
        lounge.update(iteration, "obj_val", 2.0 / (1 + iteration))
        lounge.update(iteration, "accuracy-accuracy", iteration / 50)
        lounge.update(iteration, "accuracy-count", 10)
    lounge.save()
    return tmp_path / "statistics.h5"


def test_plot_writes_png(tmp_path):
    out = tmp_path / "curve.png"
    drawn = plot_statistics(lounge_file(tmp_path), out)
    assert sorted(drawn) == ["accuracy-accuracy", "obj_val"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_command_picks_statistic(tmp_path, capsys):
    out = tmp_path / "objective.png"
    args = ["plot", str(lounge_file(tmp_path)), "-o", str(out), "--stat", "obj_val"]
    assert main(args) == 0
    assert "obj_val ->" in capsys.readouterr().out
    assert out.stat().st_size > 0


def test_plot_command_names_the_file_it_wrote(tmp_path, capsys):
    """matplotlib adds the suffix of its default format to a bare name."""
    out = tmp_path / "curves"
    assert main(["plot", str(lounge_file(tmp_path)), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"-> {out}.png")
    assert (tmp_path / "curves.png").exists()
    assert not out.exists()


def test_plot_unknown_statistic(tmp_path):
    with pytest.raises(DataError, match="no statistic learning_rate"):
        plot_statistics(lounge_file(tmp_path), tmp_path / "x.png", ["learning_rate"])


def test_plot_empty_lounge_names_breaks(tmp_path):
    """A lounge whose training had no TrainingSummary or validation saves a
    file without series."""
    CoffeeLounge(tmp_path / "statistics.h5").save()
    with pytest.raises(DataError) as error:
        plot_statistics(tmp_path / "statistics.h5", tmp_path / "x.png")
    message = str(error.value)
    assert "contains no statistics to draw" in message
    assert "TrainingSummary()" in message
    assert "nothing" not in message


def test_plot_unreadable_file(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(np.zeros(8).tobytes())
    with pytest.raises(DataError, match="cannot read") as error:
        plot_statistics(bad, tmp_path / "x.png")
    assert "save_into=" in str(error.value)


def test_plot_of_a_snapshot_is_refused(tmp_path, caplog):
    import h5py

    snapshot = tmp_path / "snapshot-000010.h5"
    with h5py.File(snapshot, "w") as handle:
        handle["conv___filter"] = np.zeros((2, 2), dtype=np.float32)
    assert main(["plot", str(snapshot), "-o", str(tmp_path / "curve.png")]) == 1
    assert "is not a statistics series" in caplog.text
    assert not (tmp_path / "curve.png").exists()


def test_plot_into_missing_folder(tmp_path, capsys):
    out = tmp_path / "no" / "such" / "curve.png"
    assert main(["plot", str(lounge_file(tmp_path)), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"-> {out}" in capsys.readouterr().out


def test_plot_missing_statistic_creates_no_folder(tmp_path, caplog):
    stats = lounge_file(tmp_path)
    out = tmp_path / "plots" / "curve.png"
    assert main(["plot", str(stats), "-o", str(out), "--stat", "nope"]) == 1
    expected = (
        f"{stats} has no statistic nope; it has: accuracy-accuracy, obj_val; pick "
        "names from that list (mochac plot --stat NAME)"
    )
    assert expected in caplog.text
    assert not out.parent.exists()


def test_plot_write_fails(tmp_path, caplog, monkeypatch):
    from matplotlib.figure import Figure

    def savefig(self, path, *args, **kwargs):
        Path(path).write_bytes(b"cut short")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)
    out = tmp_path / "curve.png"
    out.write_bytes(b"earlier image")
    assert main(["plot", str(lounge_file(tmp_path)), "-o", str(out)]) == 1
    expected = f"-o {out}: cannot write the file: No space left on device; name a"
    assert expected in caplog.text
    assert out.read_bytes() == b"earlier image"
    assert not list(tmp_path.glob(f".{out.name}.*"))


def test_plot_below_file(tmp_path, caplog):
    (tmp_path / "afile").write_text("a file")
    out = tmp_path / "afile" / "curve.png"
    assert main(["plot", str(lounge_file(tmp_path)), "-o", str(out)]) == 2
    expected = f"-o {out}: {tmp_path / 'afile'} is not a folder, so no file"
    assert expected in caplog.text


def test_plot_rejects_stdout(tmp_path, caplog, monkeypatch):
    stats = lounge_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["plot", str(stats), "-o", "-"]) == 2
    assert "-o -: mochac plot writes an image file" in caplog.text
    assert "(./- for a file named '-')" in caplog.text
    assert not (tmp_path / "-").exists()
    assert not (tmp_path / "-.png").exists()


def test_plot_unknown_image_format(tmp_path, caplog):
    out = tmp_path / "curve.txt"
    assert main(["plot", str(lounge_file(tmp_path)), "-o", str(out)]) == 2
    assert "matplotlib cannot write .txt images" in caplog.text
    assert ".png" in caplog.text
    assert not out.exists()


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_plot_missing_file_message(tmp_path, kind):
    path = tmp_path / "stats.h5"
    if kind == "folder":
        path.mkdir()
    with pytest.raises(DataError) as raised:
        plot_statistics(path, tmp_path / "x.png")
    message = str(raised.value)
    expected = "is a folder" if kind == "folder" else "does not exist"
    assert expected in message
    assert "file_exists" not in message


@pytest.mark.parametrize("kind", ["missing", "folder"])
def test_plot_command_missing_file_is_usage_error(tmp_path, caplog, kind):
    """A missing input file exits 2, as in mochac compile."""
    path = tmp_path / "nosuch.h5"
    if kind == "folder":
        path.mkdir()
    out = tmp_path / "curve.png"
    assert main(["plot", str(path), "-o", str(out)]) == 2
    expected = "is a folder" if kind == "folder" else "file not found"
    assert f"{path}: {expected}; pass the statistics file" in caplog.text
    assert not out.exists()


def test_plot_without_matplotlib(tmp_path, caplog, monkeypatch):
    """A fresh `pip install .` lacks the [plot] extra."""
    stats = lounge_file(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "curve.png"
    assert main(["plot", str(stats), "-o", str(out)]) == 2
    assert "mochac plot needs matplotlib, which is not installed" in caplog.text
    assert "pip install 'mochac[plot]'" in caplog.text
    assert not out.exists()
