"""The ``mochac`` command.

mochac compile net.py [-o DIR]   one importable module per Net in net.py
"""

from __future__ import annotations

import argparse
import logging
import runpy
import sys
from pathlib import Path

from mochac.errors import MochacError

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
    for net in nets:
        folder = write_module(net, out, path.name)
        print(f"net '{net.name}' -> {folder} (import {folder.name})")
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
    compile_parser.set_defaults(run=compile_command)
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
