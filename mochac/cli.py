"""The ``mochac`` command.

mochac compile net.py [-o DIR]   one importable module per Net in net.py
"""

from __future__ import annotations

import argparse
import json
import logging
import runpy
import sys
from pathlib import Path

from mochac.errors import MochacError
from mochac.passes.pipeline import PASS_NAMES

logger = logging.getLogger("mochac.cli")


def find_nets(path: Path):
    """Import ``path`` (its ``__main__`` block does not run); return its Nets."""
    from mochac.runtime.net import Net

    sys.path.insert(0, str(path.parent.resolve()))
    try:
        namespace = runpy.run_path(str(path), run_name="__mochac_compile__")
    finally:
        sys.path.pop(0)
    nets = []
    for value in namespace.values():
        if isinstance(value, Net) and all(value is not net for net in nets):
            nets.append(value)
    return nets


def compile_command(args) -> int:
    from mochac.codegen.module_writer import write_module
    from mochac.report import format_report, net_report, net_to_dot
    from mochac.runtime.net import Net

    path = Path(args.net_file)
    if not path.is_file():
        logger.error("%s: file not found", path)
        return 2
    nets = find_nets(path)
    if not nets:
        logger.error(
            "%s defines no Net at module level; build one, e.g. "
            'net = Net("name", CPUBackend(), layers)',
            path,
        )
        return 2
    out = Path(args.output)
    reports, dots = [], []
    for found in nets:
        # Rebuild with the command line's options; the cache makes an
        # unchanged net cost no compile.
        net = Net(
            found.name,
            found.backend,
            found.layers,
            force_backward=found.force_backward,
            phase=found.phase,
            opt_level=args.opt_level,
            disable=args.disable,
            keep=found.keep,
        )
        folder = write_module(net, out, path.name)
        print(f"net '{net.name}' -> {folder} (import {folder.name})")
        reports.append(net_report(net))
        dots.append(net_to_dot(net))
        if args.report:
            print(format_report(reports[-1]))
    if args.report_json:
        Path(args.report_json).write_text(json.dumps(reports, indent=1) + "\n")
    if args.dot:
        Path(args.dot).write_text("".join(dots))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mochac", description="Compile Mocha-style nets."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    compile_parser = commands.add_parser(
        "compile", help="write one importable module per Net defined in a Python file"
    )
    compile_parser.add_argument("net_file", help="Python file that defines Net objects")
    compile_parser.add_argument(
        "-o", "--output", default=".", help="folder for the modules (default: .)"
    )
    level = compile_parser.add_mutually_exclusive_group()
    level.add_argument(
        "-O0", dest="opt_level", action="store_const", const=0, help="run no pass"
    )
    level.add_argument(
        "-O1",
        dest="opt_level",
        action="store_const",
        const=1,
        help="run every pass (the default)",
    )
    compile_parser.add_argument(
        "--disable",
        action="append",
        default=[],
        metavar="PASS",
        help=f"skip a pass; repeatable; one of: {', '.join(PASS_NAMES)}",
    )
    compile_parser.add_argument(
        "--report", action="store_true", help="print what each pass changed per net"
    )
    compile_parser.add_argument(
        "--report-json", metavar="FILE", help="write the reports as JSON to FILE"
    )
    compile_parser.add_argument(
        "--dot",
        metavar="FILE",
        help="write each net's IR before and after the passes as Graphviz dot",
    )
    compile_parser.set_defaults(run=compile_command, opt_level=1)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s:%(name)s: %(message)s",
    )
    try:
        return args.run(args)
    except MochacError as error:
        logger.error("%s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
