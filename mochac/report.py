"""Compile reports: what the passes did to a net, as text, JSON and Graphviz dot."""

from __future__ import annotations


def net_report(net) -> dict:
    """Return a JSON-ready summary of a compiled net's passes and memory."""
    memory = net.memory
    passes = [
        dict(report.to_json(), before=report.before, after=report.after)
        for report in net.pass_reports
    ]
    if net.plan is not None:
        passes.append(
            {
                "name": "plan_memory",
                "changes": [
                    (
                        f"{len(net.plan.offsets)} buffers placed in one arena of "
                        f"{net.plan.arena_bytes} bytes"
                    )
                ],
                "bytes_saved": net.plan.unplanned_bytes - net.plan.arena_bytes,
            }
        )
    return {
        "name": net.name,
        "opt_level": net.opt_level,
        "disabled": list(net.disable),
        "passes": passes,
        "before": net.counts_before,
        "after": net.counts_after,
        "kernels_per_iteration": {
            "before": net.counts_before["kernels"],
            "after": net.counts_after["kernels"],
        },
        "unplanned_bytes": memory.unplanned_bytes,
        "arena_bytes": net.plan.arena_bytes if net.plan else memory.unplanned_bytes,
        "peak_live_bytes": memory.peak_live_bytes,
    }


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.2f} MB"


def format_report(report: dict) -> str:
    """Return a report as aligned text lines for the terminal."""
    lines = [f"net '{report['name']}' at -O{report['opt_level']}"]
    before, after = report["before"], report["after"]
    lines.append(
        f"  layers {before['layers']} -> {after['layers']}, "
        f"blobs {before['blobs']} -> {after['blobs']}, "
        f"kernels per iteration {before['kernels']} -> {after['kernels']}"
    )
    lines.append(
        f"  blob data + diff {_megabytes(before['blob_bytes'])} -> "
        f"{_megabytes(after['blob_bytes'])}; with scratch: unplanned "
        f"{_megabytes(report['unplanned_bytes'])}, arena "
        f"{_megabytes(report['arena_bytes'])}, peak live "
        f"{_megabytes(report['peak_live_bytes'])}"
    )
    for item in report["passes"]:
        summary = f"  {item['name']}: {len(item['changes'])} change(s)"
        if "before" in item:
            summary += (
                f", layers {item['before']['layers']} -> {item['after']['layers']}, "
                f"kernels {item['before']['kernels']} -> {item['after']['kernels']}"
            )
        summary += f", {_megabytes(item['bytes_saved'])} saved"
        lines.append(summary)
        lines.extend(f"    {change}" for change in item["changes"])
    return "\n".join(lines)


def _quote(text: str) -> str:
    """Return ``text`` as a dot string; its ``\n`` sequences stay line breaks."""
    return '"' + text.replace('"', '\\"') + '"'


def ir_to_dot(ir, prefix: str, title: str) -> list[str]:
    """Return the lines of a dot cluster drawing ``ir``: layers as boxes, blobs as ovals.

    An eliminated layer is dashed; a blob that shares another blob's storage
    names that blob.
    """
    lines = [f"  subgraph cluster_{prefix} {{", f"    label={_quote(title)};"]
    for info in ir.layers:
        style = ', style="dashed", color="gray50"' if info.eliminated else ""
        label = f"{info.name}\\n{type(info.layer).__name__}"
        if info.fuse_neuron:
            label += f"\\n+ {type(info.layer.neuron).__name__}"
        lines.append(
            f"    {_quote(f'{prefix}:layer:{info.index}')} "
            f'[shape=box, label="{label}"{style}];'
        )
    for name, blob in ir.blobs.items():
        label = f"{name}\\n{blob.shape}"
        root = ir.data_root(name)
        if root != name:
            label += f"\\nstorage of {root}"
        lines.append(
            f"    {_quote(f'{prefix}:blob:{name}')} [shape=ellipse, label={_quote(label)}];"
        )
        lines.append(
            f"    {_quote(f'{prefix}:layer:{blob.producer}')} -> {_quote(f'{prefix}:blob:{name}')};"
        )
        for consumer in blob.consumers:
            lines.append(
                f"    {_quote(f'{prefix}:blob:{name}')} -> {_quote(f'{prefix}:layer:{consumer}')};"
            )
    lines.append("  }")
    return lines


def net_to_dot(net) -> str:
    """Return one Graphviz digraph with the IR before and after the passes."""
    lines = [f"digraph {_quote(net.name)} {{", "  rankdir=TB;"]
    lines += net.dot_before
    lines += ir_to_dot(net.ir, "after", f"{net.name}: after passes (-O{net.opt_level})")
    lines.append("}")
    return "\n".join(lines) + "\n"
