"""GPUNet's own code, run on the host with a stand-in for CuPy.

tests/host_cupy.py replaces CuPy, so GPUBackend, GPUNet's allocation, step
binding, data staging, status decoding and training step run here against
the CPU backend. The same checks run on a real device in
tests/test_cuda_device.py.
"""

import dataclasses
import gc
import logging
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import host_cupy
import numpy as np
import pytest
import test_cuda_device as device_tests
from cuda_nets import NETS

from mochac.bench.nets import lenet
from mochac.errors import CompileError, ConfigError, NotFoundError
from mochac.layers.output import HDF5OutputLayer
from mochac.runtime import cublas_direct, gpu_net
from mochac.runtime.gpu_backend import GPUBackend
from mochac.runtime.gpu_net import GPUNet

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None, reason="g++ is needed to compile kernels for the host"
)


@pytest.fixture
def cupy(monkeypatch):
    """Install the host stand-in for CuPy and return it."""
    return host_cupy.install(monkeypatch)


@pytest.mark.parametrize("name", sorted(NETS))
def test_host_gpunet_every_layer(cupy, name):
    device_tests.test_every_layer_matches_cpu(cupy, name)


def test_host_gpunet_lenet_iterations(cupy):
    device_tests.test_lenet_iterations_match_cpu(cupy)


@pytest.mark.parametrize(
    "method", [device_tests.SGD, device_tests.Nesterov, device_tests.Adam]
)
def test_host_gpunet_solver(cupy, method):
    device_tests.test_solver_trains_like_cpu(cupy, method)


@pytest.mark.parametrize("frozen", [(), ("conv",)])
@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam"])
def test_host_gpunet_device_update(cupy, kind, frozen):
    device_tests.test_device_update_matches_cpu(cupy, kind, frozen)


@pytest.mark.parametrize("learn_weights", [False, True])
def test_host_gpunet_tied_weight_training(cupy, learn_weights):
    device_tests.test_tied_weight_training_matches_cpu(cupy, learn_weights)


def test_host_gpunet_nan_loss(cupy):
    device_tests.test_nan_loss_leaves_parameters(cupy)


def test_host_gpunet_bad_label(cupy):
    device_tests.test_bad_label_raises_data_error(cupy)


def test_host_gpunet_bad_label_train_step(cupy):
    device_tests.test_bad_label_in_train_step_leaves_parameters(cupy)


def test_host_gpunet_arena_is_planned(cupy):
    gpu = GPUNet("lenet", GPUBackend(seed=1), lenet(4))
    assert gpu.plan is not None
    assert gpu.arena.nbytes == gpu.plan.arena_bytes
    assert "ip1" not in gpu.blobs
    assert isinstance(gpu.params["ip1"]["weight"], host_cupy.DeviceArray)
    assert np.all(gpu.states["loss"] == 0)


def test_host_gpunet_unknown_names_not_found(cupy):
    from mochac.mocha_api import freeze, get_layer, unfreeze

    with pytest.raises(NotFoundError, match="keep= names unknown blob.s. 'conv3'"):
        GPUNet("lenet", GPUBackend(seed=1), lenet(4), keep=["conv3"])
    net = GPUNet("lenet", GPUBackend(seed=1), lenet(4))
    lookups = [
        lambda name: get_layer(net, name),
        net.get_layer,
        lambda name: freeze(net, name),
        lambda name: unfreeze(net, name),
        net.forward_layer,
        net.data_source,
    ]
    for lookup in lookups:
        with pytest.raises(NotFoundError, match="layer named 'conv3'"):
            lookup("conv3")
    with pytest.raises(NotFoundError) as caught:
        net.get_layer("conv3")
    assert "'conv3' (close matches: 'conv2', 'conv1')" in str(caught.value)
    assert not getattr(net, "frozen_layers", None)


def test_host_gpunet_compile_error_keeps_source(cupy, monkeypatch, tmp_path):
    monkeypatch.setenv("MOCHAC_CACHE_DIR", str(tmp_path))
    render = gpu_net.render_cuda

    def broken_render(ir):
        program = render(ir)
        source = program.source + "\n#error broken on purpose\n"
        return dataclasses.replace(program, source=source)

    monkeypatch.setattr(gpu_net, "render_cuda", broken_render)
    with pytest.raises(CompileError, match="NVRTC failed") as caught:
        GPUNet("lenet", GPUBackend(seed=1), lenet(4))
    kept = Path(caught.value.source_path)
    assert kept.parent == tmp_path
    assert kept.read_text().endswith("#error broken on purpose\n")
    assert "broken on purpose" in caught.value.output


def test_host_gpunet_outputs_fetch_bottoms(cupy, monkeypatch):
    """An output layer's step copies only its bottoms to the host."""
    from mochac.layers import MemoryOutputLayer
    from mochac.runtime.solver import SGD

    fetched = []
    get = host_cupy.DeviceArray.get

    def recording_get(self, stream=None, out=None):
        fetched.append(self)
        return get(self, stream=stream, out=out)

    monkeypatch.setattr(host_cupy.DeviceArray, "get", recording_get)
    layers = [*lenet(4), MemoryOutputLayer(name="keep", bottoms=["ip2"])]
    net = GPUNet("outputs", GPUBackend(seed=1), layers)
    net.forward()
    net.train_step(SGD(), 0.01, 0.9, 0.0, 0)
    blob_ids = {id(view): name for name, view in net.blobs.items()}
    fetched_blobs = [blob_ids[id(array)] for array in fetched if id(array) in blob_ids]
    assert fetched_blobs == ["ip2", "ip2"]
    collected = net.output_states["keep"].outputs[0]
    assert len(collected) == 2
    assert collected[0].shape == (4, 10)


def test_net_with_gpu_backend_builds_gpunet(cupy):
    from mochac import Net

    net = Net("lenet", GPUBackend(seed=1), lenet(4))
    assert isinstance(net, GPUNet)
    assert np.isfinite(net.forward())


def test_net_gpu_backend_build_log_level(cupy, caplog):
    # mochac bench passes _build_log_level to Net, and Net(...) builds a
    # GPUNet for a GPU backend, so GPUNet takes the same argument.
    from mochac import Net

    caplog.set_level(logging.DEBUG, logger="mochac")
    net = Net("lenet", GPUBackend(seed=1), lenet(4), _build_log_level=logging.DEBUG)
    assert isinstance(net, GPUNet)
    summaries = [
        record
        for record in caplog.records
        if "compiled layers on CUDA device" in record.getMessage()
    ]
    assert len(summaries) == 1
    assert summaries[0].levelno == logging.DEBUG


def test_host_gpunet_caffe_import_initializes_missing(cupy, tmp_path):
    """A Caffe model without a bias leaves it to the layer's initializer,
    whose host values reach the device array through the backend."""
    from test_caffe_import import caffe_blobs, write_model

    from mochac import ConstantInitializer, InnerProductLayer, MemoryDataLayer
    from mochac.caffe import load_caffe_hdf5

    x = np.ones((2, 64))
    layers = [
        MemoryDataLayer(name="data", batch_size=2, data=[x, np.zeros((2, 1))]),
        InnerProductLayer(
            name="ip1",
            output_dim=5,
            bias_init=ConstantInitializer(0.5),
            bottoms=["data"],
            tops=["ip1"],
        ),
    ]
    gpu = GPUNet("caffe", GPUBackend(seed=1), layers)
    gpu.params["ip1"]["bias"][...] = 7.0
    blobs = caffe_blobs()
    del blobs["ip1___bias"], blobs["conv1___filter"], blobs["conv1___bias"]
    result = load_caffe_hdf5(gpu, write_model(tmp_path / "model.hdf5", blobs))
    assert result["initialized"] == ["ip1___bias"]
    np.testing.assert_array_equal(gpu.params["ip1"]["bias"].get(), np.full(5, 0.5))
    weight = blobs["ip1___weight"].astype(np.float32).reshape(5, 64)
    np.testing.assert_array_equal(gpu.params["ip1"]["weight"].get(), weight)


def test_host_gpunet_read_ahead_batches(cupy, tmp_path):
    device_tests.test_read_ahead_serves_the_cpu_batches(cupy, tmp_path)


def test_host_gpunet_first_batch(cupy):
    device_tests.test_first_batch_reaches_data_top(cupy)


def test_host_gpunet_read_ahead_epochs(cupy, tmp_path):
    device_tests.test_epoch_breaks_and_validation_as_on_cpu(cupy, tmp_path)


def test_host_gpunet_read_ahead_changed_arrays(cupy, tmp_path):
    device_tests.test_changed_arrays_reach_the_next_step(cupy, tmp_path)


def test_host_gpunet_replaced_arrays_other_count(cupy, tmp_path):
    device_tests.test_replaced_arrays_other_count_reach_next_step(cupy, tmp_path)


def test_host_gpunet_arrays_replaced_through_kept_source(cupy, tmp_path):
    device_tests.test_arrays_replaced_through_kept_source(cupy, tmp_path)


def test_host_gpunet_snapshot_after_arrays_replaced(cupy, tmp_path):
    device_tests.test_snapshot_after_arrays_replaced(cupy, tmp_path)


def test_host_gpunet_read_ahead_failure(cupy, tmp_path):
    device_tests.test_failed_read_ahead_raises_at_its_own_step(cupy, tmp_path)


def test_host_gpunet_read_ahead_second_source_failure(cupy):
    device_tests.test_failed_second_source_as_on_cpu(cupy)


def test_host_gpunet_forward_after_train_step(cupy, tmp_path):
    device_tests.test_forward_reads_changed_arrays_after_train_step(cupy, tmp_path)


def test_host_gpunet_get_layer_write(cupy, tmp_path):
    device_tests.test_get_layer_writes_reach_next_step(cupy, tmp_path)


def test_host_gpunet_snapshot_resume(cupy, tmp_path):
    device_tests.test_snapshot_resume_matches_cpu(cupy, tmp_path)


def test_host_gpunet_dropout_resume(cupy, tmp_path):
    device_tests.test_dropout_resume_after_extra_forward(cupy, tmp_path)


def test_host_gpunet_second_device(cupy, monkeypatch):
    monkeypatch.setattr(host_cupy, "DEVICE_COUNT", 2)
    device_tests.test_second_device_trains_like_first(cupy)


def test_host_gpunet_graphs(cupy):
    device_tests.test_graph_steps_match_step_by_step(cupy)


def test_host_gpunet_solver_steps(cupy):
    device_tests.test_solver_steps_match_cpu(cupy)


def test_host_gpunet_uncounted_pass(cupy):
    device_tests.test_uncounted_pass_keeps_statistics(cupy)


def test_host_gpunet_graph_nan_loss(cupy):
    device_tests.test_nan_loss_in_graph_replay_leaves_parameters(cupy)


def test_host_gpunet_nan_names_first_layer(cupy):
    device_tests.test_nan_loss_names_first_layer(cupy)


def test_host_gpunet_graph_nan_names_first_layer(cupy):
    device_tests.test_nan_loss_in_graph_replay_names_first_layer(cupy)


def test_host_gpunet_diverged_update_message(cupy):
    device_tests.test_diverged_update_message_leaves_out_overwritten_gradients(cupy)


def test_host_gpunet_capture_failure_falls_back(cupy, monkeypatch, caplog):
    """A stream that cannot capture leaves graphs off and training correct."""

    def reject_capture(self):
        raise host_cupy.CUDARuntimeError("capture not permitted")

    monkeypatch.setattr(host_cupy.Stream, "begin_capture", reject_capture)
    device_tests.test_solver_trains_like_cpu(cupy, device_tests.SGD)
    assert "without CUDA graphs (capture failed" in caplog.text


def test_host_gpunet_cublas_capture_rejected(cupy, monkeypatch, caplog):
    """Without libcublas to call directly, GEMMs go through CuPy's cuBLAS
    wrapper, which raises during stream capture, at the first GEMM after
    the status reset and the first kernels were recorded. The partial
    graph is dropped, the step runs call by call, and training matches the
    CPU."""
    monkeypatch.setattr(cublas_direct, "find_cublas", lambda cupy: None)
    monkeypatch.setattr(host_cupy, "CUBLAS_DURING_CAPTURE", False)
    device_tests.test_solver_trains_like_cpu(cupy, device_tests.SGD)
    # Other tests may leave mochac's loggers at INFO, where the missing
    # libcublas is logged too.
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1
    assert "without CUDA graphs (capture failed: NotImplementedError" in warnings[0]


def test_host_gpu_bench_report(cupy):
    from mochac.bench.gpu_runner import bench_gpu, format_gpu_bench

    report = bench_gpu(lenet, batch=2, iters=1, repeats=2, peer=False)
    assert report["cuda_graphs"]
    for measure in ("forward", "train", "infer", "latency"):
        assert report["mochac"][measure]["median_ms"] > 0
    text = format_gpu_bench(report)
    assert "training steps with CUDA graphs" in text
    assert text.splitlines()[2].startswith("mochac")


def test_host_gpu_bench_captures_untimed(cupy, monkeypatch):
    """The training step's CUDA graph is captured once, in the untimed
    calls before the rounds, so no timed round pays for the capture."""
    from mochac.bench import gpu_runner, runner
    from mochac.runtime.gpu_graphs import StepGraphs

    # interleaved_rounds() reads the clock once as a round starts and once
    # as it ends.
    clock = {"reads": 0}

    def fake_perf_counter():
        clock["reads"] += 1
        return float(clock["reads"])

    monkeypatch.setattr(runner, "time", SimpleNamespace(perf_counter=fake_perf_counter))
    captured_in_round = []
    capture = StepGraphs._capture

    def recording_capture(self, calls, n_valid):
        captured_in_round.append(clock["reads"] % 2 == 1)
        return capture(self, calls, n_valid)

    monkeypatch.setattr(StepGraphs, "_capture", recording_capture)
    report = gpu_runner.bench_gpu(lenet, batch=2, iters=2, repeats=2, peer=False)
    assert report["cuda_graphs"]
    assert captured_in_round == [False]


def test_host_gpu_profile_lists_layers(cupy):
    from mochac.bench.gpu_profile import profile_gpu

    net = GPUNet("lenet", GPUBackend(seed=1), lenet(2))
    times = profile_gpu(net, iters=1, repeats=2)
    assert list(times) == ["conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "loss"]
    for name, entry in times.items():
        assert entry["forward_ms"] > 0, name
        assert entry["backward_ms"] > 0, name


def test_host_gpu_bench_profile_command(cupy, tmp_path, capsys):
    import json

    from mochac.cli import main

    out = tmp_path / "bench.json"
    args = ["bench", "lenet", "--backend", "cuda", "--batch", "2"]
    args += ["--iters", "1", "--repeats", "1", "--no-peer", "--profile"]
    assert main([*args, "--json", str(out)]) == 0
    profile = json.loads(out.read_text())["profile"]["mochac"]
    assert profile["conv2"]["backward_ms"] > 0
    header = next(
        line for line in capsys.readouterr().out.splitlines() if "mochac fwd" in line
    )
    assert "torch" not in header


def test_host_gpu_bench_json_before_profile(cupy, tmp_path, monkeypatch):
    """A profile that fails still leaves the bench's timings in --json."""
    import json

    from mochac.bench import gpu_profile
    from mochac.cli import main
    from mochac.errors import DeviceError

    def failing_profile(net, iters, repeats):
        raise DeviceError("the profile failed on purpose")

    monkeypatch.setattr(gpu_profile, "profile_gpu", failing_profile)
    out = tmp_path / "bench.json"
    args = ["bench", "lenet", "--backend", "cuda", "--batch", "2"]
    args += ["--iters", "1", "--repeats", "1", "--no-peer", "--profile"]
    assert main([*args, "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["mochac"]["train"]["median_ms"] > 0
    assert "profile" not in report


@pytest.fixture
def torch_as_cuda(monkeypatch):
    """Return PyTorch made to pass for a CUDA build whose device is the CPU.

    Its from_numpy is PyTorch's own, which rejects the stand-in's device
    arrays as it rejects CuPy's, because neither is a NumPy ndarray.
    """
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "host")
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, device=None: self)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, device=None: self)
    return torch


def test_host_gpu_bench_command_with_peer(cupy, torch_as_cuda, tmp_path, capsys):
    """mochac bench --backend cuda times mochac and the PyTorch peer, writes
    both with the speed-up to --json and prints them as a table."""
    import json

    from mochac.cli import main

    out = tmp_path / "bench.json"
    args = ["bench", "lenet", "--backend", "cuda", "--batch", "2"]
    args += ["--iters", "2", "--repeats", "2", "--json", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["net"] == "lenet"
    assert report["batch"] == 2
    assert report["cuda_graphs"] is True
    peer = report["peers"]["torch_cuda"]
    for measure in ("forward", "train", "infer", "latency"):
        assert report["mochac"][measure]["rounds"] == 2, measure
        assert peer[measure]["median_ms"] > 0, measure
        expected = peer[measure]["median_ms"] / report["mochac"][measure]["median_ms"]
        assert peer[measure]["speedup_of_mochac"] == pytest.approx(expected), measure
    assert peer["device"] == "host"
    assert peer["settings"]["cudnn_benchmark"] is False
    assert peer["grad_modes"] == {
        "forward": "no_grad",
        "train": "enable_grad",
        "infer": "inference_mode",
        "latency": "inference_mode",
    }
    assert peer["zero_grad_set_to_none"] is True
    assert peer["batches_from_pinned_host_memory"] is True
    assert report["warmup_calls"] == 3
    assert report["interleaved_rounds"] is True

    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert set(rows) == {"mochac", "torch_cuda"}
    mochac_it_s = 1e3 / report["mochac"]["train"]["median_ms"]
    assert float(rows["mochac"][3]) == pytest.approx(mochac_it_s, rel=1e-3, abs=0.1)
    assert "2 interleaved rounds of 2 iterations after 3 untimed calls" in lines[0]
    assert "cudnn.benchmark off" in lines[4]
    assert "forward under torch.no_grad()" in lines[5]
    assert "zero_grad(set_to_none=True)" in lines[5]
    assert "batch-1 under torch.inference_mode()" in lines[5]
    speedup = peer["train"]["speedup_of_mochac"]
    assert lines[6].startswith(f"mochac speed-up over torch_cuda: train {speedup:.2f}x")


def test_host_gpu_bench_interleaves_rounds(cupy, torch_as_cuda, monkeypatch):
    """Round k of mochac and round k of the PyTorch peer run one after the
    other, measure by measure, and every untimed call comes first."""
    from mochac.bench import gpu_runner, runner

    events = []

    def fake_perf_counter():
        events.append("clock")
        return float(len(events))

    monkeypatch.setattr(runner, "time", SimpleNamespace(perf_counter=fake_perf_counter))
    for method in ("forward", "train_step"):
        original = getattr(GPUNet, method)

        def recording(self, *args, original=original, **kwargs):
            events.append(("mochac", self.name))
            return original(self, *args, **kwargs)

        monkeypatch.setattr(GPUNet, method, recording)
    # Every timed call of the peer ends by waiting for the device.
    monkeypatch.setattr(
        torch_as_cuda.cuda, "synchronize", lambda device=None: events.append("torch")
    )
    repeats = 2
    gpu_runner.bench_gpu(lenet, batch=2, iters=1, repeats=repeats)

    first_read = events.index("clock")
    untimed = [event for event in events[:first_read] if event != "clock"]
    warmup = gpu_runner.WARMUP_CALLS
    assert untimed.count("torch") == 4 * warmup
    assert untimed.count(("mochac", "bench-gpu-latency")) == warmup
    rounds = []
    timed = events[first_read:]
    while timed:
        end = timed.index("clock", 1)
        rounds.append(timed[1:end])
        timed = timed[end + 1 :]
    assert len(rounds) == repeats * 4 * 2
    expected_mochac = [
        ("mochac", "bench-gpu-forward"),
        ("mochac", "bench-gpu"),
        ("mochac", "bench-gpu-infer"),
        ("mochac", "bench-gpu-latency"),
    ]
    for index, calls in enumerate(rounds):
        measure = index // 2 % 4
        if index % 2 == 0:
            assert set(calls) == {expected_mochac[measure]}, index
        else:
            assert set(calls) == {"torch"}, index
    latency_calls = gpu_runner.LATENCY_CALLS
    assert [len(calls) for calls in rounds[:8]] == [1] * 6 + [latency_calls] * 2


def test_host_gpu_peer_grad_modes(cupy, torch_as_cuda, monkeypatch):
    """The peer's forward runs under torch.no_grad(), its training step
    with autograd on and its inference under torch.inference_mode()."""
    from mochac.bench import gpu_runner
    from mochac.bench.torch_peer import TorchNet

    torch = torch_as_cuda
    state = {"in_train": False, "in_loss": False}
    modes = {"loss": set(), "train": set(), "outputs": set()}

    def mode():
        return (torch.is_grad_enabled(), torch.is_inference_mode_enabled())

    loss, outputs, train_step = TorchNet.loss, TorchNet.outputs, TorchNet.train_step

    def recording_loss(self, x, y):
        if not state["in_train"]:
            modes["loss"].add(mode())
        state["in_loss"] = True
        try:
            return loss(self, x, y)
        finally:
            state["in_loss"] = False

    def recording_outputs(self, x):
        if not state["in_train"] and not state["in_loss"]:
            modes["outputs"].add((len(x), *mode()))
        return outputs(self, x)

    def recording_train_step(self, loss_function):
        modes["train"].add(mode())
        state["in_train"] = True
        try:
            return train_step(self, loss_function)
        finally:
            state["in_train"] = False

    monkeypatch.setattr(TorchNet, "loss", recording_loss)
    monkeypatch.setattr(TorchNet, "outputs", recording_outputs)
    monkeypatch.setattr(TorchNet, "train_step", recording_train_step)
    gpu_runner.bench_gpu(lenet, batch=2, iters=1, repeats=1)
    # (batch, grad enabled, inference mode enabled), for inference at the
    # batch size and at batch 1.
    assert modes["outputs"] == {(2, False, True), (1, False, True)}
    # (grad enabled, inference mode enabled)
    assert modes["loss"] == {(False, False)}
    assert modes["train"] == {(True, False)}


def test_host_gpu_peer_copies_batches(cupy, torch_as_cuda, monkeypatch):
    """Each timed call of the PyTorch peer copies its next batch from the
    host, in turn through the data layer's four batches, as mochac's nets
    read each batch from their data layer."""
    from mochac.bench import gpu_runner

    torch = torch_as_cuda
    copy = torch.Tensor.copy_
    image_sources = []
    copies = {"count": 0}

    def recording_copy(self, source, non_blocking=False):
        if non_blocking:
            copies["count"] += 1
            if source.dim() == 4 and len(source) == 2:
                image_sources.append(source.data_ptr())
        return copy(self, source, non_blocking)

    monkeypatch.setattr(torch.Tensor, "copy_", recording_copy)
    iters, repeats = 2, 2
    gpu_runner.bench_gpu(lenet, batch=2, iters=iters, repeats=repeats)
    # WARMUP_CALLS untimed calls of each measure, then the rounds. Forward,
    # train and infer copy images and labels, and latency the first image
    # of a batch.
    untimed = gpu_runner.WARMUP_CALLS
    batch_calls = untimed + iters * repeats
    latency_calls = untimed + gpu_runner.LATENCY_CALLS * iters * repeats
    assert copies["count"] == 3 * 2 * batch_calls + latency_calls
    assert len(set(image_sources)) == 4


def test_host_sanitizer_run_script(cupy, monkeypatch, capsys):
    """benchmarks/cuda_sanitizer_run.py, the program compute-sanitizer runs
    on a GPU machine, trains every test net on the stand-in."""
    benchmarks = Path(__file__).resolve().parent.parent / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    import cuda_sanitizer_run

    cuda_sanitizer_run.main()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 * (len(NETS) + 1)
    assert all("CUDA graphs True" in line for line in lines)


def test_host_gpunet_graphs_capture_direct_gemms(cupy, monkeypatch):
    """GEMMs called on libcublas directly are captured into graphs even
    where CuPy's cuBLAS wrapper rejects capture."""
    monkeypatch.setattr(host_cupy, "CUBLAS_DURING_CAPTURE", False)
    device_tests.test_graph_steps_match_step_by_step(cupy)


def test_host_gpunet_capture_allows_default_stream_work(cupy, monkeypatch, caplog):
    """Work that another thread puts on CuPy's default stream during a
    capture neither fails nor turns graphs off, because the capture stream
    is non-blocking."""
    memsets = []
    scratch = cupy.zeros(4, np.float64)
    enqueue = GPUNet._enqueue

    def enqueue_beside_default_stream_work(net, calls, n_valid, stream=None):
        enqueue(net, calls, n_valid, stream)
        # Another thread's memset on the legacy default stream (stream 0).
        cupy.cuda.runtime.memsetAsync(scratch.data.ptr, 0, scratch.nbytes, 0)
        memsets.append(stream)

    monkeypatch.setattr(GPUNet, "_enqueue", enqueue_beside_default_stream_work)
    device_tests.test_graph_steps_match_step_by_step(cupy)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == []
    # One memset after each of the two captures, and the others after the
    # eager steps.
    assert sum(stream is not None for stream in memsets) == 2


def test_host_gpunet_without_direct_cublas(cupy, monkeypatch):
    """Where libcublas cannot be found, GEMMs go through CuPy and every
    layer still matches the CPU."""
    monkeypatch.setattr(cublas_direct, "find_cublas", lambda cupy: None)
    gpu = GPUNet("lenet", GPUBackend(seed=1), lenet(4))
    assert gpu.cublas is None
    device_tests.test_lenet_iterations_match_cpu(cupy)


def test_host_gpunet_destroy_releases_cublas_handle(cupy):
    # Nets of earlier tests that only the garbage collector frees would
    # otherwise release their handles during this test.
    gc.collect()
    before = host_cupy.fake_cublas_live_handles()
    gpu = GPUNet("lenet", GPUBackend(seed=1), lenet(4))
    assert host_cupy.fake_cublas_live_handles() == before + 1
    gpu.destroy()
    gpu.destroy()
    assert host_cupy.fake_cublas_live_handles() == before


def test_host_gpunet_failed_build_releases_cublas_handle(cupy, monkeypatch):
    """A net whose device memory cannot be allocated closes its handle."""
    from mochac.errors import DeviceError

    def failing_allocate(net):
        raise DeviceError("out of device memory on purpose")

    monkeypatch.setattr(GPUNet, "_allocate", failing_allocate)
    gc.collect()
    before = host_cupy.fake_cublas_live_handles()
    with pytest.raises(DeviceError, match="on purpose"):
        GPUNet("failed", GPUBackend(seed=1), lenet(4))
    assert host_cupy.fake_cublas_live_handles() == before


def test_host_gpunet_collected_releases_cublas_handle(cupy):
    """A net dropped without destroy() releases its handle when collected."""
    # Nets of earlier tests that only the garbage collector frees would
    # otherwise release their handles during this test.
    gc.collect()
    before = host_cupy.fake_cublas_live_handles()
    gpu = GPUNet("dropped", GPUBackend(seed=1), lenet(4))
    gpu.forward()
    del gpu
    gc.collect()
    assert host_cupy.fake_cublas_live_handles() == before


def test_host_gpunet_output_error_releases_cublas_handle(cupy, tmp_path):
    """A build that fails at its HDF5OutputLayer, after the handle was
    opened, releases the handle."""
    existing = tmp_path / "scores.h5"
    existing.write_bytes(b"keep")
    save = HDF5OutputLayer(name="save", bottoms=["ip2"], filename=str(existing))
    gc.collect()
    before = host_cupy.fake_cublas_live_handles()
    with pytest.raises(ConfigError, match="already exists"):
        GPUNet("failed", GPUBackend(seed=1), [*lenet(4), save])
    gc.collect()
    assert host_cupy.fake_cublas_live_handles() == before
    assert existing.read_bytes() == b"keep"


def test_host_gpunet_destroy_waits_for_copies(cupy, tmp_path):
    """A batch read ahead is still being copied on the copy stream after a
    step; destroy waits for it before the memory goes."""
    _, gpu = device_tests.shuffled_twins(tmp_path)
    gpu.train_step(device_tests.SGD(), 0.1, 0.9, 0.0, 0)
    assert gpu.copy_stream.pending
    gpu.destroy()
    assert not gpu.copy_stream.pending


@pytest.mark.parametrize("name", sorted(NETS))
def test_host_gpunet_every_layer_float32(cupy, name):
    device_tests.test_every_layer_float32_close_to_cpu(cupy, name)


def test_host_gpunet_lenet_float32_iterations(cupy):
    device_tests.test_lenet_float32_iterations_close_to_cpu(cupy)


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam"])
def test_host_gpunet_float32_update(cupy, kind):
    device_tests.test_float32_update_equals_cpu_bits(cupy, kind)


@pytest.mark.parametrize("call", ["forward", "train_step", "destroy"])
def test_host_gpunet_calls_hold_run_lock(cupy, monkeypatch, call):
    """GPUNet's own calls hold the net's run lock, as Net's do, so that a
    destroy() in another thread waits for them."""
    gpu = GPUNet("lenet", GPUBackend(seed=1), lenet(4))
    acquired_elsewhere = []

    def try_lock():
        got = gpu._run_lock.acquire(blocking=False)
        if got:
            gpu._run_lock.release()
        acquired_elsewhere.append(got)

    def probe(*args, **kwargs):
        thread = threading.Thread(target=try_lock)
        thread.start()
        thread.join()

    target = "_enqueue" if call != "destroy" else "_on_device"
    original = getattr(GPUNet, target)

    def probed(self, *args, **kwargs):
        probe()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GPUNet, target, probed)
    if call == "forward":
        gpu.forward()
    elif call == "train_step":
        gpu.train_step(device_tests.SGD(), 0.01, 0.9, 0.0, 0)
    else:
        gpu.destroy()
    assert acquired_elsewhere
    assert not any(acquired_elsewhere)


def test_host_gpunet_failed_copy_keeps_copy_event(cupy, tmp_path, monkeypatch):
    """A read ahead whose second copy fails still records the copy event
    after the first copy, so the next read waits for that copy before it
    overwrites the pinned buffers. The step's own batch takes the first two
    copies (data and label), the read ahead the next two."""
    _, gpu = device_tests.shuffled_twins(tmp_path)
    original_set = host_cupy.DeviceArray.set
    calls = []

    def set_failing_second(array, host, stream=None):
        calls.append(array)
        if len(calls) == 4:
            raise host_cupy.CUDARuntimeError("copy failed on purpose")
        original_set(array, host, stream=stream)

    monkeypatch.setattr(host_cupy.DeviceArray, "set", set_failing_second)
    gpu.train_step(device_tests.SGD(), 0.1, 0.9, 0.0, 0)
    assert len(calls) == 4
    assert gpu.copy_stream.pending
    gpu.copy_done.synchronize()
    assert not gpu.copy_stream.pending
    gpu.destroy()


def test_host_gpunet_collected_waits_for_copies(cupy, tmp_path):
    """A net dropped without destroy() waits, when collected, for the copy
    of a batch read ahead."""
    _, gpu = device_tests.shuffled_twins(tmp_path)
    gpu.train_step(device_tests.SGD(), 0.1, 0.9, 0.0, 0)
    copy_stream = gpu.copy_stream
    assert copy_stream.pending
    del gpu
    gc.collect()
    assert not copy_stream.pending
