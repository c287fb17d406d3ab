"""Step lists of the layer families whose products go to cuBLAS.

Each planner reads the context that the C backend's lowering built for a
layer (``k``) and returns its forward and backward steps. The GEMMs are the
ones the C templates pass to cblas, with the same row-major shapes.
"""

from __future__ import annotations

from mochac.codegen.cuda.plans import planner
from mochac.codegen.cuda.steps import Zero, block_per_row, gemm, launch


@planner("convolution")
def convolution_steps(k):
    forward, backward = [], []
    image = k["N"] * k["C"] * k["H"] * k["W"]
    for j, pair in enumerate(k["pairs"]):
        forward.append(
            launch(f"{k['fn']}_im2col_{j}", k["C"] * k["KH"] * k["KW"] * k["NP"])
        )
        forward += group_gemms(k, "forward", beta=0)
        forward.append(launch(f"{k['fn']}_bias_{j}", k["N"] * k["F"] * k["P"]))
        if not k["in_backward"]:
            continue
        if pair["dy"] is None:
            if pair["dx"] is not None and not pair["acc"]:
                backward.append(Zero(pair["dx"], image))
            continue
        backward.append(launch(f"{k['fn']}_top_diff_{j}", k["F"] * k["NP"]))
        if k["filter_grad"] is not None:
            if len(k["pairs"]) > 1:
                backward.append(
                    launch(
                        f"{k['fn']}_im2col_{j}", k["C"] * k["KH"] * k["KW"] * k["NP"]
                    )
                )
            backward.append(block_per_row(f"{k['fn']}_bias_grad_{j}", k["F"]))
            backward += group_gemms(k, "filter_grad", beta=pair["beta"])
        if pair["dx"] is not None:
            backward += group_gemms(k, "col_diff", beta=0)
            backward.append(launch(f"{k['fn']}_col2im_{j}", image))
    return forward, backward


def group_gemms(k, which, beta):
    """Return one GEMM per filter group: the forward product, the filter
    gradient or the column diff."""
    fg, kk, np_ = k["FG"], k["K"], k["NP"]
    steps = []
    for g in range(k["G"]):
        filters = (k["filter"], g * fg * kk)
        columns = (k["col"], g * kk * np_)
        if which == "forward":
            steps.append(
                gemm(
                    False,
                    False,
                    fg,
                    np_,
                    kk,
                    filters,
                    columns,
                    (k["tmp"], g * fg * np_),
                )
            )
        elif which == "filter_grad":
            diff = (k["tmp_back"], g * fg * np_)
            gradient = (k["filter_grad"], g * fg * kk)
            steps.append(gemm(False, True, fg, kk, np_, diff, columns, gradient, beta))
        else:
            diff = (k["tmp_back"], g * fg * np_)
            steps.append(gemm(True, False, kk, np_, fg, filters, diff, columns))
    return steps


@planner("inner_product")
def inner_product_steps(k):
    forward, backward = [], []
    d, o = k["D"], k["O"]
    for j, pair in enumerate(k["pairs"]):
        n = pair["N"]
        # y (N x O) = x (N x D) * weight^T, weight stored (O x D).
        forward.append(
            gemm(False, True, n, o, d, (pair["x"], 0), (k["weight"], 0), (pair["y"], 0))
        )
        forward.append(launch(f"{k['fn']}_bias_{j}", n * o))
        if not k["in_backward"]:
            continue
        backward += dense_backward(k, j, pair, n, d, o, tied=False)
    return forward, backward


@planner("tied_inner_product")
def tied_inner_product_steps(k):
    forward, backward = [], []
    inputs, outputs = k["IN"], k["OUT"]
    for j, pair in enumerate(k["pairs"]):
        n = pair["N"]
        # y (N x OUT) = x (N x IN) * weight, weight stored (IN x OUT).
        forward.append(
            gemm(
                False,
                False,
                n,
                outputs,
                inputs,
                (pair["x"], 0),
                (k["weight"], 0),
                (pair["y"], 0),
            )
        )
        forward.append(launch(f"{k['fn']}_bias_{j}", n * outputs))
        if not k["in_backward"]:
            continue
        backward += dense_backward(k, j, pair, n, inputs, outputs, tied=True)
    return forward, backward


def dense_backward(k, j, pair, n, d, o, tied):
    """Return the backward steps of one bottom/top pair of an inner product.

    ``d`` is the bottom's width and ``o`` the top's; the untied weight is
    stored (o x d), the tied one (d x o).
    """
    steps = []
    if pair["dy"] is None:
        if pair["dx"] is not None and not pair["acc"]:
            steps.append(Zero(pair["dx"], n * d))
        return steps
    dy, x, weight = (pair["dy"], 0), (pair["x"], 0), (k["weight"], 0)
    if k["bias_grad"] is not None:
        steps.append(launch(f"{k['fn']}_bias_grad_{j}", o))
    if k["weight_grad"] is not None:
        gradient = (k["weight_grad"], 0)
        if tied:
            # weight_grad (d x o) = x^T (d x N) * dy (N x o)
            steps.append(gemm(True, False, d, o, n, x, dy, gradient, pair["beta"]))
        else:
            # weight_grad (o x d) = dy^T (o x N) * x (N x d)
            steps.append(gemm(True, False, o, d, n, dy, x, gradient, pair["beta"]))
    if k["bias_grad"] is None and k["has_neuron"]:
        steps.append(launch(f"{k['fn']}_neuron_diff_{j}", n * o))
    if pair["dx"] is not None:
        beta = 1 if pair["acc"] else 0
        # dx (N x d) = dy (N x o) * weight, read as (o x d).
        steps.append(gemm(False, tied, n, d, o, dy, weight, (pair["dx"], 0), beta))
    return steps
