"""Momentum policies and LRPolicy.DecayOnValidation."""

import logging
import math

import h5py
import numpy as np
import pytest

import mochac
from mochac import (
    SGD,
    CPUBackend,
    InnerProductLayer,
    LRPolicy,
    MemoryDataLayer,
    MomPolicy,
    Net,
    Snapshot,
    SoftmaxLossLayer,
    Solver,
    make_solver_parameters,
)
from mochac.mocha_api import setup
from mochac.runtime import resume_point
from mochac.runtime.coffee_breaks import CoffeeBreak
from mochac.runtime.solver import SolverState


@pytest.mark.parametrize(
    ("policy", "iteration", "expected"),
    [
        (MomPolicy.Fixed(0.9), 7, 0.9),
        (MomPolicy.Step(0.5, 1.1, 10, 0.9), 0, 0.5),
        (MomPolicy.Step(0.5, 1.1, 10, 0.9), 25, 0.5 * 1.1**2),
        (MomPolicy.Step(0.5, 1.1, 10, 0.9), 100, 0.9),
        (MomPolicy.Linear(0.5, 0.1, 10, 0.9), 9, 0.5),
        (MomPolicy.Linear(0.5, 0.1, 10, 0.9), 25, 0.7),
        (MomPolicy.Linear(0.5, 0.1, 10, 0.9), 100, 0.9),
        (
            MomPolicy.Staged((10, MomPolicy.Fixed(0.5)), (5, MomPolicy.Fixed(0.9))),
            9,
            0.5,
        ),
        (
            MomPolicy.Staged((10, MomPolicy.Fixed(0.5)), (5, MomPolicy.Fixed(0.9))),
            10,
            0.9,
        ),
        (
            MomPolicy.Staged((10, MomPolicy.Fixed(0.5)), (5, MomPolicy.Fixed(0.9))),
            99,
            0.9,
        ),
        (
            MomPolicy.Staged(
                (10, MomPolicy.Fixed(0.5)), (5, MomPolicy.Linear(0.5, 0.1, 4, 0.99))
            ),
            12,
            0.5 + 3 * 0.1,
        ),
    ],
)
def test_mom_policies(policy, iteration, expected):
    assert math.isclose(policy(SolverState(iter=iteration)), expected, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("make_policy", "match"),
    [
        (lambda: MomPolicy.Step(0.5, 1.1, 0, 0.9), "MomPolicy.Step.*stepsize"),
        (lambda: MomPolicy.Step(0.5, -1.0, 10, 0.9), "MomPolicy.Step.*gamma"),
        (lambda: MomPolicy.Step(0.5, 1.1, 10, 1.0), "MomPolicy.Step.*max_mom"),
        (lambda: MomPolicy.Linear(1.2, 0.1, 10, 0.9), "MomPolicy.Linear.*base_mom"),
        (lambda: MomPolicy.Linear(0.5, 0.1, 2.5, 0.9), "MomPolicy.Linear.*stepsize"),
        (lambda: MomPolicy.Linear(0.5, -0.3, 1, 0.9), "MomPolicy.Linear.*gamma"),
        (lambda: MomPolicy.Staged(), "MomPolicy.Staged"),
        (lambda: MomPolicy.Staged((0, MomPolicy.Fixed(0.5))), "MomPolicy.Staged"),
        (lambda: LRPolicy.DecayOnValidation(0.1, "", 0.5), "key"),
        (lambda: LRPolicy.DecayOnValidation(0.1, "a", 1.5), "ratio"),
        (lambda: LRPolicy.DecayOnValidation(-0.1, "a", 0.5), "base_lr"),
        (
            lambda: LRPolicy.DecayOnValidation(0.1, "a", 0.5, higher_better=1),
            "higher_better",
        ),
        (lambda: LRPolicy.DecayOnValidation(0.1, "a", 0.5, -1e-8), "min_lr"),
        # higher_better is keyword-only, so a bool in min_lr's place fails.
        (
            lambda: LRPolicy.DecayOnValidation(0.1, "a", 0.5, False),
            "min_lr=False; pass the direction by keyword, higher_better=False",
        ),
    ],
)
def test_policy_fields_validated(make_policy, match):
    with pytest.raises(mochac.ConfigError, match=match):
        make_policy()


def test_solver_uses_mom_policy():
    x, y = toy_data()
    net = Net("mom", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    params = make_solver_parameters(
        SGD(), max_iter=12, mom_policy=MomPolicy.Linear(0.5, 0.1, 5, 0.65)
    )
    solver = Solver(SGD(), params)
    seen = MomentumLog()
    solver.add_coffee_break(seen, every_n_iter=1)
    solver.solve(net)
    # The break at iteration i sees the momentum of the update that led to it.
    assert seen.values[:2] == [0.5, 0.5]
    assert seen.values[6] == pytest.approx(0.6)
    assert seen.values[-1] == pytest.approx(0.65)


def test_staged_stage_lengths():
    # Stages of 6, 2 and 2 updates over max_iter=10, as Mocha's CIFAR-10
    # schedule (60000, 5000, 5000 over 70000) scaled down.
    policy = LRPolicy.Staged(
        (6, LRPolicy.Fixed(1.0)), (2, LRPolicy.Fixed(0.5)), (2, LRPolicy.Fixed(0.25))
    )
    rates = [policy(SolverState(iter=i)) for i in range(10)]
    assert rates == [1.0] * 6 + [0.5] * 2 + [0.25] * 2


def test_solver_staged_rate_per_update():
    x, y = toy_data()
    net = Net("staged", CPUBackend(dtype=np.float64, seed=1), classifier_layers(x, y))
    policy = LRPolicy.Staged((3, LRPolicy.Fixed(0.2)), (2, LRPolicy.Fixed(0.1)))
    params = make_solver_parameters(SGD(), max_iter=5, lr_policy=policy)
    solver = Solver(SGD(), params)
    seen = RateLog()
    solver.add_coffee_break(seen, every_n_iter=1)
    solver.solve(net)
    # The break at iteration i >= 1 reads the rate of the update that led to it.
    assert seen.values[1:] == [0.2, 0.2, 0.2, 0.1, 0.1]


class RateLog(CoffeeBreak):
    def __init__(self):
        self.values = []

    def enjoy(self, solver, net):
        self.values.append(solver.state.learning_rate)


class MomentumLog(CoffeeBreak):
    def __init__(self):
        self.values = []

    def enjoy(self, solver, net):
        self.values.append(solver.state.momentum)


def classifier_layers(x, y):
    data = MemoryDataLayer(batch_size=4, data=[x, y])
    out = InnerProductLayer(name="ip", output_dim=3, bottoms=["data"], tops=["ip"])
    loss = SoftmaxLossLayer(name="loss", bottoms=["ip", "label"])
    return [data, out, loss]


def toy_data(n=8, features=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features))
    y = rng.integers(0, 3, size=(n, 1)).astype(np.float64)
    return x, y


class ScriptedValidation(CoffeeBreak):
    """Stands in for ValidationPerformance: reports the next scripted value."""

    def __init__(self, key, values):
        self.key = key
        self.values = list(values)
        self.listeners = []

    def enjoy(self, solver, net):
        stats = {self.key: self.values.pop(0)}
        for listener in self.listeners:
            listener(solver, stats)


def decay_solver(folder, key, values, higher_better=None, max_iter=4):
    """Return (net, solver, policy): snapshots and validation every 2 iterations."""
    x, y = toy_data()
    net = Net("decay", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y))
    if higher_better is None:
        policy = LRPolicy.DecayOnValidation(0.1, key, 0.5)
    else:
        policy = LRPolicy.DecayOnValidation(0.1, key, 0.5, higher_better=higher_better)
    params = make_solver_parameters(
        SGD(), max_iter=max_iter, lr_policy=policy, mom_policy=MomPolicy.Fixed(0.9)
    )
    solver = Solver(SGD(), params)
    # The snapshot comes first, so at a bad validation the newest snapshot
    # is the bad one, and the policy must reach past it.
    solver.add_coffee_break(Snapshot(folder), every_n_iter=2)
    validation = ScriptedValidation(key, values)
    solver.add_coffee_break(validation, every_n_iter=2)
    setup(policy, validation, solver)
    return net, solver, policy


@pytest.mark.parametrize(
    ("key", "values", "higher_better", "decays"),
    [
        ("accuracy-accuracy", [0.5, 0.90, 0.80], True, True),
        ("loss", [0.7, 0.50, 0.60], False, True),
        ("loss", [0.7, 0.50, 0.40], False, False),
        ("accuracy-accuracy", [0.5, 0.90, 0.95], True, False),
    ],
)
def test_decay_on_validation_direction(tmp_path, key, values, higher_better, decays):
    # Validations at iterations 0, 2 and 4; the last one decides.
    net, solver, policy = decay_solver(tmp_path, key, values, higher_better)
    solver.solve(net)
    expected_lr = 0.05 if decays else 0.1
    assert policy(solver.state) == pytest.approx(expected_lr)
    with h5py.File(tmp_path / "snapshot-000002.h5", "r") as handle:
        good_weight = handle["ip___weight"][()]
        good_history = handle["solver/history/ip___weight"][()]
    if decays:
        np.testing.assert_array_equal(net.params["ip"]["weight"], good_weight)
        np.testing.assert_array_equal(
            solver.method.history[("ip", "weight")], good_history
        )
    else:
        assert np.abs(net.params["ip"]["weight"] - good_weight).max() > 0


def test_decay_on_validation_mocha_defaults():
    policy = LRPolicy.DecayOnValidation(0.1, "accuracy-accuracy")
    assert policy.ratio == 0.5
    assert policy.min_lr == 1e-8


def test_decay_stops_below_min_lr(tmp_path):
    """Worse at iterations 2, 4 and 6: the rate halves from 0.1 to 0.05,
    which is below min_lr=0.06, so the later worse values change nothing."""
    net, solver, policy = decay_solver(
        tmp_path, "loss", [0.5, 0.6, 0.7, 0.8], higher_better=False, max_iter=6
    )
    policy.min_lr = 0.06
    solver.solve(net)
    assert policy.learning_rate == pytest.approx(0.05)
    assert solver.state.learning_rate == pytest.approx(0.05)


def test_decay_compares_with_best(tmp_path):
    """0.85 beats the rejected 0.80 but not the best 0.90, so it decays too."""
    net, solver, policy = decay_solver(
        tmp_path, "accuracy-accuracy", [0.9, 0.8, 0.85], max_iter=4
    )
    solver.solve(net)
    assert policy.learning_rate == pytest.approx(0.025)
    assert policy.best == 0.9
    assert policy.best_iter == 0


def test_decay_on_validation_defaults_to_higher_better(tmp_path):
    net, solver, policy = decay_solver(tmp_path, "accuracy-accuracy", [0.5, 0.9, 0.8])
    assert policy.higher_better is True
    solver.solve(net)
    assert policy(solver.state) == pytest.approx(0.05)


def test_decayed_rate_drives_training(tmp_path):
    net, solver, _ = decay_solver(
        tmp_path, "loss", [0.5, 0.6, 0.6, 0.4], higher_better=False, max_iter=6
    )
    rates = []

    class RateLog(CoffeeBreak):
        def enjoy(self, solver, net):
            rates.append(solver.state.learning_rate)

    solver.add_coffee_break(RateLog(), every_n_iter=1)
    solver.solve(net)
    # Worse at iterations 2 and 4, so the rate halves twice; 0.4 is better.
    # A break after the validation of a decay reads the decayed rate, which
    # the next update uses.
    assert rates[1] == 0.1
    assert rates[2:4] == [pytest.approx(0.05)] * 2
    assert rates[4:7] == [pytest.approx(0.025)] * 3


def test_decay_reload_recomputes_gradients(tmp_path):
    net, solver, _ = decay_solver(
        tmp_path, "loss", [0.5, 0.4, 0.6], higher_better=False, max_iter=4
    )
    checked = []

    class GradientCheck(CoffeeBreak):
        """After the decay at iteration 4: the gradients waiting for the
        next update must be those of the reloaded parameters."""

        def enjoy(self, solver, net):
            if solver.state.iter != 4:
                return
            waiting = {
                k: {n: g.copy() for n, g in v.items()} for k, v in net.grads.items()
            }
            with h5py.File(tmp_path / "snapshot-000002.h5") as reloaded:
                for layer, params in net.params.items():
                    for name, values in params.items():
                        saved = reloaded[f"{layer}___{name}"][()]
                        np.testing.assert_array_equal(values, saved)
            # The same batch again, from the point before it was loaded.
            resume_point.restore(net, net.resume_point)
            net.forward_backward(solver.method, 0.0005)
            for layer, grads in net.grads.items():
                for name, grad in grads.items():
                    np.testing.assert_array_equal(waiting[layer][name], grad)
            checked.append(True)

    solver.add_coffee_break(GradientCheck(), every_n_iter=2)
    solver.solve(net)
    assert checked == [True]


def test_failed_reload_keeps_rate(tmp_path):
    """A decay whose snapshot cannot be read raises, and leaves the rate
    undecayed for a later solve()."""
    net, solver, policy = decay_solver(
        tmp_path, "loss", [0.5, 0.4, 0.6], higher_better=False, max_iter=4
    )
    validation = solver.breaks[1][0]
    scripted_enjoy = validation.enjoy

    def enjoy_after_damage(solver, net):
        if solver.state.iter == 4:
            # The reload reaches back to iteration 2, the best validation.
            (tmp_path / "snapshot-000002.h5").write_bytes(b"not an HDF5 file")
        scripted_enjoy(solver, net)

    validation.enjoy = enjoy_after_damage
    with pytest.raises(mochac.MochacError, match="snapshot-000002.h5"):
        solver.solve(net)
    assert policy.learning_rate == 0.1
    assert solver.state.learning_rate == 0.1
    assert policy(solver.state) == 0.1


def test_decay_on_validation_needs_snapshot(tmp_path):
    x, y = toy_data()
    net = Net("decay", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y))
    policy = LRPolicy.DecayOnValidation(0.1, "loss", 0.5, higher_better=False)
    solver = Solver(SGD(), make_solver_parameters(SGD(), max_iter=2, lr_policy=policy))
    validation = ScriptedValidation("loss", [0.5, 0.6])
    solver.add_coffee_break(validation, every_n_iter=2)
    setup(policy, validation, solver)
    before = net.params["ip"]["weight"].copy()
    with pytest.raises(mochac.ConfigError, match="Snapshot"):
        solver.solve(net)
    # The check runs before training, not at the first decay.
    np.testing.assert_array_equal(net.params["ip"]["weight"], before)


def test_decay_on_validation_unknown_key(tmp_path):
    net, solver, policy = decay_solver(tmp_path, "accuracy-accuracy", [0.5])
    policy.key = "missing"
    with pytest.raises(mochac.ConfigError, match="missing.*accuracy-accuracy"):
        solver.solve(net)


def test_decay_on_validation_count_key(tmp_path):
    net, solver, policy = decay_solver(tmp_path, "accuracy-accuracy", [0.5])
    policy.key = "accuracy-count"
    # The names a ValidationPerformance of an AccuracyLayer 'accuracy' lists.
    for coffee_break, *_ in solver.breaks:
        if isinstance(coffee_break, ScriptedValidation):
            coffee_break.statistic_names = ["accuracy-accuracy", "accuracy-count"]
    with pytest.raises(mochac.ConfigError, match="'accuracy-count' counts the"):
        solver.solve(net)


def test_resume_restores_decayed_rate(tmp_path):
    net, solver, _ = decay_solver(tmp_path, "loss", [0.5, 0.6, 0.6], False, max_iter=4)
    solver.solve(net)
    x, y = toy_data()
    fresh = Net("decay", CPUBackend(dtype=np.float64, seed=9), classifier_layers(x, y))
    policy = LRPolicy.DecayOnValidation(0.1, "loss", 0.5, higher_better=False)
    params = make_solver_parameters(
        SGD(), max_iter=4, lr_policy=policy, load_from=str(tmp_path)
    )
    resumed = Solver(SGD(), params)
    resumed.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    validation = ScriptedValidation("loss", [])
    resumed.add_coffee_break(validation, every_n_iter=2)
    setup(policy, validation, resumed)
    resumed.solve(fresh)
    # The decays at iterations 2 and 4 left 0.025; the one at 4 rewrote
    # snapshot-000004, saved just before it, with that rate.
    assert policy.learning_rate == pytest.approx(0.025)


def test_resumed_snapshots_keep_best(tmp_path):
    """A snapshot that a resumed run saves before its first validation keeps
    the best validation of the snapshot it resumed, so a later resume from it
    decays where the uninterrupted run does."""

    def run(max_iter, values):
        x, y = toy_data()
        net = Net(
            "decay", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y)
        )
        policy = LRPolicy.DecayOnValidation(0.1, "loss", 0.5, higher_better=False)
        params = make_solver_parameters(
            SGD(), max_iter=max_iter, lr_policy=policy, load_from=str(tmp_path)
        )
        solver = Solver(SGD(), params)
        validation = ScriptedValidation("loss", values)
        solver.add_coffee_break(validation, every_n_iter=6)
        solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
        setup(policy, validation, solver)
        solver.solve(net)
        return policy

    run(2, [0.5])  # validation at 0 (the best), snapshots at 0 and 2
    run(4, [])  # resumes at 2, snapshot at 4 without a validation
    with h5py.File(tmp_path / "snapshot-000004.h5", "r") as handle:
        attrs = dict(handle["solver"].attrs)
    assert attrs.get("decay_on_validation_best") == 0.5
    assert attrs.get("decay_on_validation_best_iter") == 0
    policy = run(6, [0.6])  # resumes at 4; 0.6 at 6 is worse than 0.5 at 0
    assert policy.best == 0.5
    assert policy.learning_rate == pytest.approx(0.05)


def test_restore_without_best_clears_best():
    policy = LRPolicy.DecayOnValidation(0.1, "loss", 0.5, higher_better=False)
    policy.best, policy.best_iter = 0.4, 4
    policy.restore({"learning_rate": 0.05})
    assert policy.learning_rate == 0.05
    assert policy.best is None
    assert policy.best_iter is None


def test_second_solve_forgets_later_best(tmp_path):
    """A policy resumed from a snapshot saved before any validation compares
    with no best, not with the best of a solve() that went past it."""

    class ValidationAfterStart(ScriptedValidation):
        def enjoy(self, solver, net):
            if solver.state.iter > 0:
                super().enjoy(solver, net)

    def run(policy, folder, max_iter, values, load_from=None):
        x, y = toy_data()
        net = Net(
            "decay", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y)
        )
        params = make_solver_parameters(
            SGD(), max_iter=max_iter, lr_policy=policy, load_from=load_from
        )
        solver = Solver(SGD(), params)
        solver.add_coffee_break(Snapshot(folder), every_n_iter=2)
        validation = ValidationAfterStart("loss", values)
        solver.add_coffee_break(validation, every_n_iter=2)
        setup(policy, validation, solver)
        solver.solve(net)

    policy = LRPolicy.DecayOnValidation(0.1, "loss", 0.5, higher_better=False)
    run(policy, tmp_path / "first", 4, [0.5, 0.4])
    assert policy.best == 0.4
    assert policy.best_iter == 4
    first_snapshot = tmp_path / "first" / "snapshot-000000.h5"
    with h5py.File(first_snapshot, "r") as handle:
        assert "decay_on_validation_best" not in handle["solver"].attrs
    # 0.6 at iteration 2 is the first validation since the snapshot.
    run(policy, tmp_path / "second", 2, [0.6], load_from=str(first_snapshot))
    assert policy.best == 0.6
    assert policy.best_iter == 2
    assert policy.learning_rate == 0.1


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_policies_refuse_non_finite_values(value):
    with pytest.raises(mochac.ConfigError, match="finite"):
        LRPolicy.Fixed(value)
    with pytest.raises(mochac.ConfigError, match="finite"):
        MomPolicy.Fixed(value)


# --- policy values that overflow or are not numbers ---------------------------


@pytest.mark.parametrize(
    ("policy", "iteration", "match"),
    [
        (LRPolicy.Step(1e-300, 1e300, 1), 2, r"Step\(.*\): at iteration 2 .*1e\+300"),
        (LRPolicy.Exp(1e-300, 1e300), 2, r"Exp\(.*\): at iteration 2 .*1e\+300"),
        (LRPolicy.Inv(1e-300, 1.0, -400.0), 5, r"Inv\(.*\): at iteration 5 .*400"),
    ],
)
def test_lr_policy_overflow(policy, iteration, match):
    with pytest.raises(mochac.NumericalError, match=match):
        policy(SolverState(iter=iteration))


def test_mom_step_overflow_stops_at_max():
    policy = MomPolicy.Step(0.5, 1.1, 1, 0.9)
    assert policy(SolverState(iter=10**6)) == 0.9


def solve_with(max_iter=2, dtype=np.float64, **policies):
    x, y = toy_data()
    net = Net("policy", CPUBackend(dtype=dtype, seed=1), classifier_layers(x, y))
    params = make_solver_parameters(SGD(), max_iter=max_iter, **policies)
    return Solver(SGD(), params, progress=False).solve(net)


def constant(value):
    def policy(state):
        return value

    return policy


@pytest.mark.parametrize("value", [None, "0.1", [0.1]])
def test_policy_returning_non_number(value):
    pattern = rf"lr_policy function constant.*policy returned {value!r} at iteration 0"
    with pytest.raises(mochac.ConfigError, match=pattern.replace("[", r"\[")):
        solve_with(lr_policy=constant(value))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_policy_returning_non_finite(value):
    with pytest.raises(mochac.NumericalError, match="mom_policy .* at iteration 0"):
        solve_with(mom_policy=constant(value))


@pytest.mark.parametrize(
    ("policies", "match"),
    [
        ({"lr_policy": constant(-0.1)}, r"returned -0\.1 at iteration 0; a learning"),
        ({"mom_policy": constant(1.5)}, r"returned 1\.5 at iteration 0; a momentum"),
        ({"mom_policy": constant(-0.5)}, r"returned -0\.5 at iteration 0; a momentum"),
        ({"mom_policy": constant(1.0)}, r"returned 1 at iteration 0; a momentum"),
    ],
)
def test_policy_value_out_of_range(policies, match):
    with pytest.raises(mochac.ConfigError, match=match):
        solve_with(**policies)


def test_late_momentum_out_of_range_names_iteration():
    def falling(state):
        return 0.5 - 0.3 * state.iter

    with pytest.raises(mochac.ConfigError, match="returned -0.1 at iteration 2"):
        solve_with(max_iter=4, mom_policy=falling)


@pytest.mark.parametrize(
    "policies",
    [{"lr_policy": MomPolicy.Fixed(0.5)}, {"mom_policy": LRPolicy.Fixed(0.5)}],
)
def test_policy_of_other_kind_rejected(policies):
    key = next(iter(policies))
    with pytest.raises(mochac.ConfigError, match=f"invalid {key}=.*expected a policy"):
        make_solver_parameters(SGD(), max_iter=1, **policies)


def test_policy_above_float32_max():
    # 1e30 fits a float32, and the rate 1e60 at iteration 2 does not.
    policy = LRPolicy.Exp(1.0, 1e30)
    pattern = r"lr_policy Exp\(.*\) returned 1e\+60 at iteration 2, .*float32"
    with pytest.raises(mochac.NumericalError, match=pattern):
        solve_with(max_iter=3, dtype=np.float32, lr_policy=policy)


def test_policy_failure_names_iteration():
    def late_none(state):
        return 0.1 if state.iter < 3 else None

    with pytest.raises(mochac.ConfigError, match="returned None at iteration 3"):
        solve_with(max_iter=5, lr_policy=late_none)


def test_policies_accept_numpy_numbers():
    step = LRPolicy.Step(np.float32(0.5), np.float64(0.5), np.int64(10))
    assert type(step.stepsize) is int
    assert type(step.base_lr) is float
    assert step(SolverState(iter=20)) == pytest.approx(0.125)
    staged = LRPolicy.Staged((np.int64(2), LRPolicy.Fixed(1.0)))
    assert staged.stages[0][0] == 2
    assert type(staged.stages[0][0]) is int
    mom = MomPolicy.Linear(np.float64(0.5), 0.1, np.int32(5), 0.9)
    assert type(mom.stepsize) is int
    assert mom(SolverState(iter=10)) == pytest.approx(0.7)
    with pytest.raises(mochac.ConfigError, match="stepsize=True"):
        LRPolicy.Step(0.1, 0.5, True)


def test_decay_on_validation_needs_setup(tmp_path):
    x, y = toy_data()
    net = Net("decay", CPUBackend(dtype=np.float64, seed=2), classifier_layers(x, y))
    policy = LRPolicy.DecayOnValidation(0.1, "loss", 0.5, higher_better=False)
    params = make_solver_parameters(SGD(), max_iter=2, lr_policy=policy)
    solver = Solver(SGD(), params)
    solver.add_coffee_break(Snapshot(tmp_path), every_n_iter=2)
    solver.add_coffee_break(ScriptedValidation("loss", [0.5, 0.6]), every_n_iter=2)
    with pytest.raises(mochac.ConfigError, match="call setup"):
        solver.solve(net)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("base_mom", [-0.5, 1.0])
def test_fixed_momentum_names_its_range(base_mom):
    with pytest.raises(mochac.ConfigError, match=r"expected a number in \[0, 1\)"):
        MomPolicy.Fixed(base_mom)


@pytest.mark.parametrize(
    ("make_staged", "match"),
    [
        (lambda: MomPolicy.Staged((2, LRPolicy.Fixed(0.5))), "MomPolicy.Staged"),
        (lambda: LRPolicy.Staged((2, MomPolicy.Fixed(0.5))), "LRPolicy.Staged"),
        (
            lambda: LRPolicy.Staged((2, MomPolicy.Staged((2, MomPolicy.Fixed(0.5))))),
            "LRPolicy.Staged",
        ),
    ],
)
def test_staged_rejects_other_kind(make_staged, match):
    with pytest.raises(mochac.ConfigError, match=f"{match}: invalid stage .*another"):
        make_staged()


@pytest.mark.parametrize(
    ("make_staged", "match"),
    [
        (
            lambda: LRPolicy.Staged((10, LRPolicy.Fixed)),
            (
                r"LRPolicy\.Staged stage .*: policy is the class Fixed; .*"
                r"LRPolicy\.Fixed\(0\.01\)"
            ),
        ),
        (
            lambda: MomPolicy.Staged((10, MomPolicy.Fixed)),
            (
                r"MomPolicy\.Staged stage .*: policy is the class Fixed; .*"
                r"MomPolicy\.Fixed\(0\.9\)"
            ),
        ),
        (
            lambda: LRPolicy.Staged((10, lambda: 0.1)),
            r"LRPolicy\.Staged stage .*: invalid policy=.* does not accept",
        ),
    ],
)
def test_staged_rejects_stage_policy_it_cannot_call(make_staged, match):
    with pytest.raises(mochac.ConfigError, match=match):
        make_staged()


@pytest.mark.parametrize(
    ("policies", "match"),
    [
        ({"lr_policy": LRPolicy.Fixed}, "lr_policy is the class Fixed"),
        ({"lr_policy": LRPolicy.DecayOnValidation}, "is the class DecayOnValidation"),
        ({"mom_policy": MomPolicy.Fixed}, r"such as MomPolicy\.Fixed\(0\.9\)"),
    ],
)
def test_policy_class_rejected(policies, match):
    with pytest.raises(mochac.ConfigError, match=match):
        make_solver_parameters(SGD(), max_iter=1, **policies)


@pytest.mark.parametrize("key", ["lr_policy", "mom_policy"])
@pytest.mark.parametrize("policy", [lambda: 0.1, lambda state, scale: 0.1])
def test_policy_signature_checked(key, policy):
    with pytest.raises(mochac.ConfigError, match=f"invalid {key}=.*signature"):
        make_solver_parameters(SGD(), max_iter=1, **{key: policy})


def test_policy_optional_arguments_accepted():
    params = make_solver_parameters(
        SGD(), max_iter=1, lr_policy=lambda state, scale=1.0: 0.1 * scale
    )
    assert params["lr_policy"](SolverState()) == pytest.approx(0.1)


def test_mom_policy_non_number_message():
    pattern = r"returned 'x' at iteration 0; .* as MomPolicy\.Fixed\(0\.9\) does"
    with pytest.raises(mochac.ConfigError, match=pattern):
        solve_with(mom_policy=constant("x"))


def test_decay_setup_rejects_invalid_arguments(tmp_path):
    _, solver, policy = decay_solver(tmp_path, "loss", [0.5])
    validation = ScriptedValidation("loss", [])
    with pytest.raises(mochac.ConfigError, match="setup got None as the validation"):
        setup(policy, None, solver)
    with pytest.raises(mochac.ConfigError, match="setup got 'x' as the solver"):
        setup(policy, validation, "x")
    assert validation.listeners == []
    with pytest.raises(mochac.ConfigError, match=r"invalid policy Fixed\(base_lr"):
        setup(LRPolicy.Fixed(0.1), validation, solver)


def test_decay_setup_twice_listens_once(tmp_path, caplog):
    """A second setup() with the same validation adds no second listener,
    which would hear each validation again and log it as decided already."""
    net, solver, policy = decay_solver(
        tmp_path, "loss", [0.7, 0.5, 0.6], higher_better=False
    )
    validation = solver.breaks[1][0]
    setup(policy, validation, solver)
    assert validation.listeners == [policy.on_validation]

    caplog.set_level(logging.INFO, logger="mochac")
    solver.solve(net)
    repeats = [
        record
        for record in caplog.records
        if "was decided on already" in record.getMessage()
    ]
    assert repeats == []
    assert policy(solver.state) == pytest.approx(0.05)
