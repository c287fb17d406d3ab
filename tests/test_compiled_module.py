"""Packages written by `mochac compile`: loading them, and their error messages."""

import hashlib
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from mochac.cli import main
from mochac.errors import CompileError, ConfigError, DataError, SnapshotError
from mochac.runtime.compiled_module import load_net
from mochac.runtime.snapshot import load_snapshot
from mochac.version import __version__

# A net whose data layer reads "train.txt" relative to the working directory,
# as in Mocha's tutorials.
HDF5_NET_FILE = textwrap.dedent(
    """
    import numpy as np

    from mochac import (
        CPUBackend, HDF5DataLayer, InnerProductLayer, Net, SoftmaxLossLayer,
    )

    data = HDF5DataLayer(name="train-data", source="train.txt", batch_size=4)
    ip = InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"])
    loss = SoftmaxLossLayer(name="loss", bottoms=["ip", "label"])
    net = Net("toy-h5", CPUBackend(dtype=np.float64, seed=1), [data, ip, loss])
    """
)

MEMORY_NET_FILE = textwrap.dedent(
    """
    import numpy as np

    from mochac import (
        CPUBackend, InnerProductLayer, MemoryDataLayer, Net, SoftmaxLossLayer,
    )

    x = np.zeros((8, 2, 1, 1), np.float32)
    y = np.zeros((8, 1), np.float32)
    data = MemoryDataLayer(name="data", batch_size=4, data=[x, y])
    ip = InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"])
    loss = SoftmaxLossLayer(name="loss", bottoms=["ip", "label"])
    net = Net("tiny", CPUBackend(), [data, ip, loss])
    """
)


def write_data(folder, rows=12, features=2):
    """Write folder/train.h5 and the source list folder/train.txt naming it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with h5py.File(folder / "train.h5", "w") as handle:
        handle["data"] = rng.random((rows, features, 1, 1))
        handle["label"] = rng.integers(0, 3, (rows, 1)).astype(np.float64)
    (folder / "train.txt").write_text("train.h5\n")
    return folder / "train.txt"


@pytest.fixture
def hdf5_package(tmp_path, monkeypatch):
    """Compile HDF5_NET_FILE from the folder of its data; return the package."""
    data_folder = tmp_path / "data"
    write_data(data_folder)
    net_file = data_folder / "net.py"
    net_file.write_text(HDF5_NET_FILE)
    monkeypatch.chdir(data_folder)
    assert main(["compile", "net.py", "-o", str(tmp_path / "build")]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return tmp_path / "build" / "toy_h5"


def compile_memory_package(tmp_path):
    net_file = tmp_path / "tiny.py"
    net_file.write_text(MEMORY_NET_FILE)
    assert main(["compile", str(net_file), "-o", str(tmp_path / "build")]) == 0
    return tmp_path / "build" / "tiny"


def test_package_of_numpy_bool_force_backward(tmp_path):
    """Net accepts force_backward=np.True_, so compiling such a net works and
    the package keeps the setting."""
    net_file = tmp_path / "tiny.py"
    net_file.write_text(
        MEMORY_NET_FILE.replace(
            "[data, ip, loss])", "[data, ip, loss], force_backward=np.True_)"
        )
    )
    assert main(["compile", str(net_file), "-o", str(tmp_path / "build")]) == 0
    package = tmp_path / "build" / "tiny"
    assert json.loads((package / "net.json").read_text())["force_backward"] is True
    assert load_net(package).force_backward is True


def test_hdf5_package_imports_from_another_folder(hdf5_package):
    # The working directory has no train.txt: loading must not read it.
    net = load_net(hdf5_package)
    assert net.blobs["data"].shape == (4, 2, 1, 1)
    assert not net.blobs["data"].any()


def test_hdf5_package_import_in_fresh_interpreter(hdf5_package, tmp_path):
    script = "import sys; sys.path.insert(0, sys.argv[1]); from toy_h5 import net"
    result = subprocess.run(
        [sys.executable, "-c", script, str(hdf5_package.parent)],
        cwd=tmp_path / "elsewhere",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_hdf5_package_forward_names_the_folder(hdf5_package, tmp_path):
    net = load_net(hdf5_package)
    with pytest.raises(DataError) as caught:
        net.forward()
    message = str(caught.value)
    assert "cannot read source list train.txt" in message
    assert f"run from {tmp_path / 'data'}, where it was compiled" in message
    assert "net.data_source('train-data').open(" in message


def test_hdf5_package_reads_at_first_batch(hdf5_package, tmp_path, monkeypatch):
    net = load_net(hdf5_package)
    monkeypatch.chdir(tmp_path / "data")
    objective = net.forward()
    assert np.isfinite(objective)
    with h5py.File(tmp_path / "data" / "train.h5") as handle:
        expected = handle["data"][:4]
    np.testing.assert_array_equal(net.blobs["data"], expected)
    assert net.data_source("train-data").position == 4


def test_hdf5_package_open_missing_list_has_no_hint(hdf5_package, tmp_path):
    """A list the user names in open() is missing: the message reports it
    without the hint about where the package was compiled."""
    net = load_net(hdf5_package)
    with pytest.raises(DataError) as caught:
        net.data_source("train-data").open("other_list.txt")
    message = str(caught.value)
    assert "other_list.txt" in message
    assert "where it was compiled" not in message
    assert ".open(" not in message


def test_package_in_its_folder_no_hint(hdf5_package, tmp_path, monkeypatch):
    """Run from the folder it was compiled in, with the list gone: the
    hint does not ask to run from there."""
    net = load_net(hdf5_package)
    monkeypatch.chdir(tmp_path / "data")
    (tmp_path / "data" / "train.txt").unlink()
    with pytest.raises(DataError) as caught:
        net.forward()
    message = str(caught.value)
    assert "where it was compiled" not in message
    assert "net.data_source('train-data').open(" in message


def test_hdf5_package_open_makes_saved_position_stale(
    hdf5_package, tmp_path, monkeypatch
):
    """A data position of the list read before open(path) is not restored
    over the new list's data, as for replaced MemoryDataLayer arrays."""
    net = load_net(hdf5_package)
    monkeypatch.chdir(tmp_path / "data")
    net.forward()
    state = net.data_source("train-data").state_dict()
    assert state["position"] == 4
    net.data_source("train-data").open(write_data(tmp_path / "other", rows=6))
    source = net.data_source("train-data")
    source.load_state_dict(state)
    assert source.position == 0


def test_hdf5_package_open_other_source_list(hdf5_package, tmp_path):
    other_list = write_data(tmp_path / "other", rows=6)
    net = load_net(hdf5_package)
    source = net.data_source("train-data")
    source.open(other_list)
    net.forward()
    with h5py.File(tmp_path / "other" / "train.h5") as handle:
        expected = handle["data"][:4]
    np.testing.assert_array_equal(net.blobs["data"], expected)
    assert source.layer.source == str(other_list)


def test_hdf5_package_failed_open_keeps_source(hdf5_package, tmp_path):
    other_list = write_data(tmp_path / "other", rows=12)
    wide_list = write_data(tmp_path / "wide", features=5)
    net = load_net(hdf5_package)
    source = net.data_source("train-data")
    source.open(other_list)
    net.forward()
    with pytest.raises(DataError):
        source.open(tmp_path / "missing.txt")
    with pytest.raises(DataError):
        source.open(wide_list)

    # The list opened before goes on at its second batch.
    net.forward()
    with h5py.File(tmp_path / "other" / "train.h5") as handle:
        expected = handle["data"][4:8]
    np.testing.assert_array_equal(net.blobs["data"], expected)
    assert source.position == 8
    assert source.layer.source == str(other_list)


def test_hdf5_package_rejects_other_shapes(hdf5_package, tmp_path):
    other_list = write_data(tmp_path / "wide", features=5)
    net = load_net(hdf5_package)
    with pytest.raises(DataError, match="built for") as caught:
        net.data_source("train-data").open(other_list)
    assert "(4, 5, 1, 1)" in str(caught.value)
    assert "(4, 2, 1, 1)" in str(caught.value)


def test_make_net_other_dtype_names_both(hdf5_package):
    from mochac import CPUBackend

    with pytest.raises(CompileError) as caught:
        load_net(hdf5_package, CPUBackend(dtype=np.float32))
    message = str(caught.value)
    assert "compiled for float64" in message
    assert "backend's dtype is float32" in message
    assert "CPUBackend(dtype=np.float32)" in message
    assert "generates different code" not in message


def test_make_net_rejects_non_backend(hdf5_package):
    from mochac import ConfigError

    with pytest.raises(ConfigError, match="make_net takes a backend") as caught:
        load_net(hdf5_package, "cpu")
    assert str(hdf5_package) in str(caught.value)
    assert "'cpu'" in str(caught.value)


def test_damaged_net_json_names_file(tmp_path):
    package = compile_memory_package(tmp_path)
    (package / "net.json").write_text("{")
    with pytest.raises(CompileError) as caught:
        load_net(package)
    message = str(caught.value)
    assert f"{package / 'net.json'} is not valid JSON" in message
    assert "run `mochac compile` again" in message


def test_net_json_without_field(tmp_path):
    package = compile_memory_package(tmp_path)
    meta = json.loads((package / "net.json").read_text())
    del meta["layers"]
    (package / "net.json").write_text(json.dumps(meta))
    with pytest.raises(CompileError, match="lacks the field"):
        load_net(package)


def test_missing_extension_says_recompile(tmp_path):
    package = compile_memory_package(tmp_path)
    for extension in package.glob("_mochac_*"):
        extension.unlink()
    with pytest.raises(CompileError, match="is missing.*mochac compile"):
        load_net(package)


def test_missing_params_says_recompile(tmp_path):
    package = compile_memory_package(tmp_path)
    (package / "params.h5").unlink()
    with pytest.raises(SnapshotError) as caught:
        load_net(package)
    message = str(caught.value)
    assert "params.h5 is missing" in message
    assert "run `mochac compile` again" in message
    assert "interrupted run" not in message


def test_damaged_params_says_recompile(tmp_path):
    package = compile_memory_package(tmp_path)
    (package / "params.h5").write_text("not HDF5")
    with pytest.raises(SnapshotError) as caught:
        load_net(package)
    message = str(caught.value)
    assert "the compiled package" in message
    assert "run `mochac compile` again" in message
    assert "interrupted run" not in message


def test_damaged_newest_snapshot_hint(tmp_path):
    package = compile_memory_package(tmp_path)
    net = load_net(package)
    folder = tmp_path / "snapshots"
    folder.mkdir()
    (folder / "snapshot-000100.h5").write_bytes((package / "params.h5").read_bytes())
    (folder / "snapshot-000200.h5").write_text("cut short")
    with pytest.raises(SnapshotError, match="newest snapshot of an interrupted run"):
        load_snapshot(net, folder / "snapshot-000200.h5")


def test_damaged_model_file_has_no_snapshot_hint(tmp_path):
    net = load_net(compile_memory_package(tmp_path))
    model = tmp_path / "model.h5"
    model.write_text("")
    with pytest.raises(SnapshotError) as caught:
        load_snapshot(net, model)
    assert "interrupted run" not in str(caught.value)
    assert f"cannot open snapshot or model file {model}" in str(caught.value)


def test_missing_model_file(tmp_path):
    net = load_net(compile_memory_package(tmp_path))
    with pytest.raises(SnapshotError, match="does not exist; check the path"):
        load_snapshot(net, tmp_path / "absent.h5")


def test_make_net_keeps_threads_option(tmp_path):
    from mochac import CPUBackend

    net = load_net(compile_memory_package(tmp_path), CPUBackend(threads=2))
    assert np.isfinite(net.forward())


def test_memory_package_has_no_deferred_sources(tmp_path):
    package = compile_memory_package(tmp_path)
    meta = json.loads((package / "net.json").read_text())
    assert meta["deferred_sources"] == {}


# A child process loads a damaged package: an unchecked truncated extension
# kills the process with SIGBUS, which must not take the test runner along.
LOAD_IN_CHILD = textwrap.dedent(
    """
    import sys
    from mochac.errors import CompileError
    from mochac.runtime.compiled_module import load_net
    try:
        load_net(sys.argv[1])
    except CompileError as error:
        print("CompileError:", error)
    else:
        print("loaded")
    """
)


def load_in_child(package) -> str:
    """Return the output of load_net(package) in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", LOAD_IN_CHILD, str(package)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stderr)
    return result.stdout.strip()


def extension_of(package):
    (extension,) = package.glob("_mochac_*")
    return extension


def test_net_json_records_extension_digest(tmp_path):
    package = compile_memory_package(tmp_path)
    meta = json.loads((package / "net.json").read_text())
    data = extension_of(package).read_bytes()
    assert meta["extension_size"] == len(data)
    assert meta["extension_sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("recorded", [True, False], ids=["digest", "no-digest"])
def test_truncated_extension_says_recompile(tmp_path, recorded):
    package = compile_memory_package(tmp_path)
    if not recorded:
        # Packages written before the digest was recorded lack these fields.
        meta = json.loads((package / "net.json").read_text())
        del meta["extension_size"], meta["extension_sha256"]
        (package / "net.json").write_text(json.dumps(meta))
    extension = extension_of(package)
    with open(extension, "r+b") as handle:
        handle.truncate(1000)
    output = load_in_child(package)
    assert output.startswith(f"CompileError: {extension} is damaged (")
    assert "run `mochac compile` again" in output


def test_changed_extension_says_recompile(tmp_path):
    package = compile_memory_package(tmp_path)
    extension = extension_of(package)
    data = bytearray(extension.read_bytes())
    data[len(data) // 2] ^= 0xFF
    extension.write_bytes(bytes(data))
    output = load_in_child(package)
    assert "its SHA-256 differs from the one recorded" in output
    assert "run `mochac compile` again" in output


def test_package_without_digest_loads(tmp_path):
    package = compile_memory_package(tmp_path)
    meta = json.loads((package / "net.json").read_text())
    del meta["extension_size"], meta["extension_sha256"]
    (package / "net.json").write_text(json.dumps(meta))
    assert load_in_child(package) == "loaded"


def test_package_embeds_relative_mean_file(tmp_path, monkeypatch):
    """A SubMean's mean_file is read at compile time, so importing the package
    from another folder reads no file."""
    source = tmp_path / "source"
    source.mkdir()
    mean = np.array([0.25, -0.5], np.float32).reshape(2, 1, 1)
    with h5py.File(source / "mean.h5", "w") as handle:
        handle["mean"] = mean
    net_file = source / "tiny.py"
    net_file.write_text(
        MEMORY_NET_FILE.replace(
            'MemoryDataLayer(name="data", batch_size=4, data=[x, y])',
            'MemoryDataLayer(name="data", batch_size=4, data=[x, y], transformers='
            '[("data", DataTransformers.SubMean(mean_file="mean.h5"))])',
        ).replace("SoftmaxLossLayer,\n", "SoftmaxLossLayer, DataTransformers,\n")
    )
    monkeypatch.chdir(source)
    assert main(["compile", "tiny.py", "-o", str(tmp_path / "build")]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    net = load_net(tmp_path / "build" / "tiny")
    net.forward()
    expected = np.broadcast_to(-mean, (4, 2, 1, 1))
    np.testing.assert_allclose(net.blobs["data"], expected)


TWO_NETS_FILE = textwrap.dedent(
    """
    import numpy as np

    from mochac import (
        CPUBackend, InnerProductLayer, MemoryDataLayer, Net, SoftmaxLossLayer,
    )

    x = np.zeros((8, 2, 1, 1), np.float32)
    y = np.zeros((8, 1), np.float32)
    ip = InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"])
    backend = CPUBackend()
    train = Net("pair_train", backend, [
        MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
        ip,
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ])
    test = Net("pair_test", backend, [
        MemoryDataLayer(name="data", batch_size=4, data=[x], tops=["data"]),
        ip,
    ])
    """
)


def test_make_net_keeps_shared_trained_values(tmp_path):
    """A package net built on a backend that already has its parameters (the
    train net of the same file, trained since) shares them unchanged."""
    from mochac import CPUBackend

    net_file = tmp_path / "pair.py"
    net_file.write_text(TWO_NETS_FILE)
    assert main(["compile", str(net_file), "-o", str(tmp_path / "build")]) == 0
    backend = CPUBackend()
    train = load_net(tmp_path / "build" / "pair_train", backend)
    train.params["ip"]["weight"][...] = 7.0
    test = load_net(tmp_path / "build" / "pair_test", backend)
    assert test.params["ip"]["weight"] is train.params["ip"]["weight"]
    assert np.all(train.params["ip"]["weight"] == 7.0)


def test_memory_package_reads_other_sample_count(tmp_path):
    """A package's MemoryDataLayer takes new arrays of any sample count."""
    net = load_net(compile_memory_package(tmp_path))
    source = net.data_source("data")
    images = np.arange(6 * 2, dtype=np.float32).reshape(6, 2, 1, 1)
    labels = np.array([[0], [1], [2], [0], [1], [2]], dtype=np.float32)
    source.arrays[0] = images
    source.arrays[1] = labels
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"], images[:4])
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"], images[[4, 5, 0, 1]])
    assert source.n_samples == 6
    assert source.epoch == 1


# A net whose blob 'hidden' shares memory with other blobs after plan_memory.
HIDDEN_BLOB_NET_FILE = textwrap.dedent(
    """
    import numpy as np

    from mochac import CPUBackend, InnerProductLayer, MemoryDataLayer, Net

    x = np.ones((4, 3), np.float32)
    layers = [
        MemoryDataLayer(name="data", batch_size=4, data=[x], tops=["data"]),
        InnerProductLayer(name="ip1", output_dim=5, bottoms=["data"], tops=["hidden"]),
        InnerProductLayer(name="ip2", output_dim=2, bottoms=["hidden"], tops=["out"]),
    ]
    net = Net("hidden_blob", CPUBackend(seed=1), layers)
    """
)


def test_package_hidden_blob_advice(tmp_path):
    net_file = tmp_path / "hidden.py"
    net_file.write_text(HIDDEN_BLOB_NET_FILE)
    assert main(["compile", str(net_file), "-o", str(tmp_path / "build")]) == 0
    package = tmp_path / "build" / "hidden_blob"
    net = load_net(package)
    net.forward()
    with pytest.raises(KeyError) as caught:
        net.blobs["hidden"]
    message = str(caught.value)
    assert "shares memory with other blobs after plan_memory" in message
    assert f"loaded from the compiled package {package}" in message
    assert f"add keep=['hidden'] to the Net in {net_file}" in message
    build = tmp_path / "build"
    assert (
        f"run `mochac compile {net_file} -o {build} --disable plan_memory`" in message
    )
    assert "to Net, or disable=" not in message


def test_package_blob_advice_command_rewrites_that_package(tmp_path, monkeypatch):
    """The command of the advice, run from another folder, rewrites the
    package the net came from, with the passes it was compiled without."""
    net_file = tmp_path / "hidden.py"
    net_file.write_text(HIDDEN_BLOB_NET_FILE)
    build = tmp_path / "build"
    arguments = ["compile", str(net_file), "-o", str(build)]
    assert main([*arguments, "--disable", "fuse_neurons"]) == 0
    net = load_net(build / "hidden_blob")
    with pytest.raises(KeyError) as caught:
        net.blobs["hidden"]
    command = str(caught.value).split("or run `")[1].split("`")[0]
    words = shlex.split(command)
    assert words[:2] == ["mochac", "compile"]
    assert words.count("--disable") == 2
    assert "fuse_neurons" in words
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(words[1:]) == 0
    assert list(elsewhere.iterdir()) == []
    net = load_net(build / "hidden_blob")
    net.forward()
    assert net.blobs["hidden"].shape == (4, 5)


@pytest.mark.parametrize("fix", ["keep", "disable"])
def test_package_hidden_blob_advice_works(tmp_path, fix):
    """Each fix the advice names makes the blob readable in the package."""
    net_file = tmp_path / "hidden.py"
    arguments = ["compile", str(net_file), "-o", str(tmp_path / "build")]
    if fix == "keep":
        net_file.write_text(
            HIDDEN_BLOB_NET_FILE.replace("layers)", "layers, keep=['hidden'])")
        )
    else:
        net_file.write_text(HIDDEN_BLOB_NET_FILE)
        arguments += ["--disable", "plan_memory"]
    assert main(arguments) == 0
    net = load_net(tmp_path / "build" / "hidden_blob")
    net.forward()
    weight = net.params["ip1"]["weight"]
    bias = net.params["ip1"]["bias"]
    expected = net.blobs["data"] @ weight.reshape(3, 5) + bias.reshape(5)
    np.testing.assert_allclose(net.blobs["hidden"], expected, rtol=1e-5)


def test_package_loads_after_build_blas_removed(tmp_path, monkeypatch):
    # The extension's run path names the BLAS folder of the environment that
    # compiled it. Here that folder is a link, removed before loading, as when
    # the package moves to another virtual environment.
    import mochac
    from mochac.codegen import build

    include_dir, lib_dir, lib_name = build.blas_location()
    linked = tmp_path / "build-env-blas"
    linked.symlink_to(lib_dir, target_is_directory=True)
    monkeypatch.setattr(
        build, "blas_location", lambda: (include_dir, str(linked), lib_name)
    )
    monkeypatch.setenv("MOCHAC_CACHE_DIR", str(tmp_path / "cache"))
    package = compile_memory_package(tmp_path)
    linked.unlink()

    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from mochac.runtime.compiled_module import load_net
        net = load_net(sys.argv[1])
        data, label = net.data_source("data").arrays
        data[...] = 1.0
        print(net.forward())
        """
    )
    repository = str(Path(mochac.__file__).resolve().parents[1])
    result = subprocess.run(
        [sys.executable, "-c", script, str(package)],
        env={**os.environ, "PYTHONPATH": repository},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert np.isfinite(float(result.stdout))


def test_load_net_blocks_recompile_midway(tmp_path, monkeypatch):
    """A compile that replaces a package while load_net reads it must wait,
    or load_net reads files of both packages and fails."""
    import fcntl

    from mochac.codegen.module_writer import write_module
    from mochac.runtime import compiled_module

    package = compile_memory_package(tmp_path)
    build = package.parent
    # The same net name with another ip size, so params.h5 no longer fits.
    wider_file = tmp_path / "wider.py"
    wider_file.write_text(MEMORY_NET_FILE.replace("output_dim=3", "output_dim=5"))
    wider_build = tmp_path / "wider-build"
    assert main(["compile", str(wider_file), "-o", str(wider_build)]) == 0
    wider = load_net(wider_build / "tiny")

    replaced = []
    read_metadata = compiled_module.read_metadata

    def read_then_replace(folder):
        meta = read_metadata(folder)
        # What a concurrent `mochac compile` does next, unless the load
        # holds its folder: take the lock and replace the package.
        descriptor = os.open(build, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            locked = False
        finally:
            os.close(descriptor)
        if locked:
            write_module(wider, build, wider_file)
            replaced.append(folder)
        return meta

    monkeypatch.setattr(compiled_module, "read_metadata", read_then_replace)
    net = load_net(package)
    assert replaced == []
    assert net.params["ip"]["weight"].shape == (3, 2)


def test_package_without_mochac_says_install(tmp_path):
    package = compile_memory_package(tmp_path)
    # -S skips site-packages and -I ignores PYTHONPATH, so neither mochac
    # nor NumPy can be imported.
    code = f"import sys; sys.path.insert(0, {str(package.parent)!r}); import tiny"
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ModuleNotFoundError: the compiled net package tiny")
    assert f"needs mochac {__version__}" in last_line
    assert f"install mochac {__version__} into this environment" in last_line


# A net whose HDF5OutputLayer writes preds.h5 relative to the working directory.
OUTPUT_NET_FILE = textwrap.dedent(
    """
    import numpy as np

    from mochac import (
        CPUBackend, HDF5OutputLayer, InnerProductLayer, MemoryDataLayer, Net,
    )

    x = np.ones((8, 2, 1, 1), np.float32)
    layers = [
        MemoryDataLayer(name="data", batch_size=4, data=[x], tops=["data"]),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"]),
        HDF5OutputLayer(name="save", bottoms=["ip"], filename="preds.h5"),
    ]
    net = Net("preds", CPUBackend(seed=1), layers)
    """
)


@pytest.fixture
def output_package(tmp_path, monkeypatch):
    """Compile OUTPUT_NET_FILE; return the package folder, with the working
    directory set to an empty folder "run"."""
    net_file = tmp_path / "preds.py"
    net_file.write_text(OUTPUT_NET_FILE)
    assert main(["compile", str(net_file), "-o", str(tmp_path / "build")]) == 0
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    return tmp_path / "build" / "preds"


@pytest.fixture
def imported_package(output_package, monkeypatch):
    """Import the package of output_package in this process; destroy its nets
    and remove it from sys.modules afterwards."""
    import importlib

    monkeypatch.syspath_prepend(str(output_package.parent))
    sys.modules.pop("preds", None)
    module = importlib.import_module("preds")
    made = []
    original_make_net = module.make_net

    def recording_make_net(backend=None):
        made.append(original_make_net(backend))
        return made[-1]

    module.make_net = recording_make_net
    yield module
    for net in [vars(module).get("net"), *made]:
        if net is not None and not getattr(net, "destroyed", False):
            net.destroy()
    sys.modules.pop("preds", None)


def run_in_folder(folder, code, package_folder):
    """Run ``code`` in a fresh interpreter in ``folder``, with the package's
    parent folder on sys.path; return the CompletedProcess."""
    script = f"import sys\nsys.path.insert(0, {str(package_folder.parent)!r})\n{code}"
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
    )


def test_import_creates_no_output_file(output_package, tmp_path):
    code = textwrap.dedent(
        """
        import os
        import preds
        print(sorted(os.listdir(".")))
        print("net" in vars(preds))
        """
    )
    result = run_in_folder(tmp_path / "run", code, output_package)
    assert result.returncode == 0, result.stderr
    listing, net_built = result.stdout.splitlines()
    assert listing == "[]"
    assert net_built == "False"
    assert list((tmp_path / "run").iterdir()) == []


# A script whose multiprocessing workers import the package and leave net
# unused. Spawned workers import the script's modules again.
SPAWN_SCRIPT = textwrap.dedent(
    """
    import multiprocessing
    import os
    import sys

    sys.path.insert(0, sys.argv[1])
    import preds


    def list_folder(_):
        return sorted(os.listdir("."))


    if __name__ == "__main__":
        context = multiprocessing.get_context("spawn")
        with context.Pool(2) as pool:
            print(pool.map(list_folder, range(2)))
        print(sorted(os.listdir(".")))
    """
)


def test_spawned_workers_create_no_file(output_package, tmp_path):
    script = tmp_path / "spawn_workers.py"
    script.write_text(SPAWN_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(output_package.parent)],
        cwd=tmp_path / "run",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    in_workers, after_workers = result.stdout.splitlines()
    assert in_workers == "[[], []]"
    assert after_workers == "[]"


def test_package_second_run_imports(output_package, tmp_path):
    """A script that ran once left preds.h5 behind: running it again imports
    the package, and its first use of net raises an error with the next step."""
    run = tmp_path / "run"
    first = "import preds\npreds.net.forward()\npreds.net.destroy()"
    result = run_in_folder(run, first, output_package)
    assert result.returncode == 0, result.stderr
    written = (run / "preds.h5").read_bytes()

    second = textwrap.dedent(
        """
        import preds
        print("imported")
        from preds import net
        """
    )
    result = run_in_folder(run, second, output_package)
    assert result.stdout == "imported\n"
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert "file preds.h5 already exists in the working directory" in last_line
    assert "Move or delete the file, or run from another working" in last_line
    assert f"in {tmp_path / 'preds.py'} and run `mochac compile` again" in last_line
    assert "pass force_overwrite=True" not in last_line
    assert (run / "preds.h5").read_bytes() == written


def test_make_net_while_net_unused(imported_package, tmp_path):
    net = imported_package.make_net()
    assert "net" not in vars(imported_package)
    net.forward()
    net.destroy()
    with h5py.File(tmp_path / "run" / "preds.h5") as handle:
        assert handle["ip"].shape == (4, 3)


def test_package_net_is_built_once(imported_package):
    from preds import net

    assert imported_package.net is net
    assert vars(imported_package)["net"] is net


def test_package_net_threads_build_once(imported_package, monkeypatch):
    """Threads that use the package's net first at the same time get one net.

    Each thread is inside the module's __getattr__ before the first build
    ends, so without the lock each would build a net of its own.
    """
    import threading
    import time

    threads_count = 4
    entered = []
    builds = []
    original_getattr = imported_package.__getattr__
    original_load_net = imported_package.load_net

    def counting_getattr(name):
        entered.append(name)
        return original_getattr(name)

    def slow_load_net(*args, **kwargs):
        builds.append(threading.get_ident())
        # Let the other threads reach the check for an existing net.
        while len(entered) < threads_count:
            time.sleep(0.001)
        time.sleep(0.05)
        return original_load_net(*args, **kwargs)

    monkeypatch.setattr(imported_package, "__getattr__", counting_getattr)
    monkeypatch.setattr(imported_package, "load_net", slow_load_net)
    barrier = threading.Barrier(threads_count)
    results = [None] * threads_count
    errors = []

    def use_net(index):
        barrier.wait()
        try:
            results[index] = imported_package.net
        except Exception as error:  # noqa: BLE001 - the test asserts there is none
            errors.append(error)

    threads = [
        threading.Thread(target=use_net, args=(index,))
        for index in range(threads_count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(builds) == 1
    assert all(result is results[0] for result in results)
    assert vars(imported_package)["net"] is results[0]


def test_make_net_clash_names_package_net(imported_package):
    net = imported_package.net
    with pytest.raises(ConfigError) as caught:
        imported_package.make_net()
    message = str(caught.value)
    assert "file preds.h5 is already the output file of preds.net" in message
    assert "`del preds.net` frees the net" in message
    assert "preds.net.destroy()" in message

    # The advice works: without the net, make_net builds one.
    del imported_package.net, net
    other = imported_package.make_net()
    other.forward()
    assert other.blobs["ip"].shape == (4, 3)


def test_package_net_clash_names_make_net(imported_package):
    imported_package.make_net()
    with pytest.raises(ConfigError) as caught:
        _ = imported_package.net
    message = str(caught.value)
    assert "another net of the compiled package preds" in message
    assert "call destroy() on that net first" in message
    assert "net" not in vars(imported_package)


def test_package_net_attribute_error(imported_package, monkeypatch):
    """An AttributeError while building the net is not reported as a
    missing attribute ``net``."""

    def failing_load_net(*args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    monkeypatch.setattr(imported_package, "load_net", failing_load_net)
    with pytest.raises(RuntimeError, match="building preds.net failed") as caught:
        _ = imported_package.net
    assert isinstance(caught.value.__cause__, AttributeError)
    with pytest.raises(AttributeError, match="has no attribute 'other'"):
        _ = imported_package.other
