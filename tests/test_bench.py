"""mochac bench: report structure, and the PyTorch peer's equivalence."""

import json
import logging
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from mochac.bench.nets import cifar10_full, lenet
from mochac.bench.runner import bench, format_bench, inference_layers
from mochac.cli import main


def small_lenet(batch):
    return lenet(batch)


def test_bench_report_without_peer(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    report = bench(small_lenet, batch=4, threads=1, iters=1, repeats=2, peer=False)
    # mochac leaves the wait policy to the user, and the report names it.
    assert report["omp_wait_policy"] == "unset"
    for measure in ("forward", "backward", "train"):
        values = report["mochac"][measure]
        assert values["rounds"] == 2
        assert values["min_ms"] <= values["median_ms"] <= values["max_ms"]
    assert report["mochac"]["forward"]["median_ms"] > 0
    assert report["compile"]["cold_s"] > 0
    assert report["compile"]["warm_s"] > 0
    assert "train it/s" in format_bench(report)
    # LeNet runs conv1 (forward, filter gradient), conv2 (three GEMMs) and two
    # inner products (three each) per training iteration.
    assert report["blas"]["gemms_per_iteration"] == 11
    assert report["blas"]["gemm_ms"] > 0
    assert report["blas"]["share_of_train"] > 0
    for measure in ("infer", "latency"):
        assert report["mochac"][measure]["median_ms"] > 0
    assert "latency, batch 1: mochac" in format_bench(report)


def test_bench_builds_nets_with_passes(monkeypatch):
    """bench() hands opt_level and disable to every mochac net it builds,
    the timed nets and the compile-time builds, and records them."""
    from mochac.bench import runner

    passes = []
    real_net = runner.Net

    def recording_net(*args, **kwargs):
        passes.append((kwargs.get("opt_level"), kwargs.get("disable")))
        return real_net(*args, **kwargs)

    monkeypatch.setattr(runner, "Net", recording_net)
    report = bench(
        small_lenet,
        batch=2,
        threads=1,
        iters=1,
        repeats=1,
        peer=False,
        disable=("plan_memory",),
    )
    assert report["opt_level"] == 1
    assert report["disable"] == ["plan_memory"]
    # The train, inference and latency nets, and two compile-time builds.
    assert len(passes) == 5
    assert set(passes) == {(1, ("plan_memory",))}


def test_bench_pass_options_reach_bench(monkeypatch):
    options = []

    def timed(factory, **kwargs):
        options.append(kwargs)
        return {"mochac": {"train": {"median_ms": 1.0}}}

    monkeypatch.setattr("mochac.bench.runner.bench", timed)
    monkeypatch.setattr("mochac.bench.runner.format_bench", lambda report: "TABLE")
    args = ["bench", "lenet", "--disable", "plan_memory", "--disable", "fuse_neurons"]
    assert main([*args, "-O1"]) == 0
    assert main(["bench", "lenet", "-O0"]) == 0
    assert options[0]["opt_level"] == 1
    assert options[0]["disable"] == ("plan_memory", "fuse_neurons")
    assert options[1]["opt_level"] == 0
    assert options[1]["disable"] == ()


def test_bench_rejects_unknown_pass(monkeypatch, caplog):
    def timed(factory, **kwargs):
        raise AssertionError("the pass options must be checked before timing")

    monkeypatch.setattr("mochac.bench.runner.bench", timed)
    assert main(["bench", "lenet", "--disable", "fuse_neuron"]) == 2
    assert "(did you mean 'fuse_neurons'?)" in caplog.text


def test_bench_o0_and_o1_exclusive(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["bench", "lenet", "-O0", "-O1"])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_bench_table_notes_noisy_rounds():
    report = bench(small_lenet, batch=2, threads=1, iters=1, repeats=2, peer=False)
    for values in report["mochac"].values():
        if isinstance(values, dict) and "spread_ms" in values:
            values["spread_ms"] = 0.0
    assert "note:" not in format_bench(report)

    # A backward pass shorter than the noise of the forward rounds comes out
    # negative, because it is the forward and backward time minus the forward.
    report["mochac"]["backward"]["median_ms"] = -14.3
    report["mochac"]["train"]["spread_ms"] = 2 * report["mochac"]["train"]["median_ms"]
    table = format_bench(report)
    assert "note: the rounds of mochac backward, mochac train vary" in table
    assert "--iters and --repeats" in table


def test_bench_report_records_environment(monkeypatch):
    from mochac.version import __version__

    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    monkeypatch.delenv("OPENBLAS_L2_SIZE", raising=False)
    report = bench(small_lenet, batch=2, threads=1, iters=1, repeats=1, peer=False)
    settings = report["environment"]
    assert settings["mochac"] == __version__
    assert settings["numpy"] == np.__version__
    assert settings["cpu"]
    assert settings["openblas_coretype"] == "Haswell"
    assert settings["openblas_l2_size"] == "unset"
    assert "OPENBLAS_CORETYPE Haswell" in format_bench(report)


def test_bench_report_records_peer_threads():
    torch = pytest.importorskip("torch")
    report = bench(
        small_lenet,
        batch=2,
        threads=1,
        iters=1,
        repeats=1,
        torch_compile=False,
        inference=False,
    )
    eager = report["peers"]["torch_eager"]
    assert eager["version"] == torch.__version__
    assert eager["threads"] == 1
    assert eager["zero_grad_set_to_none"] is True
    assert f"torch_eager {torch.__version__} on 1 thread(s)" in format_bench(report)


def test_bench_command_json(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "lenet", "--batch", "2", "--iters", "1", "--repeats", "1"]
    assert main([*args, "--no-peer", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["net"] == "lenet"
    assert report["batch"] == 2


def test_torch_peer_matches_objective():
    torch = pytest.importorskip("torch")
    from mochac import CPUBackend, Net
    from mochac.bench.torch_peer import TorchNet

    net = Net("peer", CPUBackend(seed=0), lenet(8))
    objective = net.forward()
    peer = TorchNet(net)
    with torch.no_grad():
        loss = float(peer.loss(peer.x, peer.y))
    np.testing.assert_allclose(loss, objective, rtol=1e-4)


def test_gemm_shapes_of_lenet():
    from mochac import CPUBackend, Net
    from mochac.bench.blas_share import gemm_shapes

    net = Net("shapes", CPUBackend(seed=0), lenet(64))
    shapes = gemm_shapes(net)
    # conv2 forward: 50 filters x (64 * 8 * 8) columns x (20 * 5 * 5) taps.
    assert (False, False, 50, 4096, 500) in shapes
    # ip1 weight gradient: 500 outputs x 800 inputs over the batch of 64.
    assert (True, False, 500, 800, 64) in shapes
    # conv1's bottom is the data, which takes no gradient.
    assert (True, False, 25, 36864, 20) not in shapes


def test_bench_profile_lists_layers(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "lenet", "--batch", "2", "--iters", "1", "--repeats", "1"]
    assert main([*args, "--no-peer", "--profile", "--json", str(out)]) == 0
    # Without a peer, the table has no torch columns.
    header = next(
        line for line in capsys.readouterr().out.splitlines() if "mochac fwd" in line
    )
    assert header.split() == ["layer", "mochac", "fwd", "mochac", "bwd"]
    profile = json.loads(out.read_text())["profile"]["mochac"]
    assert list(profile) == ["conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "loss"]
    assert profile["conv2"]["forward_ms"] > 0
    assert profile["conv2"]["backward_ms"] > 0


def test_torch_peer_matches_cifar10_objective_and_scores():
    torch = pytest.importorskip("torch")
    from mochac import CPUBackend, Net
    from mochac.bench.torch_peer import TorchNet

    backend = CPUBackend(seed=0)
    net = Net("peer-cifar", backend, cifar10_full(4))
    objective = net.forward()
    peer = TorchNet(net)
    with torch.no_grad():
        loss = float(peer.loss(peer.x, peer.y))
        scores = peer.outputs(peer.x).numpy()
    np.testing.assert_allclose(loss, objective, rtol=1e-4)
    # The inference net (no loss) gives the same scores as the peer.
    infer = Net(
        "peer-cifar-infer", CPUBackend(seed=0), inference_layers(cifar10_full, 4)
    )
    infer.forward()
    np.testing.assert_allclose(infer.blobs["ip1"], scores, rtol=1e-3, atol=1e-5)


def test_cifar10_bench_net_builds():
    from mochac import CPUBackend, Net

    net = Net("cifar-shapes", CPUBackend(seed=0), cifar10_full(2))
    assert net.ir.blobs["pool3"].shape == (2, 64, 4, 4)
    assert np.isfinite(net.forward())


def test_gemm_shapes_of_direct_convolutions():
    from mochac import CPUBackend, Net
    from mochac.bench.blas_share import gemm_shapes

    net = Net("shapes-cifar", CPUBackend(seed=0), cifar10_full(64))
    direct = gemm_shapes(net, direct=True)
    # conv1 (forward, filter gradient), conv2 and conv3 (three GEMMs each).
    assert len(direct) == 8
    # conv2 forward as im2col would run it: 32 filters x (64 * 16 * 16) x 800.
    assert (False, False, 32, 16384, 800) in direct
    # ip1: forward, weight gradient and bottom diff stay BLAS calls.
    assert len(gemm_shapes(net, direct=False)) == 3
    assert len(gemm_shapes(net)) == 11


BATCH_8_NET_FILE = """
import numpy as np
from mochac import (
    CPUBackend, InnerProductLayer, MemoryDataLayer, Net, SoftmaxLossLayer,
)

x = np.random.default_rng(0).random((32, 3, 4, 4), dtype=np.float32)
y = np.zeros((32, 1), np.float32)
data = MemoryDataLayer(name="data", batch_size=8, data=[x, y])
ip = InnerProductLayer(name="ip", output_dim=4, bottoms=["data"], tops=["ip"])
loss = SoftmaxLossLayer(name="loss", bottoms=["ip", "label"])
net = Net("batch-8", CPUBackend(), [data, ip, loss])
"""


def bench_file(tmp_path, *options):
    net_file = tmp_path / "net.py"
    net_file.write_text(BATCH_8_NET_FILE)
    out = tmp_path / "bench.json"
    args = ["bench", str(net_file), "--iters", "1", "--repeats", "1", "--no-peer"]
    assert main([*args, "--json", str(out), *options]) == 0
    return json.loads(out.read_text())


def test_bench_file_reports_its_batch(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="mochac"):
        report = bench_file(tmp_path)
    assert report["batch"] == 8
    assert capsys.readouterr().out.startswith("batch 8,")
    assert "timing net 'batch-8'" in caplog.text


def test_bench_file_batch_option_rebuilds(tmp_path, capsys, monkeypatch):
    from mochac.bench import runner

    built = []
    original = runner.check_batch

    def record(net, batch):
        built.append(net.blobs["data"].shape[0])
        original(net, batch)

    monkeypatch.setattr(runner, "check_batch", record)
    report = bench_file(tmp_path, "--batch", "16")
    assert report["batch"] == 16
    assert built == [16]
    assert capsys.readouterr().out.startswith("batch 16,")


def test_bench_file_with_hdf5_output(tmp_path, monkeypatch, caplog):
    """The import's net keeps the output file open, which each timed net
    needs."""
    monkeypatch.chdir(tmp_path)
    source = BATCH_8_NET_FILE.replace(
        "Net, SoftmaxLossLayer,", "Net, SoftmaxLossLayer, HDF5OutputLayer,"
    ).replace(
        "[data, ip, loss]",
        "[data, ip, loss, HDF5OutputLayer(name='out', filename='scores.h5', "
        "force_overwrite=True, bottoms=['ip'])]",
    )
    (tmp_path / "net.py").write_text(source)
    args = ["bench", "net.py", "--iters", "1", "--repeats", "1", "--no-peer"]
    with caplog.at_level(logging.INFO, logger="mochac"):
        assert main([*args, "--json", "bench.json"]) == 0
    assert json.loads((tmp_path / "bench.json").read_text())["batch"] == 8
    assert "the output layers 'out' are left out of the timed net" in caplog.text


def test_bench_rejects_factory_ignoring_batch():
    from mochac.errors import ConfigError

    with pytest.raises(ConfigError, match="serve batches of 4"):
        bench(lambda batch: lenet(4), batch=8, iters=1, repeats=1, peer=False)


def test_with_batch_size_sets_input_layers():
    from mochac.bench.nets import batch_sizes, with_batch_size
    from mochac.layers.random_normal import RandomNormalLayer

    noise = RandomNormalLayer(
        name="noise", tops=["a", "b"], output_dims=(3,), batch_sizes=(2, 2)
    )
    layers = [*lenet(4), noise]
    changed = with_batch_size(layers, 16)
    assert batch_sizes(changed) == {"data": (16,), "noise": (16, 16)}
    assert batch_sizes(layers)["data"] == (4,)
    # Layers other than inputs stay the same objects.
    assert changed[1] is layers[1]


@pytest.mark.parametrize("option", ["--iters", "--repeats", "--batch", "--threads"])
def test_bench_rejects_zero_counts(option, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["bench", "lenet", option, "0"])
    assert caught.value.code == 2
    assert f"argument {option}: must be at least 1, got 0" in capsys.readouterr().err


def test_bench_checks_json_below_file_first(tmp_path, caplog, monkeypatch):
    def timed(*args, **kwargs):
        raise AssertionError("the --json path must be checked before the timing")

    monkeypatch.setattr("mochac.bench.runner.bench", timed)
    (tmp_path / "afile").write_text("a file")
    out = tmp_path / "afile" / "bench.json"
    assert main(["bench", "lenet", "--json", str(out)]) == 2
    expected = f"--json {out}: {tmp_path / 'afile'} is not a folder, so no file"
    assert expected in caplog.text


def stand_in_bench(monkeypatch):
    """Replace the timing of `mochac bench` with a fixed report and table."""

    def timed(factory, **options):
        return {"mochac": {"train": {"median_ms": 1.0}}}

    monkeypatch.setattr("mochac.bench.runner.bench", timed)
    monkeypatch.setattr("mochac.bench.runner.format_bench", lambda report: "TABLE")


def test_bench_creates_json_folder(tmp_path, monkeypatch):
    stand_in_bench(monkeypatch)
    out = tmp_path / "missing" / "results" / "bench.json"
    assert main(["bench", "lenet", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["net"] == "lenet"
    assert report["mochac"]["train"]["median_ms"] == 1.0


def test_bench_json_to_stdout(tmp_path, capsys, monkeypatch):
    stand_in_bench(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "lenet", "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["net"] == "lenet"
    # The table goes to stderr, so standard output is the JSON alone.
    assert "TABLE" in captured.err
    assert not (tmp_path / "-").exists()


def test_bench_unknown_net_names_the_choices(tmp_path, caplog):
    missing = tmp_path / "lenett"
    assert main(["bench", str(missing)]) == 2
    expected = (
        f"{missing} is neither a built-in net (lenet, cifar10) nor a file; pass "
        "one of those names, or the path of a Python file"
    )
    assert expected in caplog.text


def test_bench_net_file_without_loss(tmp_path, caplog):
    net_file = tmp_path / "deploy.py"
    net_file.write_text(
        "import numpy as np\n"
        "from mochac import CPUBackend, InnerProductLayer, MemoryDataLayer, Net\n"
        "x = np.zeros((2, 6))\n"
        "data = MemoryDataLayer(name='data', tops=['data'], batch_size=2, data=[x])\n"
        "ip = InnerProductLayer(name='ip', output_dim=3, bottoms=['data'], "
        "tops=['ip'])\n"
        "deploy = Net('deploy', CPUBackend(), [data, ip])\n"
    )
    assert main(["bench", str(net_file)]) == 2
    expected = (
        f"{net_file} defines no Net with a loss to train (its nets without one: "
        "'deploy'); mochac bench times training, so add a loss layer"
    )
    assert expected in caplog.text


def test_bench_without_torch_names_cpu_build(monkeypatch, caplog):
    from mochac.bench.runner import torch_measures

    monkeypatch.setitem(sys.modules, "torch", None)
    caplog.set_level(logging.WARNING, logger="mochac.bench.runner")
    assert torch_measures(None, 1, 1, True, True, {}, {}, {}) == {}
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    message = record.getMessage()
    assert "PyTorch is not installed, so no peer is timed" in message
    expected = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    assert expected in message
    assert "pass --no-peer to time mochac alone" in message


def test_gpu_bench_with_cpu_torch_warns(monkeypatch, caplog):
    from mochac.bench.gpu_runner import torch_cuda_measures

    cpu_torch = types.SimpleNamespace(
        __version__="2.13.0+cpu",
        cuda=types.SimpleNamespace(is_available=lambda: False),
        version=types.SimpleNamespace(cuda=None),
    )
    monkeypatch.setitem(sys.modules, "torch", cpu_torch)
    caplog.set_level(logging.WARNING, logger="mochac.bench.gpu_runner")
    assert torch_cuda_measures(None, 1) == ({}, {})
    (record,) = [r for r in caplog.records if r.levelno >= logging.WARNING]
    message = record.getMessage()
    assert "PyTorch 2.13.0+cpu is a CPU build, so no peer is timed" in message
    assert "install a CUDA build" in message
    assert "--no-peer" in message


@pytest.mark.parametrize(
    "neuron",
    ["Identity", "ReLU", "ReLU-epsilon", "LReLU", "Sigmoid", "Tanh", "Exponential"],
)
def test_torch_peer_neurons(neuron):
    torch = pytest.importorskip("torch")
    from mochac import CPUBackend, InnerProductLayer, Net, Neurons, SoftmaxLossLayer
    from mochac.bench.torch_peer import TorchNet

    if neuron == "ReLU-epsilon":
        chosen = Neurons.ReLU(epsilon=0.1)
    else:
        chosen = getattr(Neurons, neuron)()
    layers = [
        *lenet(8)[:1],
        InnerProductLayer(
            name="hidden", output_dim=16, neuron=chosen, bottoms=["data"], tops=["h"]
        ),
        InnerProductLayer(name="scores", output_dim=10, bottoms=["h"], tops=["ip"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ]
    net = Net("peer-neuron", CPUBackend(seed=0), layers)
    objective = net.forward()
    peer = TorchNet(net)
    with torch.no_grad():
        loss = float(peer.loss(peer.x, peer.y))
    np.testing.assert_allclose(loss, objective, rtol=1e-4)


def test_torch_peer_unknown_layer_suggests_no_peer():
    pytest.importorskip("torch")
    from mochac import (
        ConfigError,
        CPUBackend,
        InnerProductLayer,
        Net,
        PowerLayer,
        SoftmaxLossLayer,
    )
    from mochac.bench.torch_peer import TorchNet

    layers = [
        *lenet(8)[:1],
        PowerLayer(name="square", power=2, bottoms=["data"], tops=["sq"]),
        InnerProductLayer(name="scores", output_dim=10, bottoms=["sq"], tops=["ip"]),
        SoftmaxLossLayer(name="loss", bottoms=["ip", "label"]),
    ]
    net = Net("peer-power", CPUBackend(seed=0), layers)
    with pytest.raises(
        ConfigError, match="PowerLayer; time mochac alone with --no-peer"
    ):
        TorchNet(net)


def test_torch_peer_named_data_top():
    torch = pytest.importorskip("torch")
    from mochac import CPUBackend, MemoryDataLayer, Net
    from mochac.bench.torch_peer import TorchNet

    source = lenet(8)[0]
    images, labels = source.data
    conv1, *rest = lenet(8)[1:]
    layers = [
        MemoryDataLayer(
            name="digits", tops=["images", "label"], batch_size=8, data=[images, labels]
        ),
        conv1.replace(bottoms=["images"]),
        *rest,
    ]
    net = Net("peer-named", CPUBackend(seed=0), layers)
    objective = net.forward()
    peer = TorchNet(net)
    with torch.no_grad():
        loss = float(peer.loss(peer.x, peer.y))
    np.testing.assert_allclose(loss, objective, rtol=1e-4)


def test_interleaved_rounds_warm_up_untimed(monkeypatch):
    """A whole round of calls runs before the clock is first read."""
    from mochac.bench import runner

    calls = []
    clock_reads = []

    def clock():
        clock_reads.append(len(calls))
        return float(len(clock_reads))

    monkeypatch.setattr(runner.time, "perf_counter", clock)
    samples = runner.interleaved_rounds({"f": (lambda: calls.append(None), 3)}, 2)
    assert len(calls) == 9
    # Start and end of each timed round, counted in calls made so far.
    assert clock_reads == [3, 6, 6, 9]
    assert len(samples["f"]) == 2


def test_interleaved_rounds_context_and_warmup(monkeypatch):
    """An entry's context is entered around its warm-up and each of its
    rounds, outside the clock, and ``warmup_calls`` sets the untimed calls."""
    import contextlib

    from mochac.bench import runner

    events = []

    def clock():
        events.append("clock")
        return float(len(events))

    @contextlib.contextmanager
    def context():
        events.append("enter")
        yield
        events.append("exit")

    monkeypatch.setattr(runner.time, "perf_counter", clock)
    functions = {
        "f": (lambda: events.append("f"), 2, context),
        "g": (lambda: events.append("g"), 1),
    }
    samples = runner.interleaved_rounds(functions, 2, warmup_calls=3)
    warmup = ["enter", "f", "f", "f", "exit", "g", "g", "g"]
    one_round = ["enter", "clock", "f", "f", "clock", "exit", "clock", "g", "clock"]
    assert events == warmup + one_round + one_round
    assert len(samples["f"]) == 2
    assert len(samples["g"]) == 2


def test_torch_peer_zero_grad_sets_none():
    """The peer's training step clears gradients as PyTorch's zero_grad()
    does by default, dropping them instead of zeroing them in place."""
    import inspect

    torch = pytest.importorskip("torch")
    from mochac import CPUBackend, Net
    from mochac.bench import torch_peer

    net = Net("peer", CPUBackend(seed=0), lenet(4))
    peer = torch_peer.TorchNet(net)
    parameters = list(peer.model.parameters())
    gradients_at_loss = []

    def loss(x, y):
        gradients_at_loss.append([parameter.grad for parameter in parameters])
        return peer.loss(x, y)

    peer.train_step(loss)
    peer.train_step(loss)
    # The first step's backward left gradients, and the second step's
    # zero_grad dropped them before its forward pass.
    assert all(gradient is None for gradient in gradients_at_loss[1])
    assert all(parameter.grad is not None for parameter in parameters)
    default = inspect.signature(torch.optim.Optimizer.zero_grad).parameters
    assert torch_peer.ZERO_GRAD_SET_TO_NONE is default["set_to_none"].default


def test_torch_peer_backward_writes_gradients(monkeypatch):
    """The peer's forward-and-backward measure clears the gradients first,
    so repeated calls leave one pass's gradients, not their sum."""
    torch = pytest.importorskip("torch")
    from mochac import CPUBackend, Net
    from mochac.bench import runner, torch_peer

    peers = []

    class RecordedNet(torch_peer.TorchNet):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            peers.append(self)

    monkeypatch.setattr(torch_peer, "TorchNet", RecordedNet)
    net = Net("peer-backward", CPUBackend(seed=0), lenet(4))
    measures = runner.torch_measures(net, 1, 1, False, False, {}, {}, {})
    both = measures["torch_eager"]["forward_backward"][0]
    peer = peers[0]
    peer.loss(peer.x, peer.y).backward()
    once = [parameter.grad.clone() for parameter in peer.model.parameters()]
    both()
    both()
    for parameter, expected in zip(peer.model.parameters(), once):
        torch.testing.assert_close(parameter.grad, expected)


def test_backward_difference_keeps_noise_below_zero():
    from mochac.bench.runner import _difference

    assert _difference([1.0, 2.0], [1.5, 0.5]) == [-0.5, 1.5]


def test_bench_json_of_net_file_changing_directory(tmp_path, monkeypatch):
    """--json names a file in the directory the command started in, also
    when the net file changes directory."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "net.py").write_text(
        BATCH_8_NET_FILE + '\nimport os\nos.chdir("elsewhere")\n'
    )
    monkeypatch.chdir(tmp_path)
    args = ["bench", "net.py", "--iters", "1", "--repeats", "1", "--no-peer"]
    assert main([*args, "--json", "bench.json"]) == 0
    assert json.loads((tmp_path / "bench.json").read_text())["batch"] == 8
    assert not (tmp_path / "elsewhere" / "bench.json").exists()


DEVICE_CHECK = (
    Path(__file__).resolve().parent.parent / "benchmarks/cuda_device_check.sh"
)


def test_device_check_fits_one_call():
    """benchmarks/cuda_device_check.sh runs as one 600 s call of the device
    tool, which returns at most 8 files from $OUT, named with letters,
    digits, '.', '_' and '-' alone. Its bounded steps leave 40 s of the
    call for the wheel install and the version checks, which have none."""
    script = DEVICE_CHECK.read_text()
    limits = re.findall(r"timeout (?:-k (\d+) )?(\d+) ", script)
    assert len(limits) == 3
    # The compute-sanitizer step runs once per tool, memcheck and racecheck.
    pytest_s, bench_s, sanitizer_s = (int(kill or 0) + int(s) for kill, s in limits)
    assert pytest_s + bench_s + 2 * sanitizer_s <= 560
    outputs = set(re.findall(r'"\$OUT/([^"]+)"', script))
    outputs |= {f"{tool}.log" for tool in ("memcheck", "racecheck")}
    outputs.discard("$tool.log")
    assert len(outputs) <= 8
    for name in outputs:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name), name


def test_bench_speedup_of_noisy_backward(monkeypatch):
    from mochac.bench import runner

    def fake_peer_measures(net, threads, iters, torch_compile, inference, *details):
        versions, _compile_seconds, peer_threads = details
        versions["fake_peer"] = "0"
        peer_threads["fake_peer"] = threads
        measures = ("forward", "forward_backward", "train")
        return {"fake_peer": {measure: (lambda: None, iters) for measure in measures}}

    # Seconds per call: mochac's forward and backward round came out shorter
    # than its forward round, so its backward median is negative.
    seconds = {
        ("mochac", "forward"): [0.002, 0.002],
        ("mochac", "forward_backward"): [0.001, 0.001],
        ("mochac", "train"): [0.004, 0.004],
        ("fake_peer", "forward"): [0.004, 0.004],
        ("fake_peer", "forward_backward"): [0.010, 0.010],
        ("fake_peer", "train"): [0.012, 0.012],
    }
    monkeypatch.setattr(runner, "torch_measures", fake_peer_measures)
    monkeypatch.setattr(
        runner, "interleaved_rounds", lambda functions, repeats: seconds
    )
    report = bench(small_lenet, batch=2, threads=1, iters=1, repeats=2, inference=False)
    peer = report["peers"]["fake_peer"]
    assert report["mochac"]["backward"]["median_ms"] == pytest.approx(-1.0)
    assert peer["backward"]["speedup_of_mochac"] is None
    assert peer["forward"]["speedup_of_mochac"] == pytest.approx(2.0)
    assert peer["train"]["speedup_of_mochac"] == pytest.approx(3.0)
    assert "mochac speed-up over fake_peer: forward 2.00x, train 3.00x" in (
        format_bench(report)
    )
