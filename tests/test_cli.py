"""`mochac compile`: one importable module per net, loaded without compiling."""

import contextlib
import json
import logging
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mochac.cli import main

NET_FILE = textwrap.dedent(
    """
    from pathlib import Path

    import numpy as np

    from mochac import (
        CPUBackend, InnerProductLayer, MemoryDataLayer, Net, Neurons, SoftmaxLayer,
    )

    x = np.linspace(-1, 1, 12).reshape(2, 6)
    data = MemoryDataLayer(name="data", tops=["data"], batch_size=2, data=[x])
    ip = InnerProductLayer(
        name="ip", output_dim=3, neuron=Neurons.ReLU(), bottoms=["data"], tops=["ip"]
    )
    prob = SoftmaxLayer(name="prob", bottoms=["ip"], tops=["prob"])
    backend = CPUBackend(dtype=np.float64, seed=4)
    tiny = Net("tiny-net", backend, [data, ip, prob])
    alias = tiny

    if __name__ == "__main__":
        Path(__file__).with_name("main-ran").write_text("yes")
    """
)

CHECK = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from tiny_net import net
    net.data_source("data").arrays[0][...] = np.linspace(-1, 1, 12).reshape(2, 6)
    net.forward()
    np.save(sys.argv[2], net.blobs["prob"])
    """
)


def test_compile_writes_importable_module(tmp_path):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    out = tmp_path / "build"
    assert main(["compile", str(net_file), "-o", str(out)]) == 0
    assert not (tmp_path / "main-ran").exists()
    assert sorted(p.name for p in out.iterdir()) == ["tiny_net"]
    generated = (out / "tiny_net" / "net.c").read_text()
    assert 'from net "tiny-net"' in generated

    # A fresh interpreter with an empty cache must not compile anything.
    empty_cache = tmp_path / "empty-cache"
    result_path = tmp_path / "prob.npy"
    env = dict(os.environ, MOCHAC_CACHE_DIR=str(empty_cache))
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    subprocess.run(
        [sys.executable, str(script), str(out), str(result_path)], env=env, check=True
    )
    assert not empty_cache.exists() or not any(empty_cache.iterdir())

    x = np.linspace(-1, 1, 12).reshape(2, 6)
    prob = np.load(result_path)
    namespace = runpy.run_path(str(net_file), run_name="reference")
    params = namespace["tiny"].params["ip"]
    hidden = np.maximum(x @ params["weight"].T + params["bias"], 0)
    expected = np.exp(hidden) / np.exp(hidden).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(prob, expected, rtol=1e-12)


def test_compile_net_with_hdf5_output(tmp_path, monkeypatch):
    """The import's net keeps its output file open, and compiling rebuilds
    the net, which needs that file too."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            from mochac import (
                CPUBackend, HDF5OutputLayer, InnerProductLayer, MemoryDataLayer, Net,
            )

            x = np.zeros((8, 3), np.float32)
            predict = Net("predict", CPUBackend(seed=1), [
                MemoryDataLayer(name="data", batch_size=4, tops=["data"], data=[x]),
                InnerProductLayer(
                    name="ip", output_dim=2, bottoms=["data"], tops=["ip"]
                ),
                HDF5OutputLayer(
                    name="out", filename="predictions.h5", force_overwrite=True,
                    bottoms=["ip"],
                ),
            ])
            """
        )
    )
    assert main(["compile", "outputs.py", "-o", "out"]) == 0
    assert (tmp_path / "out" / "predict" / "net.json").exists()


@pytest.mark.parametrize(
    ("options", "pass_notes"),
    [([], 0), (["-O0"], 1)],
    ids=["file-passes", "other-passes"],
)
def test_compile_builds_net_once(tmp_path, caplog, options, pass_notes):
    """The import builds each net with the command line's passes, so the
    net is built once. Passes other than the file's get a line naming both."""
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    caplog.set_level(logging.INFO, logger="mochac")
    args = ["compile", *options, str(net_file), "-o", str(tmp_path / "out")]
    assert main(args) == 0

    messages = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.INFO
    ]
    extension_lines = (
        "net 'tiny-net': compiling ",
        "net 'tiny-net': compiled module cache hit ",
    )
    extensions = [
        message for message in messages if message.startswith(extension_lines)
    ]
    summaries = [
        message
        for message in messages
        if message.startswith("net 'tiny-net': 2 compiled layers, ")
    ]
    notes = [
        message
        for message in messages
        if message.startswith(
            "net 'tiny-net': building it with the command line's passes "
        )
    ]
    assert len(extensions) == 1
    assert len(summaries) == 1
    assert len(notes) == pass_notes
    written = json.loads((tmp_path / "out" / "tiny_net" / "net.json").read_text())
    assert written["opt_level"] == (0 if options else 1)


def test_compile_rebuilds_net_built_before_import(tmp_path, caplog, monkeypatch):
    """A net in a module imported before the command was built with
    its own passes, so the command builds it again with its own."""
    (tmp_path / "early_nets.py").write_text(NET_FILE)
    net_file = tmp_path / "net.py"
    net_file.write_text("from early_nets import tiny\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "early_nets", raising=False)
    import early_nets  # noqa: F401 - built with the file's passes

    caplog.set_level(logging.INFO, logger="mochac")
    args = ["compile", "-O0", str(net_file), "-o", str(tmp_path / "out")]
    assert main(args) == 0
    rebuilds = [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith("net 'tiny-net': building it again ")
    ]
    assert len(rebuilds) == 1
    assert "passes (none) in place of the ones it was built with" in rebuilds[0]
    written = json.loads((tmp_path / "out" / "tiny_net" / "net.json").read_text())
    assert written["opt_level"] == 0


def test_compile_net_of_compiled_package_other_passes(tmp_path, caplog):
    """A compiled package's net loads the extension of the package's passes,
    so the import keeps them, and the command builds the net again with its
    own."""
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    assert main(["compile", str(net_file), "-o", str(tmp_path / "package")]) == 0
    loading_file = tmp_path / "loading.py"
    loading_file.write_text(
        "from mochac.runtime.compiled_module import load_net\n"
        f"tiny = load_net({str(tmp_path / 'package' / 'tiny_net')!r})\n"
    )

    caplog.set_level(logging.INFO, logger="mochac")
    args = ["compile", "-O0", str(loading_file), "-o", str(tmp_path / "out")]
    assert main(args) == 0
    rebuilds = [
        record.getMessage()
        for record in caplog.records
        if record.getMessage().startswith("net 'tiny-net': building it again ")
    ]
    assert len(rebuilds) == 1
    written = json.loads((tmp_path / "out" / "tiny_net" / "net.json").read_text())
    assert written["opt_level"] == 0


SPLIT_NET_FILE = textwrap.dedent(
    """
    import numpy as np

    from mochac import CPUBackend, InnerProductLayer, MemoryDataLayer, Net
    from mochac import SoftmaxLayer, SplitLayer

    x = np.linspace(-1, 1, 12).reshape(2, 6)
    layers = [
        MemoryDataLayer(name="data", tops=["data"], batch_size=2, data=[x]),
        SplitLayer(name="split", bottoms=["data"], tops=["a", "b"]),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["a"], tops=["ip"]),
        InnerProductLayer(name="ip2", output_dim=3, bottoms=["b"], tops=["ip2"]),
        SoftmaxLayer(name="prob", bottoms=["ip"], tops=["prob"]),
    ]
    net = Net("split-net", CPUBackend(dtype=np.float64), layers{passes})
    net.forward()
    # Readable with the file's passes only: at opt_level 0 every blob is,
    # and eliminate_splits makes the split top "a" an alias of "data".
    read_at_import = net.blobs[{blob!r}].copy()
    """
)


@pytest.mark.parametrize(
    ("file_passes", "blob", "options"),
    [
        (", opt_level=0", "ip", []),
        ("", "a", ["--disable", "eliminate_splits"]),
        (', disable=(name for name in ["fuse_inplace", "plan_memory"])', "ip", []),
    ],
    ids=["file-O0", "file-O1", "file-disable-generator"],
)
def test_compile_keeps_file_passes_for_import(tmp_path, file_passes, blob, options):
    """A net file may read a blob during its import that only its own
    passes leave readable, so the import keeps them and the command builds
    the net again with its own."""
    net_file = tmp_path / "net.py"
    net_file.write_text(SPLIT_NET_FILE.format(passes=file_passes, blob=blob))
    out = tmp_path / "out"
    assert main(["compile", *options, str(net_file), "-o", str(out)]) == 0
    written = json.loads((out / "split_net" / "net.json").read_text())
    assert written["opt_level"] == 1
    assert written["disable"] == options[1:]


def test_compile_rejects_invalid_disable_generator(tmp_path, caplog):
    """A generator of invalid pass names raises the ConfigError that Net
    raises for it outside the command, although the command reads it first."""
    net_file = tmp_path / "net.py"
    passes = ", disable=(number for number in [1, 2])"
    net_file.write_text(SPLIT_NET_FILE.format(passes=passes, blob="ip2"))
    args = ["compile", str(net_file), "-o", str(tmp_path / "out")]
    assert main(args) == 1
    errors = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.ERROR
    ]
    assert len(errors) == 1
    assert "invalid disable=(1, 2)" in errors[0]
    assert not (tmp_path / "out" / "split_net").exists()


def test_compile_file_that_imports_package(tmp_path, monkeypatch):
    """A net file may import a compiled package. Its net runs the package's
    code, compiled for the package's passes, so the command builds it
    again for other passes instead of loading that code for them."""
    first = tmp_path / "net.py"
    first.write_text(NET_FILE)
    packages = tmp_path / "packages"
    assert main(["compile", str(first), "-o", str(packages)]) == 0
    second = tmp_path / "uses_package.py"
    second.write_text(
        textwrap.dedent(
            f"""
            import sys

            sys.path.insert(0, {str(packages)!r})
            import tiny_net

            sys.path.remove({str(packages)!r})
            pretrained = tiny_net.net
            """
        )
    )
    monkeypatch.delitem(sys.modules, "tiny_net", raising=False)
    out = tmp_path / "out"
    try:
        assert main(["compile", "-O0", str(second), "-o", str(out)]) == 0
    finally:
        sys.modules.pop("tiny_net", None)
    written = json.loads((out / "tiny_net" / "net.json").read_text())
    assert written["opt_level"] == 0
    # The net built again keeps the parameters of the package it imported.
    probs = []
    for folder in (packages, out):
        values = tmp_path / f"{folder.name}.npy"
        command = [sys.executable, "-c", CHECK, str(folder), str(values)]
        subprocess.run(command, check=True, cwd=tmp_path)
        probs.append(np.load(values))
    assert np.allclose(probs[0], probs[1], rtol=1e-12, atol=0)


LOSS_NET_FILE = textwrap.dedent(
    """
    import numpy as np
    from mochac import CPUBackend, InnerProductLayer, MemoryDataLayer, Net, Neurons
    from mochac import SoftmaxLossLayer

    x = np.zeros((8, 3), np.float32)
    y = np.zeros((8, 1), np.float32)
    # fuse_neurons fuses the ReLU, so -O0 and -O1 compile different code.
    relu = Neurons.ReLU()
    train = Net("train", CPUBackend(seed=1), [
        MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
        InnerProductLayer(
            name="ip", output_dim=2, neuron=relu, bottoms=["data"], tops=["ip"]
        ),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ])
    """
)
# Defines a macro twice on the compiler's command line, so that every
# compile prints one warning that names it.
MACRO_DEFINED_TWICE = "-DMOCHAC_TWICE=1 -DMOCHAC_TWICE=2"


def compiler_warnings(text: str) -> list[str]:
    return [
        line for line in text.splitlines() if "warning:" in line and "TWICE" in line
    ]


@pytest.mark.parametrize("command", ["compile", "bench"])
def test_compiler_warning_shown_once(command, tmp_path, monkeypatch, capfd):
    """The net file's net, the timed net and the compile that `mochac bench`
    times share one source, so its warning shows once."""
    from mochac.codegen import build

    monkeypatch.setenv("CFLAGS", MACRO_DEFINED_TWICE)
    monkeypatch.setenv("MOCHAC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "SHOWN_OUTPUT_KEYS", set())
    net_file = tmp_path / "net.py"
    if command == "compile":
        net_file.write_text(NET_FILE)
        args = ["compile", "-O0", str(net_file), "-o", str(tmp_path / "out")]
    else:
        # The timed net leaves out output layers, so the file has none.
        net_file.write_text(LOSS_NET_FILE)
        args = ["bench", "-O0", str(net_file), "--iters", "1", "--repeats", "1"]
        args += ["--no-peer"]
    assert main(args) == 0
    assert len(compiler_warnings(capfd.readouterr().err)) == 1


OUTPUT_NET_FILE = textwrap.dedent(
    """
    import numpy as np
    from mochac import (
        CPUBackend, HDF5OutputLayer, InnerProductLayer, MemoryDataLayer, Net,
        SoftmaxLossLayer,
    )

    x = np.zeros((8, 3), np.float32)
    y = np.zeros((8, 1), np.float32)
    predict = Net("predict", CPUBackend(seed=1), [
        MemoryDataLayer(name="data", batch_size=4, data=[x, y]),
        InnerProductLayer(name="ip", output_dim=2, bottoms=["data"], tops=["ip"]),
        HDF5OutputLayer(
            name="out", filename="predictions.h5", bottoms=["ip"], FORCE
        ),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ])
    """
)


def test_compile_hdf5_output_writes_no_file(tmp_path, monkeypatch):
    """With force_overwrite=False (the default), the rebuilt net must not
    find an output file that the import's net left behind."""
    monkeypatch.chdir(tmp_path)
    source = OUTPUT_NET_FILE.replace("FORCE", "force_overwrite=False")
    (tmp_path / "outputs.py").write_text(source)
    assert main(["compile", "outputs.py", "-o", "out"]) == 0
    assert (tmp_path / "out" / "predict" / "net.json").exists()
    assert not (tmp_path / "predictions.h5").exists()


@pytest.mark.parametrize("command", ["compile", "bench"])
def test_hdf5_output_file_survives_command(command, tmp_path, monkeypatch):
    """Compiling or timing a net file replaces no existing output file,
    even when its HDF5OutputLayer has force_overwrite=True."""
    import h5py

    monkeypatch.chdir(tmp_path)
    source = OUTPUT_NET_FILE.replace("FORCE", "force_overwrite=True")
    (tmp_path / "outputs.py").write_text(source)
    with h5py.File(tmp_path / "predictions.h5", "w") as file:
        file["ip"] = np.ones((5, 2), np.float32)
    if command == "compile":
        args = ["compile", "outputs.py", "-o", "out"]
    else:
        args = ["bench", "outputs.py", "--iters", "1", "--repeats", "1", "--no-peer"]
    assert main(args) == 0
    with h5py.File(tmp_path / "predictions.h5", "r") as file:
        assert file["ip"].shape == (5, 2)


def test_compile_without_nets_fails(tmp_path, caplog):
    net_file = tmp_path / "empty.py"
    net_file.write_text("x = 1\n")
    assert main(["compile", str(net_file), "-o", str(tmp_path / "out")]) == 2
    assert "defines no Net" in caplog.text


def test_compile_missing_file(tmp_path, caplog):
    absent = tmp_path / "absent.py"
    assert main(["compile", str(absent)]) == 2
    expected = f"{absent}: file not found; pass the Python file that defines"
    assert expected in caplog.text


def test_compile_special_net_file(tmp_path, caplog):
    pipe = tmp_path / "net.py"
    os.mkfifo(pipe)
    assert main(["compile", str(pipe), "-o", str(tmp_path / "out")]) == 2
    expected = f"{pipe}: is a named pipe, not a regular file; pass the Python file"
    assert expected in caplog.text


def test_compile_report_and_dot(tmp_path, capsys):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    report_path = tmp_path / "report.json"
    dot_path = tmp_path / "net.dot"
    args = ["compile", str(net_file), "-o", str(tmp_path / "out"), "--report"]
    args += ["--report-json", str(report_path), "--dot", str(dot_path)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "fuse_neurons: 1 change(s)" in printed

    (report,) = json.loads(report_path.read_text())
    assert report["name"] == "tiny-net"
    assert report["kernels_per_iteration"] == {"before": 3, "after": 2}
    assert report["arena_bytes"] <= report["unplanned_bytes"]
    assert report["arena_bytes"] >= report["peak_live_bytes"]
    assert [item["name"] for item in report["passes"]][-1] == "plan_memory"
    dot = dot_path.read_text()
    assert "cluster_before" in dot
    assert "cluster_after" in dot
    assert "+ ReLU" in dot


def test_compile_at_o0_runs_no_pass(tmp_path):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    report_path = tmp_path / "report.json"
    args = ["compile", str(net_file), "-o", str(tmp_path / "out"), "-O0"]
    assert main([*args, "--report-json", str(report_path)]) == 0

    (report,) = json.loads(report_path.read_text())
    assert report["opt_level"] == 0
    assert report["passes"] == []
    assert report["arena_bytes"] == report["unplanned_bytes"]


def test_compile_rejects_unknown_pass(tmp_path, caplog, monkeypatch):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)

    def run_file(path):
        raise AssertionError("the options must be checked before the file runs")

    monkeypatch.setattr("mochac.cli.find_nets", run_file)
    args = ["compile", str(net_file), "-o", str(tmp_path / "out"), "--disable", "nope"]
    # A usage error, as for the other invalid options.
    assert main(args) == 2
    expected = (
        "--disable nope: disable lists unknown pass name(s) 'nope'; known passes: "
    )
    assert expected in caplog.text


def test_disable_at_o0_warns(tmp_path, caplog):
    """--disable with -O0 compiles, with a warning that it does nothing."""
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    args = ["compile", str(net_file), "-o", str(tmp_path / "out"), "-O0"]
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--disable", "plan_memory"]) == 0
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING
    ]
    assert any(
        "--disable plan_memory has no effect with -O0" in text for text in warnings
    )


def test_compile_unknown_pass_close_match(tmp_path, caplog):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    args = ["compile", str(net_file), "-o", str(tmp_path / "out")]
    assert main([*args, "--disable", "fuse_neuron"]) == 2
    expected = (
        "--disable fuse_neuron: disable lists unknown pass name(s) 'fuse_neuron' "
        "(did you mean 'fuse_neurons'?)"
    )
    assert expected in caplog.text


def test_compiled_module_needs_no_compiler(tmp_path):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    out = tmp_path / "build"
    assert main(["compile", str(net_file), "-o", str(out)]) == 0
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    # No compiler on PATH and an empty cache: the import must still work.
    env = dict(
        os.environ, PATH="", CC="no-such-compiler", MOCHAC_CACHE_DIR=str(tmp_path / "c")
    )
    result_path = tmp_path / "prob.npy"
    subprocess.run(
        [sys.executable, str(script), str(out), str(result_path)], env=env, check=True
    )
    assert np.load(result_path).shape == (2, 3)


def test_compiled_module_rejects_other_cpu(tmp_path):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    out = tmp_path / "build"
    assert main(["compile", str(net_file), "-o", str(out)]) == 0
    meta_path = out / "tiny_net" / "net.json"
    meta = json.loads(meta_path.read_text())
    meta["cpu"] = "another-cpu"
    meta_path.write_text(json.dumps(meta))
    from mochac.errors import CompileError
    from mochac.runtime.compiled_module import load_net

    with pytest.raises(CompileError, match="another CPU"):
        load_net(out / "tiny_net")


def test_compiled_module_keeps_small_arrays():
    from mochac.layers import MemoryDataLayer
    from mochac.serialize import from_json, to_json
    from mochac.transformers import DataTransformers

    mean = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    layer = MemoryDataLayer(
        name="data",
        batch_size=1,
        tops=["data"],
        data=[np.ones((2, 2, 3), dtype=np.float32)],
        transformers=[("data", DataTransformers.SubMean(mean_blob=mean))],
    )
    restored = from_json(json.loads(json.dumps(to_json(layer))))
    # The data comes back as zeros of its shape, the mean with its values.
    np.testing.assert_array_equal(restored.data[0], np.zeros((2, 2, 3)))
    np.testing.assert_array_equal(restored.transformers[0][1].mean_blob, mean)


def test_compile_cuda_backend_writes_source_and_steps(tmp_path, capsys):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    out = tmp_path / "cuda"
    assert main(["compile", str(net_file), "-o", str(out), "--backend", "cuda"]) == 0
    sources = sorted(out.glob("*.cu"))
    assert sources
    assert "__global__" in sources[0].read_text()
    steps = json.loads(sources[0].with_suffix(".steps.json").read_text())
    assert steps["forward"]
    output = capsys.readouterr().out
    assert str(sources[0]) in output
    # No package is written, so the output explains how to run the net instead.
    assert "no mochac command loads them" in output
    assert "Net(name, GPUBackend(), layers)" in output
    assert "Without --backend cuda, mochac compile writes an importable" in output


def test_compile_cuda_keeps_user_files(tmp_path, caplog):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    out = tmp_path / "cuda"
    args = ["compile", str(net_file), "-o", str(out), "--backend", "cuda"]
    assert main(args) == 0
    # Files that an earlier compile wrote are replaced.
    assert main(args) == 0

    source = out / "tiny_net.cu"
    source.write_text("// a kernel of the user's own\n")
    assert main(args) == 1
    assert source.read_text() == "// a kernel of the user's own\n"
    assert f"cannot write {source}" in caplog.text

    source.unlink()
    steps = out / "tiny_net.steps.json"
    steps.write_text('{"notes": "the user\'s"}\n')
    assert main(args) == 1
    assert not source.exists()
    assert steps.read_text() == '{"notes": "the user\'s"}\n'


def test_bench_cuda_backend_without_device_fails_clearly(caplog):
    with contextlib.suppress(ImportError, RuntimeError):
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a CUDA device is usable here")
    args = ["bench", "lenet", "--backend", "cuda", "--iters", "1", "--repeats", "1"]
    assert main(args) == 1
    assert "pip install '.[cuda]'" in caplog.text or "NVIDIA driver" in caplog.text


def test_compile_gpu_backend_file_without_device(tmp_path, capsys):
    """A net file written for GPUBackend compiles for either backend on a
    machine without CuPy or a device."""
    net_file = tmp_path / "gpu_net.py"
    net_file.write_text(
        NET_FILE.replace(
            "CPUBackend(dtype=np.float64, seed=4)", "GPUBackend(seed=4)"
        ).replace("CPUBackend, InnerProductLayer", "GPUBackend, InnerProductLayer")
    )
    assert "GPUBackend(seed=4)" in net_file.read_text()
    out = tmp_path / "cuda"
    assert main(["compile", str(net_file), "-o", str(out), "--backend", "cuda"]) == 0
    assert sorted(out.glob("*.cu"))
    assert main(["compile", str(net_file), "-o", str(tmp_path / "cpu")]) == 0
    assert (tmp_path / "cpu" / "tiny_net" / "__init__.py").is_file()
    import mochac
    from mochac.runtime import gpu_backend

    assert mochac.GPUBackend is gpu_backend.GPUBackend
    assert isinstance(mochac.GPUBackend, type)


@pytest.mark.parametrize(
    ("backend", "output"),
    [("cpu", "package tiny_net"), ("cuda", "tiny_net.cu and tiny_net.steps.json")],
)
def test_compile_rejects_output_name_clash(tmp_path, caplog, backend, output):
    net_file = tmp_path / "nets.py"
    net_file.write_text(
        NET_FILE + '\nother = Net("Tiny Net", backend, [data, ip, prob])\n'
    )
    args = ["compile", str(net_file), "-o", str(tmp_path / "out")]
    assert main([*args, "--backend", backend]) == 2
    expected = (
        f"'tiny-net' (tiny) and 'Tiny Net' (other) would both be written as {output}; "
        "rename one of them"
    )
    assert expected in caplog.text
    assert not (tmp_path / "out").exists()


# Nets whose names the compile lowercases or gives the suffix "_net": a
# module of the standard library, a module beside the net file in the
# output folder, and a keyword. The net named as the net file keeps its name.
RENAMED_NET_FILE = (
    NET_FILE
    + """
import naming_helper

upper = Net("Upper-Case", backend, [data, ip, prob])
library = Net("JSON", backend, [data, ip, prob])
helper = Net("naming_helper", backend, [data, ip, prob])
keyword = Net("class", backend, [data, ip, prob])
own = Net("nets", backend, [data, ip, prob])
"""
)
RENAMED_OUTPUTS = [
    "class_net",
    "json_net",
    "naming_helper_net",
    "nets",
    "tiny_net",
    "upper_case",
]


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_compile_output_names_match_backends(tmp_path, backend, capsys):
    """Both backends name a net's output by the same rules: the package for
    the CPU, the .cu and .steps.json files for CUDA."""
    (tmp_path / "naming_helper.py").write_text("SIZE = 3\n")
    net_file = tmp_path / "nets.py"
    net_file.write_text(RENAMED_NET_FILE)
    args = ["compile", str(net_file), "-o", str(tmp_path), "--backend", backend]
    try:
        assert main(args) == 0
    finally:
        # The net file imported the helper, which another test's folder lacks.
        sys.modules.pop("naming_helper", None)
    printed = capsys.readouterr().out
    if backend == "cpu":
        packages = sorted(path.parent.name for path in tmp_path.glob("*/__init__.py"))
        assert packages == RENAMED_OUTPUTS
        assert "net 'Upper-Case' -> " in printed
        assert "(import upper_case)" in printed
        return
    sources = sorted(path.name.removesuffix(".cu") for path in tmp_path.glob("*.cu"))
    assert sources == RENAMED_OUTPUTS
    steps = sorted(
        path.name.removesuffix(".steps.json") for path in tmp_path.glob("*.steps.json")
    )
    assert steps == RENAMED_OUTPUTS
    assert f"net 'Upper-Case' -> {tmp_path / 'upper_case.cu'}" in printed


def test_compile_rejects_output_file(tmp_path, caplog, monkeypatch):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)

    def run_file(path):
        raise AssertionError("-o must be checked before the file runs")

    monkeypatch.setattr("mochac.cli.find_nets", run_file)
    existing_file = tmp_path / "existing"
    existing_file.write_text("a file")
    assert main(["compile", str(net_file), "-o", str(existing_file)]) == 2
    assert "is not a folder" in caplog.text


def test_compile_cuda_rejects_report_options(tmp_path, caplog):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    args = ["compile", str(net_file), "-o", str(tmp_path / "cuda"), "--backend", "cuda"]
    assert main([*args, "--report"]) == 2
    assert "without --backend cuda" in caplog.text


def test_package_name_of_keyword_net():
    from mochac.codegen.module_writer import module_name

    assert module_name("class") == "class_net"
    assert module_name("My Net") == "my_net"
    assert module_name("3layers") == "net_3layers"


def test_package_name_avoids_module_names():
    from mochac.codegen.module_writer import module_name

    assert module_name("mochac") == "mochac_net"
    assert module_name("NumPy") == "numpy_net"
    assert module_name("test") == "test_net"
    assert module_name("json") == "json_net"
    assert module_name("tiny-net") == "tiny_net"


def test_compile_net_named_mochac(tmp_path, capsys):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE.replace('Net("tiny-net"', 'Net("mochac"'))
    out = tmp_path / "build"
    assert main(["compile", str(net_file), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["mochac_net"]
    assert "(import mochac_net)" in capsys.readouterr().out


def test_version_option(capsys):
    from mochac.version import __version__

    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"mochac {__version__}"


@pytest.mark.parametrize(
    ("args", "usage", "error"),
    [
        (
            ["compile", "net.py", "--ouput", "out"],
            "usage: mochac compile ",
            "unrecognized arguments: --ouput out (did you mean --output?)",
        ),
        (
            ["compile", "net.py", "--ouput=out"],
            "usage: mochac compile ",
            "unrecognized arguments: --ouput=out (did you mean --output?)",
        ),
        (
            ["bench", "lenet", "--itres", "3", "--repeat-count", "2"],
            "usage: mochac bench ",
            (
                "unrecognized arguments: --itres 3 --repeat-count 2 (did you mean "
                "--iters for --itres, --repeats for --repeat-count?)"
            ),
        ),
        (
            ["plot", "stats.h5", "--stats", "obj_val"],
            "usage: mochac plot ",
            "unrecognized arguments: --stats obj_val (did you mean --stat?)",
        ),
        (
            ["plot", "stats.h5", "extra.h5"],
            "usage: mochac plot ",
            "mochac plot: error: unrecognized arguments: extra.h5\n",
        ),
    ],
    ids=["compile", "compile-equals", "bench-two", "plot", "plot-positional"],
)
def test_unknown_option_shows_command_usage(args, usage, error, capsys):
    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == 2
    printed = capsys.readouterr().err
    assert printed.startswith(usage)
    assert error in printed


def test_unknown_option_before_command(capsys):
    """An unknown option before the subcommand is the top-level parser's."""
    with pytest.raises(SystemExit) as caught:
        main(["--colour", "compile", "net.py"])
    assert caught.value.code == 2
    printed = capsys.readouterr().err
    assert printed.startswith("usage: mochac [-h]")
    assert "unrecognized arguments: --colour" in printed


def test_compile_syntax_error_names_line(tmp_path, caplog):
    net_file = tmp_path / "broken.py"
    net_file.write_text("from mochac import *\nnet = Net('x', CPUBackend(), [\n")
    assert main(["compile", str(net_file), "-o", str(tmp_path / "out")]) == 2
    assert f"{net_file}, line 2: SyntaxError: '[' was never closed" in caplog.text
    assert "Traceback" not in caplog.text


def test_compile_creates_output_file_folders(tmp_path):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    dot = tmp_path / "missing" / "graphs" / "g.dot"
    report = tmp_path / "reports" / "r.json"
    args = ["compile", str(net_file), "-o", str(tmp_path / "out")]
    assert main([*args, "--dot", str(dot), "--report-json", str(report)]) == 0
    assert dot.read_text().startswith('digraph "tiny-net"')
    assert json.loads(report.read_text())[0]["name"] == "tiny-net"


def test_compile_checks_dot_below_file_first(tmp_path, caplog):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    (tmp_path / "afile").write_text("a file")
    out = tmp_path / "out"
    dot = tmp_path / "afile" / "sub" / "g.dot"
    assert main(["compile", str(net_file), "-o", str(out), "--dot", str(dot)]) == 2
    expected = f"--dot {dot}: {tmp_path / 'afile'} is not a folder, so no file"
    assert expected in caplog.text
    # The check comes before any module is written.
    assert not out.exists()


def test_compile_dot_folder_creation_fails(tmp_path, caplog, monkeypatch):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    dot = tmp_path / "locked" / "g.dot"
    original_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == dot.parent:
            raise PermissionError(13, "Permission denied", str(self))
        return original_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    args = ["compile", str(net_file), "-o", str(tmp_path / "out"), "--dot", str(dot)]
    assert main(args) == 1
    expected = (
        f"--dot {dot}: cannot create folder {dot.parent}: Permission denied; "
        "name a file in a folder you can write to"
    )
    assert expected in caplog.text


def test_compile_dot_write_fails(tmp_path, caplog, monkeypatch):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    dot = tmp_path / "g.dot"
    dot.write_text("earlier graph\n")
    original_write_text = Path.write_text

    def write_text(self, *args, **kwargs):
        # The file is written under a temporary name, then renamed.
        if self.name.startswith(f".{dot.name}."):
            original_write_text(self, "cut short")
            raise OSError(28, "No space left on device", str(self))
        return original_write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    args = ["compile", str(net_file), "-o", str(tmp_path / "out"), "--dot", str(dot)]
    assert main(args) == 1
    expected = (
        f"--dot {dot}: cannot write the file: No space left on device; name a "
        "file in a folder you can write to, on a disk with free space"
    )
    assert expected in caplog.text
    assert dot.read_text() == "earlier graph\n"
    assert not list(tmp_path.glob(f".{dot.name}.*"))


def test_compile_dot_to_stdout(tmp_path, capsys, monkeypatch):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE + "\nprint('printed by the net file')\n")
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "net.py", "-o", "out", "--dot", "-", "--report"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith('digraph "tiny-net" {')
    assert captured.out.endswith("}\n")
    # The other output goes to stderr, so the dot text stays valid.
    assert "printed by the net file" in captured.err
    assert "net 'tiny-net' -> out/tiny_net" in captured.err
    assert "fuse_neurons: 1 change(s)" in captured.err
    assert not (tmp_path / "-").exists()


def test_compile_report_json_to_stdout(tmp_path, capsys, monkeypatch):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    monkeypatch.chdir(tmp_path)
    args = ["compile", str(net_file), "-o", str(tmp_path / "out")]
    assert main([*args, "--report-json", "-"]) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["name"] == "tiny-net"


def test_compile_dot_file_named_dash(tmp_path, capsys, monkeypatch):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "net.py", "-o", "out", "--dot", "./-"]) == 0
    assert (tmp_path / "-").read_text().startswith('digraph "tiny-net"')
    assert "digraph" not in capsys.readouterr().out


def test_compile_rejects_two_stdout_options(tmp_path, caplog, monkeypatch):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    args = ["compile", str(net_file), "-o", str(out), "--report-json", "-"]
    assert main([*args, "--dot", "-"]) == 2
    expected = (
        "--report-json - and --dot -: only one option can write to standard "
        "output; name a file for the others"
    )
    assert expected in caplog.text
    assert not out.exists()


def test_compile_rejects_stdout_folder(tmp_path, caplog, monkeypatch):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "net.py", "-o", "-"]) == 2
    assert "-o -: mochac compile writes a folder of Python packages" in caplog.text
    assert "(./- for a folder named '-')" in caplog.text
    assert not (tmp_path / "-").exists()


def test_compile_rejects_report_json_folder(tmp_path, caplog):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    args = ["compile", str(net_file), "-o", str(tmp_path / "out")]
    assert main([*args, "--report-json", str(tmp_path)]) == 2
    assert f"--report-json {tmp_path}: is a folder; name a file" in caplog.text


@pytest.mark.parametrize("option", ["--report-json", "--dot"])
def test_compile_rejects_report_in_place_of_output(tmp_path, caplog, option):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    out = tmp_path / "out"
    assert main(["compile", str(net_file), "-o", str(out), option, str(out)]) == 2
    assert f"{option} {out}: is the -o folder" in caplog.text
    assert not out.exists()


def test_compile_names_file_of_bad_net(tmp_path, caplog):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE.replace('bottoms=["ip"]', 'bottoms=["ipp"]'))
    assert main(["compile", str(net_file), "-o", str(tmp_path / "out")]) == 1
    assert f"{net_file}: layer 'prob' reads bottom 'ipp'" in caplog.text
    assert not (tmp_path / "out").exists()


def test_compile_keeps_foreign_folder(tmp_path, caplog):
    # A user's folder that happens to have the package's name is never
    # deleted, with or without an earlier package in it.
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    out = tmp_path / "out"
    user_folder = out / "tiny_net"
    user_folder.mkdir(parents=True)
    (user_folder / "labels.csv").write_text("0,1\n")
    assert main(["compile", str(net_file), "-o", str(out)]) == 1
    assert "is not a package mochac wrote" in caplog.text
    assert (user_folder / "labels.csv").read_text() == "0,1\n"


def test_compile_keeps_added_file(tmp_path, caplog):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    out = tmp_path / "out"
    assert main(["compile", str(net_file), "-o", str(out)]) == 0
    added = out / "tiny_net" / "mine.py"
    added.write_text("x = 1\n")
    assert main(["compile", str(net_file), "-o", str(out)]) == 1
    assert "files mochac did not write (mine.py)" in caplog.text
    assert added.exists()
    added.unlink()
    # An earlier package alone is replaced.
    assert main(["compile", str(net_file), "-o", str(out)]) == 0


def test_compile_output_below_file(tmp_path, caplog):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    (tmp_path / "afile").write_text("a file")
    out = tmp_path / "afile" / "sub"
    assert main(["compile", str(net_file), "-o", str(out)]) == 2
    expected = f"-o {out}: {tmp_path / 'afile'} is not a folder, so no folder"
    assert expected in caplog.text


@pytest.mark.parametrize("name", ["models\\\\unet", 'say """hi"""'])
def test_compiled_package_docstring_escapes_name(tmp_path, name):
    import ast

    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE.replace('Net("tiny-net"', f"Net({name!r}"))
    out = tmp_path / "build"
    assert main(["compile", str(net_file), "-o", str(out)]) == 0
    (package,) = out.iterdir()
    tree = ast.parse((package / "__init__.py").read_text(encoding="utf-8"))
    assert f'net "{name}"' in ast.get_docstring(tree)


CONTAINER_NET_FILE = textwrap.dedent(
    """
    import numpy as np

    from mochac import CPUBackend, InnerProductLayer, MemoryDataLayer, Net

    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 6)


    def make(name):
        data = MemoryDataLayer(name="data", tops=["data"], batch_size=2, data=[x])
        ip = InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"])
        return Net(name, CPUBackend(seed=1), [data, ip])
    """
)


def test_compile_writes_nets_in_containers(tmp_path, capsys):
    net_file = tmp_path / "nets.py"
    net_file.write_text(
        CONTAINER_NET_FILE
        + textwrap.dedent(
            """
            nets = [make("first"), make("second")]
            pair = (make("third"),)
            by_name = {"outer": {"inner": [make("fourth")]}}
            extra = make("fifth")
            again = [extra, nets]
            """
        )
    )
    out = tmp_path / "out"
    assert main(["compile", str(net_file), "-o", str(out)]) == 0
    written = sorted(path.name for path in out.iterdir())
    assert written == ["fifth", "first", "fourth", "second", "third"]
    printed = capsys.readouterr().out
    assert printed.index("'first'") < printed.index("'second'")
    assert printed.index("'second'") < printed.index("'third'")


def test_compile_finds_deeply_nested_net(tmp_path, capsys):
    net_file = tmp_path / "nets.py"
    net_file.write_text(
        CONTAINER_NET_FILE
        + textwrap.dedent(
            """
            import sys

            deep = make("deep")
            for _ in range(sys.getrecursionlimit() + 100):
                deep = [deep]
            loop = [make("looped")]
            loop.append(loop)
            """
        )
    )
    out = tmp_path / "out"
    assert main(["compile", str(net_file), "-o", str(out)]) == 0
    written = sorted(path.name for path in out.iterdir())
    assert written == ["deep", "looped"]
    printed = capsys.readouterr().out
    assert printed.index("'deep'") < printed.index("'looped'")


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_compile_net_file_changing_directory(tmp_path, monkeypatch, capsys, backend):
    """Relative paths of the command line name files in the directory the
    command started in, also when the net file changes directory."""
    (tmp_path / "elsewhere").mkdir()
    net_file = tmp_path / "nets.py"
    net_file.write_text(
        CONTAINER_NET_FILE + '\nimport os\nos.chdir("elsewhere")\nnet = make("moved")\n'
    )
    monkeypatch.chdir(tmp_path)
    args = ["compile", "nets.py", "-o", "out", "--backend", backend]
    if backend == "cpu":
        args += ["--report-json", "report.json", "--dot", "nets.dot"]
    assert main(args) == 0
    assert not (tmp_path / "elsewhere" / "out").exists()
    printed = capsys.readouterr().out
    if backend == "cuda":
        assert (tmp_path / "out" / "moved.cu").is_file()
        assert "out/moved.cu" in printed
        return
    assert "-> out/moved (import moved)" in printed
    meta = json.loads((tmp_path / "out" / "moved" / "net.json").read_text())
    assert meta["source_file"] == str(net_file)
    assert (tmp_path / "report.json").is_file()
    assert (tmp_path / "nets.dot").is_file()


def test_find_nets_keeps_file_path_entries(tmp_path, monkeypatch):
    """find_nets removes only the sys.path entry it added, also when the net
    file inserted entries of its own in front of it."""
    from mochac.cli import find_nets

    monkeypatch.setattr(sys, "path", list(sys.path))
    own_entry = str(tmp_path / "own-modules")
    net_file = tmp_path / "nets.py"
    net_file.write_text(f"import sys\nsys.path.insert(0, {own_entry!r})\n")
    paths_before = list(sys.path)
    assert find_nets(net_file) == {}
    assert sys.path[0] == own_entry
    assert str(tmp_path) not in sys.path
    assert sys.path[1:] == paths_before


def test_compile_rejects_clash_in_list(tmp_path, caplog):
    net_file = tmp_path / "nets.py"
    net_file.write_text(
        CONTAINER_NET_FILE + '\nnets = [make("a-b")]\nextra = make("a_b")\n'
    )
    assert main(["compile", str(net_file), "-o", str(tmp_path / "out")]) == 2
    expected = (
        "nets 'a-b' (nets[0]) and 'a_b' (extra) would both be written as package a_b"
    )
    assert expected in caplog.text
    assert not (tmp_path / "out").exists()


def test_compile_warns_about_unreachable_net(tmp_path, caplog):
    net_file = tmp_path / "nets.py"
    net_file.write_text(
        CONTAINER_NET_FILE
        + textwrap.dedent(
            """
            class Holder:
                pass


            holder = Holder()
            holder.net = make("hidden")
            make("dropped")
            shown = make("shown")
            """
        )
    )
    out = tmp_path / "out"
    assert main(["compile", str(net_file), "-o", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["shown"]
    warnings = "\n".join(
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    )
    assert "net(s) 'hidden' are built during import but not held" in warnings
    # An earlier test may have set mochac's loggers to INFO, which logs the
    # build of every net.
    assert "'dropped'" not in warnings


def test_compile_no_warning_for_imported_nets(tmp_path, caplog):
    (tmp_path / "shared_nets.py").write_text(
        CONTAINER_NET_FILE + '\nunused = make("unused")\n'
    )
    net_file = tmp_path / "nets.py"
    net_file.write_text('from shared_nets import make\nmine = make("mine")\n')
    assert main(["compile", str(net_file), "-o", str(tmp_path / "out")]) == 0
    assert "built during import" not in caplog.text


def test_compile_net_file_that_exits(tmp_path, caplog):
    net_file = tmp_path / "exits.py"
    net_file.write_text(NET_FILE + "\nimport sys\nsys.exit(0)\n")
    out = tmp_path / "out"
    assert main(["compile", str(net_file), "-o", str(out)]) == 1
    assert f"{net_file}: the file exited during import with status 0" in caplog.text
    assert "sys.exit(0)" in caplog.text
    assert not out.exists()


def test_compile_net_file_that_parses_arguments(tmp_path, caplog, monkeypatch):
    # argparse in the net file reads mochac's own arguments and exits.
    net_file = tmp_path / "train.py"
    net_file.write_text(
        "import argparse\nparser = argparse.ArgumentParser()\nparser.parse_args()\n"
    )
    arguments = ["compile", str(net_file), "-o", str(tmp_path / "out")]
    # sys.argv as the mochac command sets it, not pytest's own arguments,
    # which differ with how pytest was started.
    monkeypatch.setattr(sys, "argv", ["mochac", *arguments])
    assert main(arguments) == 1
    assert "exited during import with status 2" in caplog.text
    assert 'under `if __name__ == "__main__":`' in caplog.text


def test_compile_folder_argument(tmp_path, caplog):
    (tmp_path / "net.py").write_text(NET_FILE)
    assert main(["compile", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert f"{tmp_path}: is a folder; pass the Python file" in caplog.text
    assert "(Python files in it: net.py)" in caplog.text
    assert "file not found" not in caplog.text


def test_bench_folder_argument(tmp_path, caplog):
    assert main(["bench", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a folder; pass the Python file" in caplog.text


RAISING_HELPER = textwrap.dedent(
    """
    def check_rows(rows):
        raise ValueError(f"expected 6 rows, got {rows}")


    check_rows(5)
    """
)


def test_compile_error_shows_user_frames(tmp_path, caplog):
    (tmp_path / "rows_helper.py").write_text(RAISING_HELPER)
    net_file = tmp_path / "net.py"
    net_file.write_text("import numpy\nimport rows_helper\n")
    assert main(["compile", str(net_file), "-o", str(tmp_path / "out")]) == 1
    text = "\n".join(caplog.messages)
    assert f"{net_file}: the file raised ValueError during import" in text
    assert f'File "{net_file}", line 2, in <module>' in text
    assert 'rows_helper.py", line 6, in <module>' in text
    assert 'rows_helper.py", line 3, in check_rows' in text
    assert "ValueError: expected 6 rows, got 5" in text
    assert "runpy" not in text
    assert "cli.py" not in text
    assert "Traceback (most recent call last)" not in text


def test_compile_error_hides_mochac_frames(tmp_path, caplog):
    # A bottoms generator that raises fails inside mochac, which iterates it.
    net_file = tmp_path / "net.py"
    net_file.write_text(
        "from mochac import InnerProductLayer\n"
        "ip = InnerProductLayer(name='ip', output_dim=2, "
        "bottoms=(int(b) for b in ['x']), tops=['ip'])\n"
    )
    assert main(["compile", str(net_file), "-o", str(tmp_path / "out")]) == 1
    assert f'File "{net_file}", line 2, in <module>' in caplog.text
    text = "\n".join(caplog.messages)
    assert "mochac/" not in text.replace(str(tmp_path), "")


def test_compile_error_verbose_shows_all_frames(tmp_path):
    (tmp_path / "rows_helper.py").write_text(RAISING_HELPER)
    net_file = tmp_path / "net.py"
    net_file.write_text("import rows_helper\n")
    command = [sys.executable, "-m", "mochac.cli"]
    quiet = subprocess.run(
        [*command, "compile", str(net_file), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    verbose = subprocess.run(
        [*command, "-v", "compile", str(net_file), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert quiet.returncode == 1
    assert verbose.returncode == 1
    assert "cli.py" not in quiet.stderr
    assert "Traceback (most recent call last)" in verbose.stderr
    assert "cli.py" in verbose.stderr
    assert "rows_helper.py" in verbose.stderr


def test_concurrent_compiles_into_one_folder(tmp_path):
    net_file = tmp_path / "nets5.py"
    names = ["a_b", "c", "d", "e", "f"]
    net_file.write_text(
        CONTAINER_NET_FILE + "".join(f"net_{name} = make({name!r})\n" for name in names)
    )
    # A first run into another folder fills the compile cache, so that the
    # parallel runs spend their time writing packages rather than compiling.
    assert main(["compile", str(net_file), "-o", str(tmp_path / "warm")]) == 0
    out = tmp_path / "c13"
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "mochac.cli", "compile", str(net_file)]
            + ["-o", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    for run, output in zip(runs, outputs):
        assert run.returncode == 0, output
    assert sorted(path.name for path in out.iterdir()) == names

    script = tmp_path / "check.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            sys.path.insert(0, sys.argv[1])
            from a_b import net
            net.forward()
            print(net.blobs["ip"].shape)
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 3)"


def test_package_rename_collision_names_folder(tmp_path, monkeypatch):
    # Where the folder cannot be locked, a run that creates the package
    # between the two renames of replace_package makes the second one fail.
    from mochac.codegen import module_writer
    from mochac.errors import ConfigError

    folder = tmp_path / "out" / "a_b"
    folder.mkdir(parents=True)
    (folder / "net.json").write_text('{"name": "a_b", "source_file": "x.py"}')
    staging = tmp_path / "out" / ".a_b.staging.tmp"
    staging.mkdir()
    (staging / "net.json").write_text('{"name": "a_b", "source_file": "x.py"}')
    real_rename = os.rename

    def rename_then_race(source, target):
        real_rename(source, target)
        if source == folder:
            folder.mkdir()
            (folder / "net.json").write_text("{}")

    monkeypatch.setattr(module_writer.os, "rename", rename_then_race)
    with pytest.raises(ConfigError, match="another run wrote a package of that name"):
        module_writer.replace_package(staging, folder)
    assert (folder / "net.json").read_text() == "{}"


def test_compile_warns_replacing_other_net(tmp_path, caplog):
    out = tmp_path / "out"
    first = tmp_path / "first.py"
    first.write_text(CONTAINER_NET_FILE + '\nnet = make("a-b")\n')
    second = tmp_path / "second.py"
    second.write_text(CONTAINER_NET_FILE + '\nnet = make("a_b")\n')
    assert main(["compile", str(first), "-o", str(out)]) == 0
    assert main(["compile", str(first), "-o", str(out)]) == 0
    assert "replacing the package" not in caplog.text
    assert main(["compile", str(second), "-o", str(out)]) == 0
    assert (
        f"{out / 'a_b'}: replacing the package of net 'a-b' (from {first}) with "
        f"net 'a_b' (from {second})"
    ) in caplog.text
    meta = json.loads((out / "a_b" / "net.json").read_text())
    assert meta["name"] == "a_b"
    assert meta["source_file"] == str(second.resolve())


def test_compile_logs_parameters_as_package_file(tmp_path, caplog):
    """The package's params.h5 is no snapshot, so the log does not call it one."""
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG, logger="mochac"):
        assert main(["compile", str(net_file), "-o", str(out)]) == 0
    messages = [record.getMessage() for record in caplog.records]
    assert not [message for message in messages if "snapshot" in message]
    wrote = [message for message in messages if "compile-time parameters" in message]
    assert len(wrote) == 1
    assert (
        "wrote the compile-time parameters of net 'tiny-net' (params.h5)" in (wrote[0])
    )
    assert "into the package being written at" in wrote[0]


def test_compile_removes_stale_staging(tmp_path):
    from mochac.durable_files import host_tag

    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    out = tmp_path / "out"
    stale = out / f".tiny_net.{host_tag()}-{exited.pid}.tmp"
    stale.mkdir(parents=True)
    (stale / "net.c").write_text("partial")
    assert main(["compile", str(net_file), "-o", str(out)]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["tiny_net"]


def test_package_name_avoids_module_file(tmp_path):
    """A package named like a module file beside it would shadow that file."""
    from mochac.codegen.module_writer import module_name

    assert module_name("helper", tmp_path) == "helper"
    (tmp_path / "helper.py").write_text("VALUE = 1\n")
    assert module_name("helper", tmp_path) == "helper_net"
    assert module_name("other", tmp_path) == "other"
    (tmp_path / "net_3layers.py").write_text("")
    assert module_name("3layers", tmp_path) == "net_3layers_net"


def test_compile_beside_module_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "helper.py").write_text("VALUE = 1\n")
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE.replace('"tiny-net"', '"helper"'))
    assert main(["compile", str(net_file), "-o", str(out)]) == 0
    assert (out / "helper_net" / "__init__.py").is_file()
    assert not (out / "helper").exists()


def test_compile_beside_own_net_file(tmp_path):
    """The net file itself keeps the package's plain name: importing the
    net's name from that folder is meant to give the compiled package."""
    net_file = tmp_path / "tiny.py"
    net_file.write_text(NET_FILE.replace('"tiny-net"', '"tiny"'))
    assert main(["compile", str(net_file), "-o", str(tmp_path)]) == 0
    assert (tmp_path / "tiny" / "__init__.py").is_file()
    assert not (tmp_path / "tiny_net").exists()


def test_compile_with_log_to_console_logs_once(tmp_path):
    net_file = tmp_path / "net.py"
    net_file.write_text(
        "from mochac import log_to_console\nlog_to_console()\n" + NET_FILE
    )
    out = tmp_path / "build"
    # A subprocess, because pytest's handlers on the root logger turn the
    # command's logging.basicConfig into a no-op.
    result = subprocess.run(
        [sys.executable, "-m", "mochac.cli", "compile", str(net_file), "-o", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stderr.splitlines()
    console_lines = [line for line in lines if ":INFO:mochac.runtime.net:" in line]
    command_lines = [line for line in lines if line.startswith("INFO:mochac.runtime")]
    assert console_lines, result.stderr
    assert command_lines == [], result.stderr
