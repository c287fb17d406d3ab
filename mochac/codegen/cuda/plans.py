"""Step lists of every layer family, one planner per CUDA template.

A planner receives the context that lowering built for the C backend (the
same dict the C template prints) and returns (forward steps, backward
steps). Kernel names follow ``<layer fn>_<what>[_<bottom>]`` and must match
the ``MOCHAC_KERNEL`` names its template in mochac/templates/cuda/ defines;
tests check both against the compiled output.
"""

from __future__ import annotations

from mochac.codegen.cuda.steps import Copy, Zero, launch, single_block

PLANNERS = {}


def planner(*families):
    """Register a step planner for the template families named."""

    def decorate(function):
        for family in families:
            PLANNERS[family] = function
        return function

    return decorate


def clear_unless_shared(pair, count):
    """Return the Zero step a bottom diff needs when no top diff reaches it."""
    if pair["dx"] is not None and not pair["acc"]:
        return [Zero(pair["dx"], count)]
    return []


@planner("pooling")
def pooling_steps(k):
    forward, backward = [], []
    for j, pair in enumerate(k["pairs"]):
        outputs = pair["NC"] * pair["OH"] * pair["OW"]
        inputs = pair["NC"] * pair["H"] * pair["W"]
        forward.append(launch(f"{k['fn']}_forward_{j}", outputs))
        if not k["in_backward"] or pair["dx"] is None:
            continue
        if pair["dy"] is None:
            backward += clear_unless_shared(pair, inputs)
        else:
            backward.append(launch(f"{k['fn']}_backward_{j}", inputs))
    return forward, backward


@planner("softmax")
def softmax_steps(k):
    forward, backward = [], []
    for j, pair in enumerate(k["pairs"]):
        positions = pair["outer"] * pair["inner"]
        forward.append(launch(f"{k['fn']}_forward_{j}", positions))
        if not k["in_backward"] or pair["dx"] is None:
            continue
        if pair["dy"] is None:
            backward += clear_unless_shared(pair, positions * pair["C"])
        else:
            backward.append(launch(f"{k['fn']}_backward_{j}", positions))
    return forward, backward


@planner("copy")
def copy_steps(k):
    forward, backward = [], []
    for j, pair in enumerate(k["pairs"]):
        forward.append(Copy(pair["x"], pair["y"], pair["size"]))
        if not k["in_backward"] or pair["dx"] is None:
            continue
        if pair["dy"] is None:
            backward += clear_unless_shared(pair, pair["size"])
        elif pair["acc"]:
            backward.append(launch(f"{k['fn']}_add_diff_{j}", pair["size"]))
        else:
            backward.append(Copy(pair["dy"], pair["dx"], pair["size"]))
    return forward, backward


@planner("split")
def split_steps(k):
    forward = [Copy(k["x"], top["y"], k["size"]) for top in k["tops"]]
    backward = []
    if k["in_backward"] and k["dx"] is not None:
        backward.append(launch(f"{k['fn']}_backward", k["size"]))
    return forward, backward


@planner("output")
def output_steps(k):
    return [], []


@planner("argmax")
def argmax_steps(k):
    forward = [
        launch(f"{k['fn']}_forward_{j}", pair["outer"] * pair["inner"])
        for j, pair in enumerate(k["pairs"])
    ]
    return forward, []


@planner("softmax_loss", "softlabel_softmax_loss")
def class_loss_steps(k):
    forward = [single_block(f"{k['fn']}_forward")]
    backward = []
    if k["in_backward"]:
        backward.append(launch(f"{k['fn']}_backward", k["outer"] * k["inner"]))
    return forward, backward


@planner("multinomial_logistic_loss")
def multinomial_logistic_loss_steps(k):
    forward = [single_block(f"{k['fn']}_forward")]
    backward = []
    if k["in_backward"]:
        positions = k["outer"] * k["inner"]
        if not k["acc"]:
            # Backward writes only the label class of each position.
            backward.append(Zero(k["dx"], positions * k["C"]))
        backward.append(launch(f"{k['fn']}_backward", positions))
    return forward, backward


@planner(
    "square_loss",
    "hinge_loss",
    "binary_cross_entropy_loss",
    "gaussian_kl_loss",
)
def elementwise_loss_steps(k):
    forward = [single_block(f"{k['fn']}_forward")]
    backward = []
    if k["in_backward"]:
        backward.append(launch(f"{k['fn']}_backward", k["size"]))
    return forward, backward


@planner("accuracy", "binary_accuracy")
def statistics_steps(k):
    return [single_block(f"{k['fn']}_forward")], []


@planner("channel_pooling")
def channel_pooling_steps(k):
    forward, backward = [], []
    for j, pair in enumerate(k["pairs"]):
        columns = pair["outer"] * pair["inner"]
        forward.append(launch(f"{k['fn']}_forward_{j}", columns))
        if not k["in_backward"] or pair["dx"] is None:
            continue
        # The kernel adds into the bottom diff, as the C code does after its memset.
        backward += clear_unless_shared(pair, columns * pair["C"])
        if pair["dy"] is not None:
            backward.append(launch(f"{k['fn']}_backward_{j}", columns))
    return forward, backward


@planner("concat")
def concat_steps(k):
    forward, backward = [], []
    for j, bottom in enumerate(k["bottoms"]):
        count = k["outer"] * bottom["chunk"]
        forward.append(launch(f"{k['fn']}_forward_{j}", count))
        if not k["in_backward"] or bottom["dx"] is None:
            continue
        if k["dy"] is None:
            backward += clear_unless_shared(bottom, count)
        else:
            backward.append(launch(f"{k['fn']}_backward_{j}", count))
    return forward, backward


@planner("crop")
def crop_steps(k):
    forward = [
        launch(f"{k['fn']}_forward_{j}", pair["N"] * pair["C"] * k["CH"] * k["CW"])
        for j, pair in enumerate(k["pairs"])
    ]
    if k["is_random"]:
        forward.append(single_block(f"{k['fn']}_advance"))
    return forward, []


@planner("dropout")
def dropout_steps(k):
    forward, backward = [], []
    for j, pair in enumerate(k["pairs"]):
        if k["train"]:
            forward.append(launch(f"{k['fn']}_forward_{j}", pair["size"]))
        elif not pair["in_place"]:
            forward.append(Copy(pair["x"], pair["y"], pair["size"]))
        if not k["in_backward"] or pair["dx"] is None:
            continue
        if pair["dy"] is None:
            backward += clear_unless_shared(pair, pair["size"])
        elif k["train"] or pair["acc"]:
            backward.append(launch(f"{k['fn']}_backward_{j}", pair["size"]))
        elif not pair["diff_in_place"]:
            backward.append(Copy(pair["dy"], pair["dx"], pair["size"]))
    if k["train"]:
        forward.append(single_block(f"{k['fn']}_advance"))
    return forward, backward


@planner("elementwise")
def elementwise_steps(k):
    forward = [launch(f"{k['fn']}_forward", k["size"])]
    backward = []
    if k["in_backward"]:
        if k["dy"] is None:
            for bottom in k["bottoms"]:
                backward += clear_unless_shared(bottom, k["size"])
        elif any(bottom["dx"] is not None for bottom in k["bottoms"]):
            backward.append(launch(f"{k['fn']}_backward", k["size"]))
    return forward, backward


@planner("index2onehot")
def index2onehot_steps(k):
    forward = []
    for j, pair in enumerate(k["pairs"]):
        forward.append(single_block(f"{k['fn']}_check_{j}"))
        count = pair["outer"] * k["C"] * pair["inner"]
        forward.append(launch(f"{k['fn']}_forward_{j}", count))
    return forward, []


@planner("lrn")
def lrn_steps(k):
    forward = [launch(f"{k['fn']}_forward", k["size"])]
    backward = []
    if k["in_backward"] and k["dx"] is not None:
        backward.append(launch(f"{k['fn']}_ratio", k["size"]))
        backward.append(launch(f"{k['fn']}_backward", k["size"]))
    return forward, backward


@planner("power")
def power_steps(k):
    forward, backward = [], []
    for j, pair in enumerate(k["pairs"]):
        forward.append(launch(f"{k['fn']}_forward_{j}", pair["size"]))
        if not k["in_backward"] or pair["dx"] is None:
            continue
        if pair["dy"] is None:
            backward += clear_unless_shared(pair, pair["size"])
        else:
            backward.append(launch(f"{k['fn']}_backward_{j}", pair["size"]))
    return forward, backward


@planner("random_normal")
def random_normal_steps(k):
    forward = [
        launch(f"{k['fn']}_forward_{j}", top["size"]) for j, top in enumerate(k["tops"])
    ]
    forward.append(single_block(f"{k['fn']}_advance"))
    return forward, []
