"""Render a net's IR as CUDA source plus the step list that runs it.

The lowering of the C backend decides every loop bound and slot index; this
module reuses its contexts unchanged. Each layer family has a CUDA template
(mochac/templates/cuda/<family>.cu.j2) that prints its kernels and a
planner (plans.py, gemm_plans.py) that lists the launches and GEMMs in the
order the C function runs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from mochac.codegen.c_source import loss_checks, slot_line, template_environment
from mochac.codegen.comments import comment_text
from mochac.codegen.cuda import gemm_plans  # noqa: F401  (registers its planners)
from mochac.codegen.cuda.contexts import ADJUSTMENTS
from mochac.codegen.cuda.plans import PLANNERS
from mochac.codegen.cuda.steps import (
    BLOCK,
    Launch,
    LayerSteps,
    describe_step,
    launch,
    step_problems,
)
from mochac.codegen.lowering import Kernel, lower_net
from mochac.codegen.slots import SlotTable
from mochac.errors import CompileError
from mochac.version import __version__

KERNEL_NAME = re.compile(r"^MOCHAC_KERNEL\((\w+)\)", re.MULTILINE)


@dataclass
class CudaProgram:
    """A net rendered for the CUDA backend.

    ``layers`` maps a layer index to its steps; ``forward`` and ``backward``
    are the whole iteration's steps in the order they run.
    """

    source: str
    slots: SlotTable
    kernels: list[Kernel]
    layers: dict[int, LayerSteps]
    forward: list
    backward: list

    def kernel_names(self) -> list[str]:
        """Return the names of the kernels the source defines, in order."""
        return KERNEL_NAME.findall(self.source)

    def problems(self) -> list[str]:
        """Return every inconsistency between the steps, the slots and the
        source (empty when the program is sound)."""
        defined = self.kernel_names()
        problems = [
            f"kernel {name} is defined more than once"
            for name in sorted({n for n in defined if defined.count(n) > 1})
        ]
        defined = set(defined)
        for step in (*self.forward, *self.backward):
            problems += step_problems(step, self.slots)
            if isinstance(step, Launch) and step.kernel not in defined:
                problems.append(f"launch {step.kernel}: no such kernel in the source")
        return problems


def family_of(kernel: Kernel) -> str:
    """Return the family name of a lowered layer, e.g. "convolution"."""
    return kernel.family


def layer_steps(kernel: Kernel, name: str) -> LayerSteps:
    """Return one layer's steps, with its neuron kernels when they run apart."""
    context = kernel.context
    try:
        plan = PLANNERS[family_of(kernel)]
    except KeyError:
        raise NotImplementedError(
            f"layer '{name}': the CUDA backend has no kernels for the "
            f"'{family_of(kernel)}' family"
        ) from None
    forward, backward = plan(context)
    if context["neuron_kernel"]:
        for j, pair in enumerate(context["pairs"]):
            forward.append(
                launch(f"{context['fn']}_neuron_forward_{j}", pair["top_size"])
            )
        if context["in_backward"]:
            backward = [
                launch(f"{context['fn']}_neuron_backward_{j}", pair["top_size"])
                for j, pair in enumerate(context["pairs"])
                if pair["dy"] is not None
            ] + backward
    return LayerSteps(kernel.layer_index, name, forward, backward)


def render_cuda(ir) -> CudaProgram:
    """Return the CUDA program of a net's IR (after its passes ran).

    Raises NotImplementedError for a layer family without CUDA kernels and
    CompileError when the steps and the source disagree, which is a bug in
    a template or a planner.
    """
    # The C backend's direct convolutions have no CUDA kernels; im2col's
    # contexts keep their scratch slots out of the device arena.
    slots, kernels = lower_net(ir, direct_convolutions=False)
    for kernel in kernels:
        kernel.context["comment"] = comment_text(kernel.context["comment"])
    for kernel in kernels:
        adjust = ADJUSTMENTS.get(family_of(kernel))
        if adjust is not None:
            adjust(kernel, ir.layers[kernel.layer_index], ir, slots)
    env = template_environment()
    texts, layers = [], {}
    for kernel in kernels:
        template = f"cuda/{family_of(kernel)}.cu.j2"
        texts.append(env.get_template(template).render(k=kernel.context).strip("\n"))
        layers[kernel.layer_index] = layer_steps(
            kernel, ir.layers[kernel.layer_index].name
        )
    forward = [
        step for kernel in kernels for step in layers[kernel.layer_index].forward
    ]
    backward = [
        step
        for index in ir.backward_order
        if index in layers
        for step in layers[index].backward
    ]

    def step_lines(order, phase):
        lines = []
        for index in order:
            if index in layers:
                for step in getattr(layers[index], phase):
                    line = f"{layers[index].name}: {describe_step(step)}"
                    lines.append(comment_text(line))
        return lines or ["none"]

    source = env.get_template("cuda/net.cu.j2").render(
        version=__version__,
        net_name=comment_text(ir.name),
        dtype=ir.dtype.name,
        ctype="double" if ir.dtype == np.float64 else "float",
        n_layers=len(ir.layers),
        block=BLOCK,
        slot_lines=[comment_text(slot_line(slot)) for slot in slots.slots],
        forward_lines=step_lines([k.layer_index for k in kernels], "forward"),
        backward_lines=step_lines(ir.backward_order, "backward"),
        kernel_texts=texts,
        loss_checks=loss_checks(ir, slots),
    )
    program = CudaProgram(source, slots, kernels, layers, forward, backward)
    problems = program.problems()
    if problems:
        raise CompileError(
            f"net '{ir.name}': the CUDA steps do not match the generated source: "
            + "; ".join(problems)
        )
    return program
