"""L1Regu's subgradient and the L2Cons norm constraint, alone and in the solver."""

import math

import numpy as np
import pytest
from gradcheck import numeric_gradient

from mochac import (
    SGD,
    ConfigError,
    ConvolutionLayer,
    CPUBackend,
    InnerProductLayer,
    LRPolicy,
    MemoryDataLayer,
    MomPolicy,
    Net,
    Solver,
    SquareLossLayer,
    make_solver_parameters,
)
from mochac.constraints import L2Cons, NoCons, apply_constraints
from mochac.regularizers import L1Regu
from mochac.serialize import from_json, to_json

# --- L1Regu ------------------------------------------------------------------


def test_l1_regu_gradient_matches_penalty():
    rng = np.random.default_rng(51)
    param = rng.normal(size=(3, 4))
    regu = L1Regu(0.3)
    global_coef = 0.5

    def penalty():
        return global_coef * regu.coefficient * float(np.sum(np.abs(param)))

    # Away from 0 the penalty is smooth, so central differences apply.
    assert np.abs(param).min() > 1e-3
    expected = numeric_gradient(penalty, param)
    start = rng.normal(size=(3, 4))
    grad = start.copy()
    regu.add_gradient(param, grad, global_coef)
    np.testing.assert_allclose(grad - start, expected, rtol=1e-8, atol=1e-10)


def test_l1_regu_subgradient_at_zero():
    param = np.array([-2.0, 0.0, 3.0, -0.0], dtype=np.float32)
    grad = np.ones(4, dtype=np.float32)
    L1Regu(0.5).add_gradient(param, grad, 0.1)
    assert grad.dtype == np.float32
    # coefficient * regu_coef * sign(W), with no factor 2 and sign(0) = 0.
    np.testing.assert_allclose(grad, [0.95, 1.0, 1.05, 1.0], rtol=1e-6)


def test_l1_regu_zero_global_coefficient():
    grad = np.ones(3)
    L1Regu(2.0).add_gradient(np.array([1.0, -1.0, 0.0]), grad, 0.0)
    np.testing.assert_array_equal(grad, np.ones(3))


@pytest.mark.parametrize("value", [-1, math.inf, "1", None])
def test_l1_regu_invalid_coefficient(value):
    with pytest.raises(ConfigError, match=r"L1Regu: invalid coefficient="):
        L1Regu(value)


def test_l1_regu_in_sgd_update():
    rng = np.random.default_rng(54)
    x = rng.normal(size=(3, 4))
    target = rng.normal(size=(3, 2))
    layers = [
        MemoryDataLayer(name="data", batch_size=3, tops=["x", "t"], data=[x, target]),
        InnerProductLayer(
            name="ip",
            output_dim=2,
            weight_regu=L1Regu(2.0),
            bottoms=["x"],
            tops=["y"],
        ),
        SquareLossLayer(name="loss", bottoms=["y", "t"]),
    ]
    net = Net("l1", CPUBackend(dtype=np.float64, seed=8, threads=2), layers)
    weight = net.params["ip"]["weight"]
    weight[0, 0] = 0.0
    before = weight.copy()
    net.forward()
    net.backward()
    grad = net.grads["ip"]["weight"].copy()
    SGD().update(net, 0.1, 0.0, 0.01)
    expected = before - 0.1 * (grad + 2.0 * 0.01 * np.sign(before))
    np.testing.assert_allclose(weight, expected, rtol=1e-12)


# --- L2Cons by hand ----------------------------------------------------------


def test_l2_cons_weight_rows():
    weight = np.array(
        [
            [3.0, 4.0, 0.0, 0.0],  # norm 5: scaled to norm 2
            [0.5, 0.0, 0.0, 0.0],  # norm 0.5: kept
            [0.0, 0.0, -1.2, 1.6],  # norm 2: kept, since only norms above 2 shrink
        ]
    )
    L2Cons(2.0).apply(weight)
    expected = np.array(
        [
            [1.2, 1.6, 0.0, 0.0],
            [0.5, 0.0, 0.0, 0.0],
            [0.0, 0.0, -1.2, 1.6],
        ]
    )
    np.testing.assert_allclose(weight, expected, rtol=1e-12)


def test_l2_cons_each_filter():
    # Two filters of shape (1, 2, 2): norms 4 and 0.5.
    filters = np.array(
        [
            [[[2.0, -2.0], [2.0, 2.0]]],
            [[[0.25, 0.25], [0.25, -0.25]]],
        ],
        dtype=np.float32,
    )
    L2Cons(1.0).apply(filters)
    assert filters.dtype == np.float32
    expected = np.array(
        [
            [[[0.5, -0.5], [0.5, 0.5]]],
            [[[0.25, 0.25], [0.25, -0.25]]],
        ]
    )
    np.testing.assert_allclose(filters, expected, rtol=1e-6)


def test_l2_cons_bias_whole_vector():
    # Mocha constrains a bias as one vector: norm 3.640 scaled to 1.
    bias = np.array([-3.0, 0.5, 2.0])
    L2Cons(1.0).apply(bias)
    expected = np.array([-3.0, 0.5, 2.0]) / math.sqrt(13.25)
    np.testing.assert_allclose(bias, expected, rtol=1e-12)
    assert np.linalg.norm(bias) == pytest.approx(1.0, rel=1e-12)


def test_l2_cons_bias_small_elements_shrink():
    # Every element is below 1, but the norm is 1.5, so the vector shrinks.
    values = np.array([-0.8, 0.6, 0.6, 0.8, 0.5])
    bias = values.copy()
    L2Cons(1.6).apply(bias)
    np.testing.assert_array_equal(bias, values)
    L2Cons(1.0).apply(bias)
    np.testing.assert_allclose(bias, values / 1.5, rtol=1e-12)


def test_l2_cons_against_numpy_projection():
    rng = np.random.default_rng(52)
    weight = rng.normal(size=(6, 10))
    original = weight.copy()
    L2Cons(3.0).apply(weight)
    norms = np.linalg.norm(original, axis=1)
    assert np.any(norms > 3.0)
    assert np.any(norms < 3.0)
    for row, before, norm in zip(weight, original, norms):
        expected = before * 3.0 / norm if norm > 3.0 else before
        np.testing.assert_allclose(row, expected, rtol=1e-12)


def test_l2_cons_due():
    cons = L2Cons(1.0, every_n_iter=3)
    assert [cons.is_due(i) for i in range(1, 7)] == [
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    assert L2Cons(1.0).is_due(1)
    assert not NoCons().is_due(1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"threshold": 0}, "threshold"),
        ({"threshold": -1.0}, "threshold"),
        ({"threshold": math.inf}, "threshold"),
        ({"threshold": "1"}, "threshold"),
        ({"threshold": 1.0, "every_n_iter": 0}, "every_n_iter"),
        ({"threshold": 1.0, "every_n_iter": 1.5}, "every_n_iter"),
        ({"threshold": 1.0, "every_n_iter": True}, "every_n_iter"),
    ],
)
def test_l2_cons_invalid_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"L2Cons: invalid {field}="):
        L2Cons(**kwargs)


# --- constraints on layers ---------------------------------------------------


def test_layer_cons_defaults_and_specs():
    conv = ConvolutionLayer(
        name="conv",
        bottoms=["x"],
        tops=["y"],
        kernel=3,
        n_filter=2,
        filter_cons=L2Cons(1.5, every_n_iter=2),
    )
    assert conv.bias_cons == NoCons()
    specs = {spec.name: spec for spec in conv.param_specs([(1, 1, 5, 5)])}
    assert specs["filter"].constraint == L2Cons(1.5, every_n_iter=2)
    assert specs["bias"].constraint == NoCons()

    ip = InnerProductLayer(
        name="ip", output_dim=2, bottoms=["x"], tops=["y"], bias_cons=L2Cons(0.5)
    )
    assert ip.weight_cons == NoCons()
    specs = {spec.name: spec for spec in ip.param_specs([(1, 3)])}
    assert specs["weight"].constraint == NoCons()
    assert specs["bias"].constraint == L2Cons(0.5)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (
            lambda: InnerProductLayer(
                name="ip", output_dim=2, bottoms=["x"], tops=["y"], weight_cons=1.0
            ),
            "weight_cons",
        ),
        (
            lambda: ConvolutionLayer(
                name="conv", bottoms=["x"], tops=["y"], filter_cons="L2Cons(1)"
            ),
            "filter_cons",
        ),
        (
            lambda: ConvolutionLayer(
                name="conv", bottoms=["x"], tops=["y"], bias_cons=None
            ),
            "bias_cons",
        ),
    ],
)
def test_layer_invalid_cons(make, field):
    with pytest.raises(ConfigError, match=rf"'(ip|conv)': invalid {field}="):
        make()


def test_layer_cons_serialize_round_trip():
    layer = InnerProductLayer(
        name="ip",
        bottoms=["x"],
        tops=["y"],
        output_dim=2,
        weight_cons=L2Cons(2.5, every_n_iter=4),
    )
    copy = from_json(to_json(layer))
    assert copy.weight_cons == L2Cons(2.5, every_n_iter=4)
    assert copy.bias_cons == NoCons()


# --- constraints in a net and through the solver -----------------------------

THRESHOLD = 0.2
EVERY = 3


def constrained_layers():
    rng = np.random.default_rng(53)
    x = rng.normal(size=(4, 6))
    target = 10 * rng.normal(size=(4, 3))
    return [
        MemoryDataLayer(name="data", batch_size=4, tops=["x", "t"], data=[x, target]),
        InnerProductLayer(
            name="ip",
            output_dim=3,
            weight_cons=L2Cons(THRESHOLD, every_n_iter=EVERY),
            bottoms=["x"],
            tops=["y"],
        ),
        SquareLossLayer(name="loss", bottoms=["y", "t"]),
    ]


@pytest.fixture(scope="module")
def net():
    return Net(
        "constrained",
        CPUBackend(dtype=np.float64, seed=7, threads=2),
        constrained_layers(),
    )


def row_norms(net):
    return np.linalg.norm(net.params["ip"]["weight"], axis=1)


def test_apply_constraints_when_due(net):
    weight = net.params["ip"]["weight"]
    bias = net.params["ip"]["bias"]
    weight[...] = np.arange(18.0).reshape(3, 6)
    bias[...] = [5.0, -5.0, 5.0]
    expected = weight * (THRESHOLD / np.linalg.norm(weight, axis=1))[:, np.newaxis]

    apply_constraints(net, EVERY - 1)
    np.testing.assert_array_equal(weight, np.arange(18.0).reshape(3, 6))

    apply_constraints(net, EVERY)
    np.testing.assert_allclose(weight, expected, rtol=1e-12)
    # The bias has no constraint.
    np.testing.assert_array_equal(bias, [5.0, -5.0, 5.0])


def test_solver_honours_every_n_iter(net):
    # A large learning rate pushes some row past the threshold at each step.
    params = make_solver_parameters(
        SGD(),
        max_iter=0,
        regu_coef=0.0,
        lr_policy=LRPolicy.Fixed(0.5),
        mom_policy=MomPolicy.Fixed(0.0),
    )
    solver = Solver(SGD(), params)
    norms = {}
    for iteration in range(1, 2 * EVERY + 1):
        solver.params["max_iter"] = iteration
        solver.solve(net)
        assert solver.state.iter == iteration
        norms[iteration] = row_norms(net)
    for iteration, values in norms.items():
        if iteration % EVERY == 0:
            np.testing.assert_array_less(values, THRESHOLD * (1 + 1e-12))
            assert values.max() == pytest.approx(THRESHOLD, rel=1e-12)
        else:
            assert values.max() > THRESHOLD, f"iteration {iteration}: {values}"
