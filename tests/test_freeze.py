"""freeze, freeze_all and unfreeze: frozen layers keep their parameters."""

import json
import logging

import h5py
import numpy as np
import pytest

import mochac
from mochac import (
    SGD,
    AccuracyLayer,
    CPUBackend,
    InnerProductLayer,
    LRPolicy,
    MemoryDataLayer,
    MemoryOutputLayer,
    MomPolicy,
    Net,
    Neurons,
    Snapshot,
    SoftmaxLossLayer,
    Solver,
    make_solver_parameters,
)
from mochac.mocha_api import freeze, freeze_all, unfreeze
from mochac.runtime.coffee_breaks import CoffeeBreak
from mochac.runtime.solver import Adam, Nesterov


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 5))
    y = rng.integers(0, 3, size=(8, 1)).astype(np.float64)
    return x, y


def make_net(data, seed=4, **fields):
    """Return the two-layer net; ``fields`` go to both inner products."""
    x, y = data
    layers = [
        MemoryDataLayer(batch_size=4, data=[x, y]),
        InnerProductLayer(
            name="ip1",
            output_dim=6,
            neuron=Neurons.ReLU(),
            bottoms=["data"],
            tops=["h"],
            **fields,
        ),
        InnerProductLayer(
            name="ip2", output_dim=3, bottoms=["h"], tops=["out"], **fields
        ),
        SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
    ]
    return Net("freeze", CPUBackend(dtype=np.float64, seed=seed), layers)


def snapshot_params(net):
    return {k: {n: a.copy() for n, a in v.items()} for k, v in net.params.items()}


def train(net, method, max_iter=5):
    kwargs = {"lr_policy": LRPolicy.Fixed(0.05)}
    if not isinstance(method, Adam):
        kwargs["mom_policy"] = MomPolicy.Fixed(0.9)
    params = make_solver_parameters(method, max_iter=max_iter, **kwargs)
    return Solver(method, params).solve(net)


@pytest.mark.parametrize("method", [SGD, Nesterov, Adam])
def test_frozen_layer_keeps_params(data, method):
    net = make_net(data)
    before = snapshot_params(net)
    freeze(net, "ip1")
    train(net, method())
    for name in ("weight", "bias"):
        np.testing.assert_array_equal(net.params["ip1"][name], before["ip1"][name])
    assert np.abs(net.params["ip2"]["weight"] - before["ip2"]["weight"]).max() > 1e-6


def test_frozen_layer_skips_its_constraint(data):
    net = make_net(data, weight_cons=mochac.L2Cons(0.1))
    before = snapshot_params(net)
    freeze(net, "ip1")
    train(net, SGD(), max_iter=2)
    np.testing.assert_array_equal(net.params["ip1"]["weight"], before["ip1"]["weight"])
    norms = np.linalg.norm(net.params["ip2"]["weight"], axis=1)
    assert norms.max() <= 0.1 + 1e-12


def test_freeze_all_then_unfreeze_one(data):
    net = make_net(data)
    before = snapshot_params(net)
    freeze_all(net)
    train(net, SGD())
    for layer in ("ip1", "ip2"):
        np.testing.assert_array_equal(
            net.params[layer]["weight"], before[layer]["weight"]
        )
    unfreeze(net, "ip2")
    assert net.frozen_layers >= {"ip1"}
    assert "ip2" not in net.frozen_layers
    train(net, SGD())
    np.testing.assert_array_equal(net.params["ip1"]["weight"], before["ip1"]["weight"])
    assert np.abs(net.params["ip2"]["weight"] - before["ip2"]["weight"]).max() > 1e-6


def test_unfreeze_without_names_thaws_all(data):
    net = make_net(data)
    freeze(net, "ip1", "ip2")
    unfreeze(net)
    assert net.frozen_layers == frozenset()
    before = snapshot_params(net)
    train(net, SGD(), max_iter=2)
    assert np.abs(net.params["ip1"]["weight"] - before["ip1"]["weight"]).max() > 1e-6


def test_frozen_net_matches_partial_training(data):
    # Freezing ip1 must leave ip2's updates exactly as if ip1 had lr 0.
    frozen = make_net(data)
    freeze(frozen, "ip1")
    train(frozen, SGD())
    reference = make_net(data)
    reference.params["ip1"]["weight"][...] = frozen.params["ip1"]["weight"]
    method = SGD()
    for _ in range(5):
        reference.forward()
        reference.backward()
        saved = snapshot_params(reference)["ip1"]
        method.update(reference, 0.05, 0.9, 0.0005)
        for name, array in saved.items():
            reference.params["ip1"][name][...] = array
    np.testing.assert_allclose(
        frozen.params["ip2"]["weight"],
        reference.params["ip2"]["weight"],
        rtol=0,
        atol=1e-12,
    )


def test_unfreeze_in_coffee_break(data):
    """The backward pass before the break skipped the frozen ip1, so the
    solver must compute ip1's gradient again before the next update."""

    class UnfreezeAtTwo(CoffeeBreak):
        def enjoy(self, solver, net):
            if solver.state.iter == 2:
                unfreeze(net, "ip1")

    net = make_net(data)
    freeze(net, "ip1")
    params = make_solver_parameters(
        SGD(), max_iter=3, lr_policy=LRPolicy.Fixed(0.05), momentum=0.9
    )
    solver = Solver(SGD(), params, progress=False)
    solver.add_coffee_break(UnfreezeAtTwo(), every_n_iter=1)
    solver.solve(net)

    # Updates 1 and 2 with ip1 frozen, then update 3 with it trainable, each
    # from the gradients of its own batch.
    reference = make_net(data)
    freeze(reference, "ip1")
    method = SGD()
    for iteration in range(3):
        if iteration == 2:
            unfreeze(reference, "ip1")
        reference.train_step(method, 0.05, 0.9, 0.0005, iteration)
    for layer, arrays in reference.params.items():
        for name, array in arrays.items():
            np.testing.assert_allclose(
                net.params[layer][name],
                array,
                rtol=0,
                atol=1e-12,
                err_msg=f"{layer}.{name}",
            )


def test_freeze_without_names_fails(data):
    net = make_net(data)
    with pytest.raises(mochac.ConfigError, match="freeze_all"):
        freeze(net)


def test_freeze_list_of_names_fails(data):
    net = make_net(data)
    with pytest.raises(mochac.ConfigError, match=r"separate string.*freeze\(net"):
        freeze(net, ["ip1"])
    with pytest.raises(mochac.ConfigError, match="unfreeze"):
        unfreeze(net, ["ip1"])


@pytest.mark.parametrize("function", [freeze, freeze_all, unfreeze])
def test_freeze_rejects_non_net(function):
    import types

    package = types.ModuleType("toy_train")
    package.net = object()
    with pytest.raises(
        mochac.ConfigError, match="pass the package's net, toy_train.net"
    ):
        function(package)
    with pytest.raises(mochac.ConfigError, match="expected a Net, got 'net'"):
        function("net")


def test_freeze_unknown_layer_fails(data):
    net = make_net(data)
    with pytest.raises(mochac.NotFoundError) as caught:
        freeze(net, "ip9", "ip1", "los")
    message = str(caught.value)
    assert message.startswith("freeze: net 'freeze' has no layer named 'ip9', 'los'")
    assert "(close matches: 'ip2', 'ip1', 'loss')" in message
    assert "its layers are: 'MemoryDataLayer-0', 'ip1', 'ip2', 'loss'" in message
    assert isinstance(caught.value, mochac.ConfigError)
    assert not getattr(net, "frozen_layers", None)
    with pytest.raises(mochac.NotFoundError, match="unfreeze.*'ip9'"):
        unfreeze(net, "ip9")


def stack_net(data, seed=4, force_backward=False):
    """Four inner products: h1 feeds ip2 and a side branch, which sum adds."""
    x, y = data
    layers = [
        MemoryDataLayer(batch_size=4, data=[x, y]),
        InnerProductLayer(name="ip1", output_dim=6, bottoms=["data"], tops=["h1"]),
        InnerProductLayer(
            name="ip2",
            output_dim=6,
            neuron=Neurons.ReLU(),
            bottoms=["h1"],
            tops=["h2"],
        ),
        InnerProductLayer(name="side", output_dim=6, bottoms=["h1"], tops=["h3"]),
        mochac.ElementWiseLayer(
            name="sum",
            operation=mochac.ElementWiseFunctors.Add(),
            bottoms=["h2", "h3"],
            tops=["h"],
        ),
        InnerProductLayer(name="ip3", output_dim=3, bottoms=["h"], tops=["out"]),
        SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
    ]
    return Net(
        "stack",
        CPUBackend(dtype=np.float64, seed=seed),
        layers,
        force_backward=force_backward,
    )


def skipped_names(net):
    from mochac.runtime.freeze import skipped_backward

    return {net.ir.layers[index].name for index in skipped_backward(net)}


def test_skipped_backward_frozen_bottom(data):
    net = stack_net(data)
    assert skipped_names(net) == set()
    freeze(net, "ip1")
    # The split that build_ir inserted for h1's two consumers goes with ip1.
    assert skipped_names(net) == {"ip1", "h1-split"}
    freeze(net, "ip2", "side")
    # Nothing below sum trains, so only ip3 and the loss run backward.
    assert skipped_names(net) == {"ip1", "h1-split", "ip2", "side", "sum"}
    freeze_all(net)
    assert "loss" in skipped_names(net)


def test_skipped_backward_keeps_paths_to_trained(data):
    net = stack_net(data)
    # ip1 trains, so every layer between it and the loss passes its gradient.
    freeze(net, "ip2", "side", "sum", "ip3")
    assert skipped_names(net) == set()


def test_skipped_backward_none_under_force_backward(data):
    net = stack_net(data, force_backward=True)
    freeze_all(net)
    assert skipped_names(net) == set()


@pytest.mark.parametrize("frozen", [("ip1",), ("ip1", "ip2", "side")])
def test_train_step_skips_frozen_backward(data, frozen):
    """A training step leaves the skipped layers' gradients alone and trains
    the rest exactly as a full backward pass followed by the update does."""
    skipping, full = stack_net(data), stack_net(data)
    methods = {"skipping": SGD(), "full": SGD()}
    for net in (skipping, full):
        freeze(net, *frozen)
    for grads in skipping.grads.values():
        for array in grads.values():
            array[...] = np.nan
    for iteration in range(3):
        expected = full.forward()
        full.backward()
        methods["full"].update(full, 0.05, 0.9, 0.001, iteration)
        got = skipping.train_step(methods["skipping"], 0.05, 0.9, 0.001, iteration)
        assert got == expected
    for layer in skipped_names(skipping):
        for name, array in skipping.grads.get(layer, {}).items():
            assert np.isnan(array).all(), f"{layer}.{name} was computed"
    for layer, params in full.params.items():
        for name, array in params.items():
            np.testing.assert_array_equal(
                skipping.params[layer][name], array, err_msg=f"{layer}.{name}"
            )


def counted_net(data):
    """make_net's layers with an accuracy layer and a memory output layer."""
    x, y = data
    layers = [
        MemoryDataLayer(batch_size=4, data=[x, y]),
        InnerProductLayer(
            name="ip1",
            output_dim=6,
            neuron=Neurons.ReLU(),
            bottoms=["data"],
            tops=["h"],
        ),
        InnerProductLayer(name="ip2", output_dim=3, bottoms=["h"], tops=["out"]),
        SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
        AccuracyLayer(name="acc", bottoms=["out", "label"]),
        MemoryOutputLayer(name="keep", bottoms=["out"]),
    ]
    return Net("counted", CPUBackend(dtype=np.float64, seed=4), layers)


def test_recomputed_batch_counted_once(data):
    """The gradients recomputed after an unfreeze come from a batch that the
    statistics and output layers already counted, so they count it once."""

    class UnfreezeAtTwo(CoffeeBreak):
        def enjoy(self, solver, net):
            if solver.state.iter == 2:
                unfreeze(net, "ip1")

    net = counted_net(data)
    freeze(net, "ip1")
    params = make_solver_parameters(
        SGD(), max_iter=3, lr_policy=LRPolicy.Fixed(0.05), momentum=0.9
    )
    solver = Solver(SGD(), params, progress=False)
    solver.add_coffee_break(UnfreezeAtTwo(), every_n_iter=1)
    solver.solve(net)

    # The solver's forward passes: one before update 1, one after each update.
    reference = counted_net(data)
    freeze(reference, "ip1")
    method = SGD()
    for iteration in range(3):
        if iteration == 2:
            unfreeze(reference, "ip1")
        reference.train_step(method, 0.05, 0.9, 0.0005, iteration)
    reference.forward()

    collected = net.output_states["keep"].outputs[0]
    expected = reference.output_states["keep"].outputs[0]
    assert len(collected) == len(expected) == 4
    for batch, (actual, wanted) in enumerate(zip(collected, expected)):
        np.testing.assert_allclose(
            actual, wanted, rtol=0, atol=1e-12, err_msg=f"batch {batch}"
        )
    stats = net.statistics()
    expected_stats = reference.statistics()
    assert stats["acc-count"] == expected_stats["acc-count"] == 16
    assert stats["loss-count"] == expected_stats["loss-count"] == 16
    assert stats["acc-accuracy"] == pytest.approx(expected_stats["acc-accuracy"])
    assert stats["loss-softmax-loss"] == pytest.approx(
        expected_stats["loss-softmax-loss"], rel=1e-12
    )


def snapshot_solver(folder, max_iter):
    params = make_solver_parameters(
        SGD(),
        max_iter=max_iter,
        lr_policy=LRPolicy.Fixed(0.05),
        momentum=0.9,
        load_from=str(folder),
    )
    solver = Solver(SGD(), params, progress=False)
    solver.add_coffee_break(Snapshot(str(folder)), every_n_iter=2)
    return solver


def test_snapshot_records_frozen_layers(data, tmp_path):
    net = make_net(data)
    freeze(net, "ip1")
    snapshot_solver(tmp_path, max_iter=2).solve(net)
    with h5py.File(tmp_path / "snapshot-000002.h5", "r") as handle:
        assert json.loads(handle["solver"].attrs["frozen_layers"]) == ["ip1"]


def test_resume_warns_of_other_frozen_layers(data, tmp_path, caplog):
    net = make_net(data)
    freeze(net, "ip1")
    snapshot_solver(tmp_path, max_iter=2).solve(net)

    resumed = make_net(data)
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        snapshot_solver(tmp_path, max_iter=4).solve(resumed)
    warnings = [
        r.getMessage() for r in caplog.records if "frozen layers" in r.getMessage()
    ]
    assert len(warnings) == 1
    assert "saved with frozen layers ip1, but now none are frozen" in warnings[0]
    assert "freeze(net, ...)" in warnings[0]


def test_resume_with_same_frozen_layers_is_quiet(data, tmp_path, caplog):
    net = make_net(data)
    freeze(net, "ip1")
    snapshot_solver(tmp_path, max_iter=2).solve(net)

    resumed = make_net(data)
    freeze(resumed, "ip1")
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        snapshot_solver(tmp_path, max_iter=4).solve(resumed)
    assert "frozen layers" not in caplog.text


@pytest.mark.parametrize("value", ["ip1", "[1, 2]", "{not json"])
def test_invalid_frozen_layers_attribute(data, tmp_path, value):
    net = make_net(data)
    snapshot_solver(tmp_path, max_iter=2).solve(net)
    path = tmp_path / "snapshot-000002.h5"
    with h5py.File(path, "r+") as handle:
        handle["solver"].attrs["frozen_layers"] = value
    # The digest file would report the edit as damage before the attribute.
    (tmp_path / "snapshot-000002.h5.sha256").unlink()
    with pytest.raises(mochac.SnapshotError, match="'frozen_layers' has the invalid"):
        snapshot_solver(tmp_path, max_iter=4).solve(make_net(data))


def test_resume_from_iteration_0_warns_of_frozen_layers(data, tmp_path, caplog):
    net = make_net(data)
    freeze(net, "ip1")
    snapshot_solver(tmp_path, max_iter=0).solve(net)
    assert [p.name for p in tmp_path.glob("*.h5")] == ["snapshot-000000.h5"]

    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        snapshot_solver(tmp_path, max_iter=2).solve(make_net(data))
    assert "saved with frozen layers ip1, but now none are frozen" in caplog.text


def test_unfrozen_layer_lacks_buffer_quietly(data, tmp_path, caplog):
    """A layer frozen at the save has no momentum history, in the resumed
    run and in an uninterrupted one alike, so no buffer warning."""
    net = make_net(data)
    freeze(net, "ip1")
    snapshot_solver(tmp_path, max_iter=2).solve(net)

    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        snapshot_solver(tmp_path, max_iter=4).solve(make_net(data))
    assert "frozen layers ip1" in caplog.text
    assert "has no solver buffer" not in caplog.text


def test_missing_buffer_of_trained_layer_warns(data, tmp_path, caplog):
    net = make_net(data)
    snapshot_solver(tmp_path, max_iter=2).solve(net)
    path = tmp_path / "snapshot-000002.h5"
    with h5py.File(path, "r+") as handle:
        del handle["solver/history/ip1___weight"]
    (tmp_path / "snapshot-000002.h5.sha256").unlink()

    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        snapshot_solver(tmp_path, max_iter=4).solve(make_net(data))
    assert "has no solver buffer 'history' for layer 'ip1'" in caplog.text


def test_nested_uncounted_keeps_counting_off(data):
    net = counted_net(data)
    net.forward()
    with net.uncounted():
        with net.uncounted():
            net.forward()
        assert net.counting is False
        net.forward()
    assert net.counting is True
    assert len(net.output_states["keep"].outputs[0]) == 1
    assert net.statistics()["acc-count"] == 4


def test_solve_with_everything_frozen_warns(data, caplog):
    net = make_net(data)
    freeze_all(net)
    before = snapshot_params(net)
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        train(net, SGD(), max_iter=2)
    assert "every layer with parameters is frozen" in caplog.text
    assert "unfreeze(net, ...)" in caplog.text
    for layer, arrays in before.items():
        for name, array in arrays.items():
            np.testing.assert_array_equal(net.params[layer][name], array)


def test_solve_with_one_layer_frozen_is_quiet(data, caplog):
    net = make_net(data)
    freeze(net, "ip1")
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        train(net, SGD(), max_iter=2)
    assert "is frozen" not in caplog.text


class StopAtTwo(CoffeeBreak):
    """Raises KeyboardInterrupt once, at iteration 2, as a Ctrl-C would."""

    fired = False

    def enjoy(self, solver, net):
        if solver.state.iter == 2 and not self.fired:
            self.fired = True
            raise KeyboardInterrupt


def counting_solver():
    params = make_solver_parameters(SGD(), max_iter=4, lr_policy=LRPolicy.Fixed(0.05))
    return Solver(SGD(), params, progress=False)


def test_continued_solve_counts_batches_once(data):
    """A solve() stopped and called again counts each batch as a straight
    run does, although it loads the batch waiting at the stop again."""
    straight = counted_net(data)
    counting_solver().solve(straight)

    stopped = counted_net(data)
    solver = counting_solver()
    solver.add_coffee_break(StopAtTwo(), every_n_iter=1)
    with pytest.raises(KeyboardInterrupt):
        solver.solve(stopped)
    solver.solve(stopped)

    for net in (straight, stopped):
        assert net.statistics()["acc-count"] == 20
        assert len(net.output_states["keep"].outputs[0]) == 5
    assert stopped.statistics() == pytest.approx(straight.statistics(), rel=1e-12)


def test_second_solve_on_moved_net_counts(data):
    """Data read between two solves moves the net, so the second solve's
    first batch is new and counts."""
    net = counted_net(data)
    solver = counting_solver()
    solver.solve(net)
    net.forward()
    solver.params["max_iter"] = 5
    solver.solve(net)
    # 5 passes in the first solve, 1 by hand, then 2 in the second.
    assert net.statistics()["acc-count"] == 32


def test_freeze_all_resumed_with_parameter_layers_frozen(data, tmp_path, caplog):
    """freeze_all also freezes the data and loss layers, which have no
    parameters, so freezing ip1 and ip2 by name is the same setting."""
    net = make_net(data)
    freeze_all(net)
    snapshot_solver(tmp_path, max_iter=2).solve(net)

    resumed = make_net(data)
    freeze(resumed, "ip1", "ip2")
    with caplog.at_level(logging.WARNING, logger="mochac.runtime.solver"):
        snapshot_solver(tmp_path, max_iter=4).solve(resumed)
    assert "frozen layers" not in caplog.text


def test_failed_load_leaves_batch_uncounted(data):
    """A batch whose load failed was never counted, so the next solve()
    counts it."""
    x, y = data
    broken = x.copy()
    broken[5, 0] = np.nan
    layers = [
        MemoryDataLayer(batch_size=4, data=[broken, y]),
        InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["out"]),
        SoftmaxLossLayer(name="loss", bottoms=["out", "label"]),
        AccuracyLayer(name="acc", bottoms=["out", "label"]),
    ]
    net = Net("repaired", CPUBackend(dtype=np.float64, seed=4), layers)
    solver = counting_solver()
    with pytest.raises(mochac.DataError, match="data row 5"):
        solver.solve(net)
    broken[5, 0] = x[5, 0]
    solver.solve(net)
    # Update 1 used the first batch; then batches for updates 2 to 4 and
    # the one loaded last: five batches of four.
    assert net.statistics()["acc-count"] == 20
    assert net.statistics()["loss-count"] == 20


def test_one_solver_two_nets_count_once(data):
    first, second = counted_net(data), counted_net(data)
    solver = counting_solver()
    solver.solve(first)
    solver.solve(second)
    solver.params["max_iter"] = 5
    solver.state.iter = 4
    solver.solve(first)
    # Five passes to iteration 4, then one more update and its pass.
    assert first.statistics()["acc-count"] == 24
