"""`mochac compile`: one importable module per net, loaded without compiling."""

import json
import os
import runpy
import subprocess
import sys
import textwrap

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


def test_compile_without_nets_fails(tmp_path, caplog):
    net_file = tmp_path / "empty.py"
    net_file.write_text("x = 1\n")
    assert main(["compile", str(net_file), "-o", str(tmp_path / "out")]) == 2
    assert "defines no Net" in caplog.text


def test_compile_missing_file(tmp_path, caplog):
    assert main(["compile", str(tmp_path / "absent.py")]) == 2
    assert "file not found" in caplog.text


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
    assert main(args) == 1
    assert "unknown pass name" in caplog.text


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
    assert str(sources[0]) in capsys.readouterr().out


def test_bench_cuda_backend_without_device_fails_clearly(caplog):
    try:
        import cupy

        cupy.cuda.runtime.getDeviceCount()
        pytest.skip("a CUDA device is usable here")
    except Exception:
        pass
    args = ["bench", "lenet", "--backend", "cuda", "--iters", "1", "--repeats", "1"]
    assert main(args) == 1
    assert "mochac[cuda]" in caplog.text or "CUDA device" in caplog.text


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


def test_compile_rejects_package_name_clash(tmp_path, caplog):
    net_file = tmp_path / "nets.py"
    net_file.write_text(
        NET_FILE + '\nother = Net("Tiny Net", backend, [data, ip, prob])\n'
    )
    assert main(["compile", str(net_file), "-o", str(tmp_path / "out")]) == 2
    assert "'tiny-net' and 'Tiny Net' would both be written as package" in caplog.text
    assert not (tmp_path / "out").exists()


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


def test_compile_syntax_error_names_line(tmp_path, caplog):
    net_file = tmp_path / "broken.py"
    net_file.write_text("from mochac import *\nnet = Net('x', CPUBackend(), [\n")
    assert main(["compile", str(net_file), "-o", str(tmp_path / "out")]) == 2
    assert f"{net_file}, line 2: SyntaxError: '[' was never closed" in caplog.text
    assert "Traceback" not in caplog.text


def test_compile_checks_dot_folder_first(tmp_path, caplog):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    out = tmp_path / "out"
    dot = tmp_path / "missing" / "g.dot"
    assert main(["compile", str(net_file), "-o", str(out), "--dot", str(dot)]) == 2
    assert f"--dot {dot}: folder {dot.parent} does not exist" in caplog.text
    # The check comes before any module is written.
    assert not out.exists()


def test_compile_rejects_report_json_folder(tmp_path, caplog):
    net_file = tmp_path / "net.py"
    net_file.write_text(NET_FILE)
    args = ["compile", str(net_file), "-o", str(tmp_path / "out")]
    assert main([*args, "--report-json", str(tmp_path)]) == 2
    assert f"--report-json {tmp_path}: is a folder; name a file" in caplog.text


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
    assert main(["compile", str(net_file), "-o", str(tmp_path / "afile" / "sub")]) == 1
    assert "check the path and its permissions" in caplog.text


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
