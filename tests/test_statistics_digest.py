"""The SHA-256 digest beside the coffee lounge's statistics file."""

import hashlib
import logging

import numpy as np
import pytest

from mochac import SGD, Solver, make_solver_parameters
from mochac.cli import main
from mochac.errors import DataError
from mochac.runtime.coffee_lounge import CoffeeLounge, read_statistics


def saved(path, names=("obj_val",)):
    lounge = CoffeeLounge(save_into=path)
    for iteration in range(0, 40, 10):
        for name in names:
            lounge.update(iteration, name, 1.0 / (1 + iteration))
    lounge.save()
    return lounge


def sidecar(path):
    return path.with_name(path.name + ".sha256")


def flip_name_attribute(path, name):
    """Turn the stored attribute ``name`` into another name of one length.

    The attribute has no checksum of its own, so without the digest the
    file reads as a statistic of the other name."""
    data = bytearray(path.read_bytes())
    # The group name is stored too, and the attribute's copy comes last.
    offset = data.rfind(name.encode())
    assert offset >= 0
    data[offset] = ord("x")
    path.write_bytes(bytes(data))


def test_save_writes_sha256sum_line(tmp_path):
    stats = tmp_path / "statistics.h5"
    saved(stats)
    expected = hashlib.sha256(stats.read_bytes()).hexdigest()
    assert sidecar(stats).read_text(encoding="ascii") == (
        f"{expected}  statistics.h5\n"
    )
    assert read_statistics(stats)["obj_val"][30] == pytest.approx(1 / 31)


def test_damaged_name_attribute_detected(tmp_path):
    stats = tmp_path / "statistics.h5"
    saved(stats, names=("accuracy-top",))
    flip_name_attribute(stats, "accuracy-top")
    with pytest.raises(DataError) as error:
        read_statistics(stats)
    message = str(error.value)
    assert str(stats) in message
    assert "does not match its SHA-256 digest in statistics.h5.sha256" in message


def test_merge_of_damaged_file_says_what_to_do(tmp_path):
    stats = tmp_path / "statistics.h5"
    saved(stats, names=("accuracy-top",))
    flip_name_attribute(stats, "accuracy-top")
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=0))
    with pytest.raises(DataError, match="file_exists='overwrite'"):
        solver.setup_coffee_lounge(save_into=stats)
    # Starting over replaces the file and its digest.
    solver.setup_coffee_lounge(save_into=stats, file_exists="overwrite")
    solver.lounge.update(0, "obj_val", 0.5)
    solver.lounge.save()
    assert read_statistics(stats) == {"obj_val": {0: 0.5}}


def test_plot_of_damaged_file_fails(tmp_path, caplog):
    stats = tmp_path / "statistics.h5"
    saved(stats, names=("accuracy-top",))
    flip_name_attribute(stats, "accuracy-top")
    with caplog.at_level(logging.ERROR):
        status = main(["plot", str(stats), "-o", str(tmp_path / "curve.png")])
    assert status != 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("SHA-256 digest" in message for message in errors)
    assert not (tmp_path / "curve.png").exists()


def test_file_without_digest_still_merges(tmp_path):
    stats = tmp_path / "statistics.h5"
    saved(stats)
    sidecar(stats).unlink()
    lounge = CoffeeLounge(save_into=stats)
    assert sorted(lounge.statistics["obj_val"]) == [0, 10, 20, 30]
    lounge.update(40, "obj_val", 0.0)
    lounge.save()
    assert sidecar(stats).is_file()
    assert read_statistics(stats)["obj_val"][40] == 0.0


def test_save_left_out_when_nothing_changed(tmp_path):
    stats = tmp_path / "statistics.h5"
    lounge = CoffeeLounge(save_into=stats, every_n_iter=1)
    lounge.update(0, "obj_val", 0.5)
    lounge.maybe_save(0)
    first = stats.stat()
    lounge.maybe_save(1)
    assert (stats.stat().st_ino, stats.stat().st_mtime_ns) == (
        first.st_ino,
        first.st_mtime_ns,
    )
    lounge.update(2, "obj_val", 0.25)
    lounge.maybe_save(2)
    assert stats.stat().st_ino != first.st_ino
    assert read_statistics(stats) == {"obj_val": {0: 0.5, 2: 0.25}}
    # A forced save (the end of a run) writes even without a change.
    before = stats.stat().st_ino
    lounge.maybe_save(3, force=True)
    assert stats.stat().st_ino != before
    assert np.isclose(read_statistics(stats)["obj_val"][2], 0.25)
