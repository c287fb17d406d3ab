"""The ``mochac`` command.

mochac compile net.py [-o DIR]        one importable module per Net in net.py
mochac bench NET                      time a built-in net or a net file's Net
                                      against PyTorch
mochac plot statistics.h5 [-o PNG]    draw learning curves

Output file options create missing folders. The text options --dot,
--report-json and --json write to standard output when given "-".

Every command exits with status 0 when it succeeds, 2 when an argument names
a missing file or an invalid value (UsageError, as argparse does), and 1 when
the work itself fails, such as a net file that raises (a SyntaxError in it
is status 2) or a file that holds no statistics.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import difflib
import functools
import gc
import inspect
import json
import logging
import os
import runpy
import sys
import sysconfig
import traceback
import weakref
from pathlib import Path

import numpy as np

from mochac.durable_files import special_file_kind, temporary_path
from mochac.errors import ConfigError, MochacError
from mochac.layers.output import OutputLayer
from mochac.passes.pipeline import PASS_NAMES, enabled_passes
from mochac.version import __version__

logger = logging.getLogger("mochac.cli")

# The batch size of `mochac bench`'s built-in nets when --batch is not given.
DEFAULT_BENCH_BATCH = 64


class UsageError(MochacError):
    """A command-line argument names a file or value the command cannot use.

    ``main`` logs the message and exits with status 2, as argparse does.
    """


class NetFileError(MochacError):
    """Building a net of the net file failed; the message starts with the
    file's path. ``main`` exits with status 1."""


# An output file option given as "-" writes its text to standard output.
STDOUT = "-"


class OutputFileError(MochacError):
    """An output file or its folder cannot be written. ``main`` exits with
    status 1."""


def check_output_file(path, option: str) -> None:
    """Raise UsageError unless ``path`` can be created as a file.

    Commands call this before their work, so that a path below a file fails
    at once instead of after a compile or a benchmark run. Missing folders
    are accepted, because write_output_file creates them. Callers handle
    STDOUT before calling this.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder; name a file")
    blocking = first_non_folder_parent(path)
    if blocking is not None:
        raise UsageError(
            f"{option} {path}: {blocking} is not a folder, so no file can be "
            "created below it; name a file in a folder"
        )


def first_non_folder_parent(path: Path) -> Path | None:
    """Return the nearest existing parent of ``path`` when it is not a folder
    (a file, a device), else None, also when every parent is missing."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def create_parent_folder(path: Path, option: str) -> None:
    """Create the missing folders above ``path``, the value of ``option``.

    Raises OutputFileError naming the option and the folder when that fails,
    such as for a folder without write permission.
    """
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputFileError(
            f"{option} {path}: cannot create folder {folder}: "
            f"{error.strerror or error}; name a file in a folder you can write to"
        ) from error


def output_target(value: str) -> Path | str:
    """Return where an output file option's ``value`` writes: STDOUT, or the
    absolute path, since a net file may change the working directory.

    Only "-" itself is STDOUT, so "./-" names a file called "-".
    """
    return STDOUT if value == STDOUT else Path(value).absolute()


def write_output_file(target: Path | str, text: str, option: str) -> None:
    """Write ``text`` to ``target``, the output_target of ``option``'s value,
    creating the file's folder first, or to standard output for STDOUT.

    The text goes to a temporary file that replaces ``target`` when
    complete, so a failed write leaves an earlier file as it was.
    """
    if target == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    create_parent_folder(target, option)
    temporary = temporary_path(target)
    try:
        temporary.write_text(text)
        os.replace(temporary, target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise output_file_error(target, option, error) from error


def output_file_error(path: Path, option: str, error: OSError) -> OutputFileError:
    """Return the error for an OSError that writing ``path`` of ``option`` raised."""
    return OutputFileError(
        f"{option} {path}: cannot write the file: {error.strerror or error}; name "
        "a file in a folder you can write to, on a disk with free space"
    )


def positive_int(text: str) -> int:
    """Parse an option value that must be an integer >= 1 (for argparse)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@contextlib.contextmanager
def cpu_in_place_of_gpu():
    """Make ``GPUBackend(...)`` build a CPUBackend of the same dtype and seed.

    The nets of a file run by ``mochac compile`` then build without CuPy or
    a device. The command renders them for the backend it is asked for.
    """
    import mochac
    from mochac.runtime import gpu_backend
    from mochac.runtime.backend import CPUBackend

    def stand_in(device=None, dtype=np.float32, seed=None, graphs=True):
        return CPUBackend(dtype=dtype, seed=seed)

    saved = gpu_backend.GPUBackend
    gpu_backend.GPUBackend = mochac.GPUBackend = stand_in
    try:
        yield
    finally:
        gpu_backend.GPUBackend = mochac.GPUBackend = saved


def find_nets(path: Path, passes: dict | None = None) -> dict[str, object]:
    """Import ``path`` (its ``__main__`` block does not run); return its Nets.

    The result maps where each Net was found (``tiny``, ``nets[0]``,
    ``models['lenet']``) to the Net, in the file's order. Nets are found in
    module-level variables and in the lists, tuples and dict values they
    hold, at any depth; a Net held twice is returned once. Nets built during
    the import that are still alive but held elsewhere (an object's
    attribute, a set) get a warning that names them, unless a module that
    the file imported contains them. A GPUBackend in the file builds as a
    CPUBackend (cpu_in_place_of_gpu). ``passes``, a dict of the Net
    arguments opt_level and disable, replaces the file's own in the Nets
    built during the import where that is safe (with_command_passes), so
    that the import compiles the code the command needs rather than code of
    other passes.

    Raises UsageError for a syntax error and NetFileError when the file
    raises another exception or exits during import.
    """
    modules_before = set(sys.modules)
    folder_entry = str(path.parent.resolve())
    sys.path.insert(0, folder_entry)
    try:
        with cpu_in_place_of_gpu(), recording_built_nets(passes) as built:
            namespace = runpy.run_path(str(path), run_name="__mochac_compile__")
    except SyntaxError as error:
        # The file may import a module of its own that has the error, so the
        # message names the error's file, not ``path``.
        raise UsageError(
            f"{error.filename or path}, line {error.lineno}: {type(error).__name__}: "
            f"{error.msg}; fix the net file and run the command again"
        ) from None
    except MochacError as error:
        # The error names the layer or blob, and the prefix names the file.
        raise NetFileError(f"{path}: {error}") from error
    except SystemExit as error:
        raise NetFileError(
            f"{path}: the file exited during import with {exit_status(error)}, so "
            "mochac cannot read its nets; move the code that exits, such as "
            'argument parsing, under `if __name__ == "__main__":`\n'
            f"{format_user_traceback(error, path)}"
        ) from None
    except Exception as error:
        raise NetFileError(
            f"{path}: the file raised {type(error).__name__} during import\n"
            f"{format_user_traceback(error, path)}"
        ) from error
    finally:
        remove_path_entry(folder_entry)
    nets = collect_nets(namespace)
    new_modules = [sys.modules[name] for name in set(sys.modules) - modules_before]
    warn_unreachable_nets(path, built, nets.values(), new_modules)
    return nets


def remove_path_entry(entry: str) -> None:
    """Remove ``entry`` itself from sys.path, wherever the net file moved it.

    The net file may insert, remove or reorder entries, and may add an equal
    string of its own, so the entry is found by identity. Nothing is removed
    when the file already removed it.
    """
    for index, item in enumerate(sys.path):
        if item is entry:
            del sys.path[index]
            return


@contextlib.contextmanager
def recording_built_nets(passes: dict | None = None):
    """Record a weak reference to each Net built inside the ``with`` block.

    The references let find_nets name the nets that a file built but keeps
    where collect_nets does not look, without keeping dropped nets alive.
    With ``passes`` (the Net arguments opt_level and disable), a Net is
    built with them in place of its own where with_command_passes allows,
    and an INFO line names both lists when they differ.
    """
    from mochac.runtime.net import Net

    built: list[weakref.ref] = []
    original_init = Net.__init__
    signature = inspect.signature(original_init)

    @functools.wraps(original_init)
    def recording_init(self, *args, **kwargs):
        if passes is not None:
            kwargs = with_command_passes(signature, self, args, kwargs, passes)
        original_init(self, *args, **kwargs)
        built.append(weakref.ref(self))

    Net.__init__ = recording_init
    try:
        yield built
    finally:
        Net.__init__ = original_init


def with_command_passes(signature, net, args, kwargs, passes: dict) -> dict:
    """Return the keyword arguments of a Net(...) call in a net file with the
    command line's ``passes`` in place of the call's own.

    The call is returned unchanged when Net would reject it (a missing
    argument, an unknown pass), so that Net raises its own error for it. It
    is also returned unchanged, and with_passes_of_command builds the net
    again after the import, when the call loads a compiled package's code
    (load_net), which only runs with the package's passes, or when the
    command runs passes other than the call's. The file's own code may read
    a blob during the import that only the call's passes leave readable,
    such as a split or identity top that aliases a kept blob, or any blob at
    opt_level 0. A net built without passes (-O0) leaves every blob
    readable, so -O0 replaces the call's passes.
    """

    if isinstance(kwargs.get("disable"), collections.abc.Iterator):
        # A generator yields its names once, to the check below, and Net
        # would get none of them, so both get the same tuple.
        kwargs = {**kwargs, "disable": tuple(kwargs["disable"])}
    try:
        call = signature.bind(net, *args, **kwargs)
        call.apply_defaults()
        file_passes = enabled_passes(
            call.arguments["opt_level"], call.arguments["disable"]
        )
    except (TypeError, ConfigError):
        return kwargs
    if call.arguments["_prebuilt"] is not None:
        return kwargs
    command_passes = enabled_passes(passes["opt_level"], passes["disable"])
    if command_passes == file_passes:
        return {**kwargs, **passes}
    if command_passes:
        return kwargs
    logger.info(
        "net '%s': building it with the command line's passes (none) in place "
        "of the net file's (%s)",
        call.arguments["name"],
        ", ".join(file_passes),
    )
    return {**kwargs, **passes}


def collect_nets(namespace: dict) -> dict[str, object]:
    """Return the Nets of a module namespace, keyed by where each was found.

    Lists, tuples and dict values are searched at any depth, in order. A
    Net or container reached again (an alias, a cycle) is skipped.
    """
    from mochac.runtime.net import Net

    nets: dict[str, Net] = {}
    seen: set[int] = set()
    # A stack in place of recursion, so that containers nested deeper than
    # Python's recursion limit are searched too. Items are pushed in reverse
    # so that they are visited in order.
    pending = [
        (value, name)
        for name, value in reversed(namespace.items())
        if name != "__builtins__"
    ]
    while pending:
        value, where = pending.pop()
        if id(value) in seen:
            continue
        if isinstance(value, Net):
            seen.add(id(value))
            nets[where] = value
        elif isinstance(value, (list, tuple)):
            seen.add(id(value))
            items = [(item, f"{where}[{index}]") for index, item in enumerate(value)]
            pending.extend(reversed(items))
        elif isinstance(value, dict):
            seen.add(id(value))
            items = [(item, f"{where}[{key!r}]") for key, item in value.items()]
            pending.extend(reversed(items))
    return nets


def warn_unreachable_nets(path: Path, built: list, found, new_modules: list) -> None:
    """Log a warning naming the nets built by ``path`` that collect_nets missed.

    Nets in the namespace of a module that the file imported, such as
    another net file, belong to that module and get no warning.
    """
    found_ids = {id(net) for net in found}
    if any(id(reference()) not in found_ids for reference in built):
        # A dropped net in a reference cycle lives until the collector runs.
        gc.collect()
    missed = [reference() for reference in built]
    missed = [net for net in missed if net is not None and id(net) not in found_ids]
    if not missed:
        return
    for module in new_modules:
        # sys.modules may contain None, or objects other than modules.
        module_namespace = getattr(module, "__dict__", None)
        if isinstance(module_namespace, dict):
            held_ids = {id(net) for net in collect_nets(module_namespace).values()}
            missed = [net for net in missed if id(net) not in held_ids]
    if missed:
        logger.warning(
            "%s: net(s) %s are built during import but not held in a "
            "module-level variable, list, tuple or dict, so mochac skips them; "
            "assign each to a module-level variable to use it",
            path,
            ", ".join(f"'{net.name}'" for net in missed),
        )


def exit_status(error: SystemExit) -> str:
    """Describe the exit status that ``error`` gives the interpreter."""
    if error.code is None:
        return "status 0"
    if isinstance(error.code, int):
        return f"status {error.code}"
    # sys.exit("text") prints the text and exits with status 1.
    return f"status 1 (sys.exit({error.code!r}))"


def library_folders() -> tuple[str, ...]:
    """Return the folders of mochac, the standard library and installed packages."""
    folders = {str(Path(__file__).resolve().parent)}
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if key in paths:
            folders.add(str(Path(paths[key]).resolve()))
    return tuple(folder + os.sep for folder in sorted(folders))


def format_user_traceback(error: BaseException, path: Path) -> str:
    """Return the traceback of an error raised while importing ``path``.

    With -v (debug logging) it is the full traceback. Otherwise it keeps the
    frames of the user's files alone: the first frame of ``path`` and those
    after it, less the frames in mochac, the standard library, installed
    packages and frozen modules (runpy's).
    """
    if logger.isEnabledFor(logging.DEBUG):
        return "".join(traceback.format_exception(error)).rstrip("\n")
    frames = traceback.extract_tb(error.__traceback__)
    net_file = str(path.resolve())
    starts = [
        index
        for index, frame in enumerate(frames)
        if str(Path(frame.filename).resolve()) == net_file
    ]
    libraries = library_folders()
    user_frames = [
        frame
        for frame in frames[starts[0] if starts else len(frames) :]
        if frame.filename == str(path)
        or not (
            frame.filename.startswith("<")
            or str(Path(frame.filename).resolve()).startswith(libraries)
        )
    ]
    lines = []
    if user_frames:
        lines.append(
            "Traceback of the net file (run mochac with -v for the full one):\n"
        )
        lines += traceback.format_list(user_frames)
    lines += traceback.format_exception_only(type(error), error)
    return "".join(lines).rstrip("\n")


def check_net_file(path: Path) -> None:
    """Raise UsageError unless ``path`` is a file, naming a folder as such."""
    if path.is_dir():
        scripts = sorted(entry.name for entry in path.glob("*.py"))
        hint = f" (Python files in it: {', '.join(scripts[:5])})" if scripts else ""
        raise UsageError(
            f"{path}: is a folder; pass the Python file that defines the nets{hint}"
        )
    if not path.is_file():
        kind = special_file_kind(path)
        problem = f"is {kind}, not a regular file" if kind else "file not found"
        raise UsageError(
            f"{path}: {problem}; pass the Python file that defines the nets"
        )


def destroy_imported_net(net) -> None:
    """Destroy a net that the net file built when it was imported.

    The HDF5OutputLayer files that got no batch are deleted instead of moved
    to their filenames. So compiling or timing a net file neither replaces an
    existing output file with an empty one nor leaves one behind, which would
    stop the rebuilt net of a layer without force_overwrite.
    """
    from mochac.runtime.outputs import HDF5Output

    for state in net.output_states.values():
        if isinstance(state, HDF5Output):
            state.discard_if_empty()
    net.destroy()


def with_passes_of_command(found, args):
    """Return ``found``, or a net built again from its layers when its passes
    differ from the command line's.

    find_nets builds the nets of the import with the command line's passes
    where that is safe (with_command_passes). A net is built again when it
    was built with other passes: during the import, or before it, such as
    one that a module imported earlier in this process contains. Its net
    is destroyed first, so that its output files and data sources are free
    for the new one. The shared parameters stay with the backend.
    """
    from mochac.runtime.net import Net

    found_passes = enabled_passes(found.opt_level, found.disable)
    command_passes = enabled_passes(args.opt_level, args.disable)
    if command_passes == found_passes:
        return found
    logger.info(
        "net '%s': building it again with the command line's passes (%s) in "
        "place of the ones it was built with (%s)",
        found.name,
        ", ".join(command_passes) or "none",
        ", ".join(found_passes) or "none",
    )
    destroy_imported_net(found)
    return Net(
        found.name,
        found.backend,
        found.layers,
        force_backward=found.force_backward,
        phase=found.phase,
        opt_level=args.opt_level,
        disable=args.disable,
        keep=found.keep,
    )


def compile_command(args) -> int:
    path = Path(args.net_file)
    check_net_file(path)
    files = {
        option: value
        for option, value in (("--report-json", args.report_json), ("--dot", args.dot))
        if value
    }
    check_stdout_options(files)
    for option, value in files.items():
        if value != STDOUT:
            check_output_file(value, option)
    out = Path(args.output)
    check_output_folder(args.output)
    for option, value in files.items():
        if value != STDOUT and Path(value).resolve() == out.resolve():
            raise UsageError(f"{option} {value}: is the -o folder; name a file instead")
    # The net file may change the working directory while it runs, so the
    # files are written to absolute paths and named as given.
    out_dir = out.absolute()
    source_file = path.absolute()
    targets = {option: output_target(value) for option, value in files.items()}
    # The options are checked before the file runs and builds its nets.
    check_pass_options(args)
    texts = {}
    # While an option writes to standard output, everything else the command
    # and the net file print goes to stderr, so that the output stays valid.
    with printing_to_stderr(STDOUT in files.values()):
        status = compile_nets(path, out, out_dir, source_file, args, texts)
    for option, target in targets.items():
        if option in texts:
            write_output_file(target, texts[option], option)
    return status


def compile_nets(
    path: Path, out: Path, out_dir: Path, source_file: Path, args, texts: dict
) -> int:
    """Build the nets of ``path`` and write one module per net into ``out_dir``.

    Returns the exit status. Fills ``texts`` with the text of each requested
    --report-json and --dot option, by option, which the caller writes.
    """
    from mochac.codegen.module_writer import check_package_folder, write_module
    from mochac.report import format_report, net_report, net_to_dot

    found_nets = find_nets(path, {"opt_level": args.opt_level, "disable": args.disable})
    if not found_nets:
        logger.error(
            "%s defines no Net at module level (in a variable, or a list, tuple "
            'or dict); build one, e.g. net = Net("name", CPUBackend(), layers)',
            path,
        )
        return 2
    if args.backend == "cuda":
        return compile_cuda(found_nets, out, out_dir, source_file, args)
    packages = output_names(found_nets, out_dir, source_file, "package {name}")
    if packages is None:
        return 2
    # Every package folder is checked before any is written.
    for package in packages.values():
        if (out_dir / package).exists():
            check_package_folder(out_dir / package)
    reports, dots = [], []
    for found in found_nets.values():
        net = with_passes_of_command(found, args)
        folder = write_module(net, out_dir, source_file)
        print(f"net '{net.name}' -> {out / folder.name} (import {folder.name})")
        reports.append(net_report(net))
        dots.append(net_to_dot(net))
        if args.report:
            print(format_report(reports[-1]))
    if args.report_json:
        texts["--report-json"] = json.dumps(reports, indent=1) + "\n"
    if args.dot:
        texts["--dot"] = "".join(dots)
    return 0


def check_stdout_options(files: dict[str, str]) -> None:
    """Raise UsageError when more than one option of ``files`` (option ->
    value) is STDOUT, because their texts would mix there."""
    to_stdout = [option for option, value in files.items() if value == STDOUT]
    if len(to_stdout) > 1:
        raise UsageError(
            f"{' and '.join(f'{option} -' for option in to_stdout)}: only one "
            "option can write to standard output; name a file for the others"
        )


def check_output_folder(value: str) -> None:
    """Raise UsageError unless compile's -o ``value`` can be used as a folder."""
    if value == STDOUT:
        raise UsageError(
            "-o -: mochac compile writes a folder of Python packages, which "
            "cannot go to standard output; name a folder (./- for a folder "
            "named '-')"
        )
    out = Path(value)
    if out.exists() and not out.is_dir():
        raise UsageError(f"-o {out}: exists and is not a folder; name a folder")
    blocking = first_non_folder_parent(out)
    if blocking is not None:
        raise UsageError(
            f"-o {out}: {blocking} is not a folder, so no folder can be created "
            "below it; name a folder"
        )


@contextlib.contextmanager
def printing_to_stderr(enabled: bool):
    """Send what print() writes during the block to stderr when ``enabled``.

    Only sys.stdout is redirected. A child process that writes to file
    descriptor 1 itself still reaches standard output.
    """
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def output_names(
    found_nets: dict, out_dir: Path, source_file: Path, output: str
) -> dict[str, str] | None:
    """Return the name of each net's output by where find_nets found the net.

    Both backends name their output as module_name does: a package for the
    CPU, and the stem of the .cu and .steps.json files for CUDA. ``output``
    names that output in the error, with ``{name}`` in place of the name.
    Logs an error and returns None when two nets would get the same name.
    """
    from mochac.codegen.module_writer import module_name

    names: dict[str, str] = {}
    owners: dict[str, str] = {}
    for where, found in found_nets.items():
        name = module_name(found.name, out_dir, source_file)
        if name in owners:
            other_where = owners[name]
            logger.error(
                "nets '%s' (%s) and '%s' (%s) would both be written as %s; "
                "rename one of them",
                found_nets[other_where].name,
                other_where,
                found.name,
                where,
                output.format(name=name),
            )
            return None
        names[where] = name
        owners[name] = where
    return names


def compile_cuda(found_nets: dict, out: Path, out_dir: Path, source_file, args) -> int:
    """Write each net's CUDA source and step list (no CuPy or device needed)
    into ``out_dir``, the absolute path of the -o folder ``out``.

    The files are named as the CPU backend names its packages (output_names).
    """
    from mochac.codegen.cuda import build_cuda_program, write_cuda_files
    from mochac.codegen.cuda.export import check_cuda_files

    ignored = [
        option
        for option, value in (
            ("--report", args.report),
            ("--report-json", args.report_json),
            ("--dot", args.dot),
        )
        if value
    ]
    if ignored:
        logger.error(
            "%s: the pass reports come from the CPU build; run the same "
            "command without --backend cuda for them (the passes are the same)",
            ", ".join(ignored),
        )
        return 2
    stems = output_names(
        found_nets, out_dir, source_file, "{name}.cu and {name}.steps.json"
    )
    if stems is None:
        return 2
    # Every file is checked before any is written.
    for stem in stems.values():
        check_cuda_files(out_dir, stem)
    for where, found in found_nets.items():
        stem = stems[where]
        _, program = build_cuda_program(
            found.name,
            found.layers,
            dtype=found.backend.dtype,
            opt_level=args.opt_level,
            disable=args.disable,
            keep=found.keep,
            phase=found.phase,
            force_backward=found.force_backward,
        )
        paths = write_cuda_files(program, out_dir, stem)
        shown = ", ".join(str(out / path.name) for path in paths)
        print(f"net '{found.name}' -> {shown}")
    print(
        "These files are for reading and for tools; no mochac command loads "
        "them. To run a net on the GPU, build it in Python with Net(name, "
        "GPUBackend(), layers), which renders and compiles its CUDA source "
        "itself. Without --backend cuda, mochac compile writes an importable "
        "CPU package per net."
    )
    return 0


def bench_command(args) -> int:
    check_pass_options(args)
    json_target = None
    if args.json:
        if args.json != STDOUT:
            check_output_file(args.json, "--json")
        json_target = output_target(args.json)
    # With --json -, the tables and whatever the net file prints go to
    # stderr, so that standard output is the JSON report alone.
    with printing_to_stderr(json_target == STDOUT):
        factory = bench_factory(args)
        if factory is None:
            return 2
        report = run_bench(factory, args, json_target)
    # NOTE: so with --json - and --profile, a profile that fails leaves no
    # report on standard output, unlike a --json file.
    if json_target == STDOUT:
        write_json_report(report, json_target)
    return 0


def bench_factory(args):
    """Return the layers factory of the net that ``mochac bench`` times.

    Sets ``args.batch`` (file_net_factory) and, for a net file,
    ``args.no_inference``. Logs an error and returns None when ``args.net``
    names no built-in net, no file or a file without a net to train.
    """
    from mochac.bench.nets import BUILTIN

    if args.net in BUILTIN:
        if args.batch is None:
            args.batch = DEFAULT_BENCH_BATCH
        return BUILTIN[args.net]
    path = Path(args.net)
    if not path.exists():
        logger.error(
            "%s is neither a built-in net (%s) nor a file; pass one of those "
            "names, or the path of a Python file that defines a Net with a loss",
            args.net,
            ", ".join(BUILTIN),
        )
        return None
    check_net_file(path)
    # With the passes of the timed nets, the timed net loads the extension
    # that the import compiled, unless --batch, a dtype other than
    # float32 or an output layer makes its C code differ. Unless at -O0, a
    # Net call of the file that sets other passes keeps them for the import
    # (with_command_passes), so the timed net compiles its own code too.
    found = find_nets(
        path, {"opt_level": args.opt_level, "disable": tuple(args.disable)}
    )
    nets = [net for net in found.values() if net.ir.backward_order]
    if not nets:
        defined = ", ".join(f"'{net.name}'" for net in found.values())
        logger.error(
            "%s defines no Net with a loss to train%s; mochac bench times "
            "training, so add a loss layer to one of its nets",
            path,
            f" (its nets without one: {defined})" if defined else "",
        )
        return None
    factory = file_net_factory(path, nets[0], args)
    # The timed nets are built from the layers; the nets of the import
    # would hold their output files and data sources meanwhile.
    for net in found.values():
        destroy_imported_net(net)
    others = ", ".join(f"'{net.name}'" for net in nets[1:])
    logger.info(
        "%s: timing net '%s'%s",
        path,
        nets[0].name,
        f" (the first with a loss; also defined: {others})" if others else "",
    )
    if not args.no_inference:
        logger.info(
            "%s: inference is timed for built-in nets only; timing training alone",
            path,
        )
        args.no_inference = True
    return factory


def run_bench(factory, args, json_target: Path | str | None) -> dict:
    """Time the net of ``factory`` as ``args`` ask, print the tables and
    return the report.

    A file ``json_target`` gets the report as soon as the timings are done,
    and again with the profile. The caller writes the report to STDOUT, once,
    because a second JSON document there would make the output unparsable.
    """
    from mochac.bench.runner import bench, format_bench

    if json_target == STDOUT:
        json_target = None

    if args.backend == "cuda":
        from mochac.bench.gpu_runner import bench_gpu, format_gpu_bench

        report = bench_gpu(
            factory,
            batch=args.batch,
            iters=args.iters,
            repeats=args.repeats,
            opt_level=args.opt_level,
            peer=not args.no_peer,
            disable=tuple(args.disable),
        )
        report["net"] = args.net
        print(format_gpu_bench(report))
        # Written before the profile too, so that a profile that fails or
        # outruns a time limit leaves the timings in the file.
        write_json_report(report, json_target)
        if args.profile:
            print_gpu_profile(report, factory, args)
            write_json_report(report, json_target)
        return report
    report = bench(
        factory,
        batch=args.batch,
        threads=args.threads,
        iters=args.iters,
        repeats=args.repeats,
        opt_level=args.opt_level,
        peer=not args.no_peer,
        torch_compile=not args.no_torch_compile,
        inference=not args.no_inference,
        disable=tuple(args.disable),
    )
    report["net"] = args.net
    print(format_bench(report))
    write_json_report(report, json_target)
    if args.profile:
        print_profile(report, factory, args)
        write_json_report(report, json_target)
    return report


def write_json_report(report: dict, target: Path | str | None) -> None:
    """Write ``report`` as JSON to ``target``, the output_target of --json,
    if given."""
    if target is not None:
        write_output_file(target, json.dumps(report, indent=1) + "\n", "--json")


def file_net_factory(path: Path, net, args):
    """Return the layers factory that ``mochac bench`` times for a net file.

    Sets ``args.batch`` to the batch the net runs at: the file's own batch
    size, or ``--batch``, which then replaces the batch size of every input
    layer. Raises UsageError when the net has no input layer that --batch
    could change, or its input layers disagree and --batch is not given.
    """
    from mochac.bench.nets import batch_sizes, with_batch_size

    layers = net.layers
    sizes = batch_sizes(layers)
    if not sizes:
        raise UsageError(
            f"{path}: net '{net.name}' has no input layer (a data layer or "
            "RandomNormalLayer), so mochac bench cannot tell or set its batch size; "
            "give it a data layer"
        )
    distinct = {size for per_layer in sizes.values() for size in per_layer}
    if args.batch is None:
        if len(distinct) > 1:
            listing = ", ".join(
                f"{name}: {'/'.join(map(str, per_layer))}"
                for name, per_layer in sizes.items()
            )
            raise UsageError(
                f"{path}: the input layers of net '{net.name}' have different "
                f"batch sizes ({listing}); pass --batch N to run them all at N"
            )
        (args.batch,) = distinct

    # The nets the bench builds at once would share an HDF5OutputLayer's
    # file, and the peers write no outputs, so output layers are not timed.
    outputs = [layer for layer in layers if isinstance(layer, OutputLayer)]
    if outputs:
        logger.info(
            "%s: the output layers %s are left out of the timed net",
            path,
            ", ".join(f"'{layer.name}'" for layer in outputs),
        )
        layers = [layer for layer in layers if not isinstance(layer, OutputLayer)]

    def factory(batch):
        return with_batch_size(layers, batch)

    return factory


def print_gpu_profile(report, factory, args) -> None:
    """Add per-layer device times of mochac on the GPU to ``report``.

    PyTorch is not profiled per layer on the GPU, so the table has no peer
    columns.
    """
    from mochac.bench.gpu_profile import profile_gpu
    from mochac.bench.profile import format_profile
    from mochac.runtime.gpu_backend import GPUBackend
    from mochac.runtime.net import Net

    net = Net(
        "profile-gpu",
        GPUBackend(seed=0),
        factory(args.batch),
        opt_level=args.opt_level,
        disable=args.disable,
    )
    ours = profile_gpu(net, args.iters, args.repeats)
    report["profile"] = {"mochac": ours}
    print(format_profile(ours, {}))


def print_profile(report, factory, args) -> None:
    """Add per-layer times of mochac and, when installed, PyTorch to ``report``."""
    from mochac.bench.profile import format_profile, profile_mochac, profile_torch
    from mochac.runtime.backend import CPUBackend
    from mochac.runtime.net import Net

    net = Net(
        "profile",
        CPUBackend(threads=args.threads, seed=0),
        factory(args.batch),
        opt_level=args.opt_level,
        disable=args.disable,
    )
    ours = profile_mochac(net, args.iters, args.repeats)
    theirs = {}
    if not args.no_peer:
        try:
            import torch
        except ImportError:
            logger.warning("PyTorch is not installed; profiling mochac alone")
        else:
            from mochac.bench.torch_peer import TorchNet

            torch.set_num_threads(args.threads)
            theirs = profile_torch(TorchNet(net), args.iters, args.repeats)
    report["profile"] = {"mochac": ours, "torch_eager": theirs}
    print(format_profile(ours, theirs))


def check_statistics_file(path: Path) -> None:
    """Raise UsageError unless ``path`` is a regular file. A file that is not
    a statistics file fails later, as a DataError (exit status 1)."""
    if path.is_file():
        return
    kind = special_file_kind(path)
    if path.is_dir():
        problem = "is a folder"
    elif kind is not None:
        problem = f"is {kind}, not a regular file"
    else:
        problem = "file not found"
    raise UsageError(
        f"{path}: {problem}; pass the statistics file that setup_coffee_lounge "
        "saved, such as snapshots/statistics.h5"
    )


def plot_command(args) -> int:
    from mochac.plot import close_figure, draw_statistics, image_formats

    check_statistics_file(Path(args.statistics))
    try:
        import matplotlib  # the check of an optional dependency
    except ImportError as error:
        raise UsageError(
            "mochac plot needs matplotlib, which is not installed: run `pip "
            "install 'mochac[plot]'` (in a clone of mochac: `pip install '.[plot]'`)"
        ) from error
    if args.output == STDOUT:
        raise UsageError(
            "-o -: mochac plot writes an image file and does not send images to "
            "standard output; name an image file such as curve.png (./- for a "
            "file named '-')"
        )
    check_output_file(args.output, "-o")
    suffix = Path(args.output).suffix.lstrip(".").lower()
    formats = image_formats()
    # matplotlib writes a name without a suffix in rcParams["savefig.format"],
    # PNG unless configured otherwise, and adds that suffix to it.
    if suffix and suffix not in formats:
        raise UsageError(
            f"-o {args.output}: matplotlib cannot write .{suffix} images; end the "
            f"name with one of: {', '.join('.' + name for name in formats)}"
        )
    output = args.output
    if not suffix:
        # matplotlib adds the suffix of that format to the name it writes.
        import matplotlib

        output = f"{output}.{matplotlib.rcParams['savefig.format']}"
    figure, drawn = draw_statistics(args.statistics, args.stat or None)
    # The image goes to a temporary file that replaces the target when
    # complete, so a failed write leaves an earlier image as it was.
    target = Path(output)
    temporary = temporary_path(target)
    try:
        # Created once the statistics are drawn, so that a file without them
        # leaves no empty folder behind.
        create_parent_folder(target, "-o")
        figure.savefig(temporary, format=target.suffix[1:].lower())
        os.replace(temporary, target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise output_file_error(Path(args.output), "-o", error) from error
    finally:
        close_figure(figure)
    print(f"{', '.join(drawn)} -> {output}")
    return 0


class CommandParser(argparse.ArgumentParser):
    """The parser of one subcommand (compile, bench, plot).

    An argument that the subcommand does not know is reported with the
    subcommand's usage, and with the closest option name when one is
    close. Without this class, argparse hands such arguments back to the
    top-level parser, whose error shows the usage of ``mochac`` itself.
    """

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(self.unrecognized_message(extras))
        return namespace, extras

    def unrecognized_message(self, extras: list[str]) -> str:
        """Return the error for the unknown arguments ``extras``, with a
        did-you-mean for each unknown option close to a known one."""
        known = [name for action in self._actions for name in action.option_strings]
        suggestions = []
        for extra in extras:
            if not extra.startswith("-"):
                continue
            # --ouput=x names the option --ouput.
            name = extra.split("=", 1)[0]
            close = difflib.get_close_matches(name, known, n=1)
            if close:
                suggestions.append((name, close[0]))
        message = f"unrecognized arguments: {' '.join(extras)}"
        if len(suggestions) == 1:
            message += f" (did you mean {suggestions[0][1]}?)"
        elif suggestions:
            listed = ", ".join(f"{match} for {name}" for name, match in suggestions)
            message += f" (did you mean {listed}?)"
        return message


def add_pass_options(parser: argparse.ArgumentParser) -> None:
    """Add -O0, -O1 and --disable, the passes of the nets a command builds."""
    level = parser.add_mutually_exclusive_group()
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
    parser.add_argument(
        "--disable",
        action="append",
        default=[],
        metavar="PASS",
        help=f"skip a pass; repeatable; one of: {', '.join(PASS_NAMES)}",
    )


def check_pass_options(args) -> None:
    """Raise UsageError when --disable names an unknown pass, and warn when
    -O0 makes --disable do nothing. Commands call this before a net file
    runs; -O is 0 or 1 by argparse."""
    try:
        enabled_passes(args.opt_level, args.disable)
    except ConfigError as error:
        raise UsageError(f"--disable {' '.join(args.disable)}: {error}") from None
    if args.opt_level == 0 and args.disable:
        logger.warning(
            "--disable %s has no effect with -O0, which runs no pass; use "
            "-O1 (the default) to run the other passes",
            " ".join(args.disable),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mochac", description="Compile, time and plot Mocha-style nets."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages"
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=CommandParser
    )
    compile_parser = commands.add_parser(
        "compile", help="write one importable module per Net defined in a Python file"
    )
    compile_parser.add_argument("net_file", help="Python file that defines Net objects")
    compile_parser.add_argument(
        "-o",
        "--output",
        default=".",
        help="folder for the modules, created if missing (default: .)",
    )
    add_pass_options(compile_parser)
    compile_parser.add_argument(
        "--report", action="store_true", help="print what each pass changed per net"
    )
    compile_parser.add_argument(
        "--report-json",
        metavar="FILE",
        help="write the reports as JSON to FILE; - writes them to standard output "
        "and the other output to stderr",
    )
    compile_parser.add_argument(
        "--dot",
        metavar="FILE",
        help="write each net's IR before and after the passes as Graphviz dot to "
        "FILE; - writes it to standard output and the other output to stderr",
    )
    compile_parser.add_argument(
        "--backend",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu (default): an importable module per net; cuda: each net's CUDA "
        "source and step list, to read (GPUBackend renders its own)",
    )
    compile_parser.set_defaults(run=compile_command, opt_level=1)
    bench_parser = commands.add_parser(
        "bench",
        help="time a net's forward, backward and training iteration",
    )
    bench_parser.add_argument(
        "net",
        help="a built-in net (lenet, cifar10) or a Python file that defines a Net "
        "with a loss",
    )
    bench_parser.add_argument(
        "--batch",
        type=positive_int,
        help=f"batch size (default: {DEFAULT_BENCH_BATCH} for a built-in net, the "
        "data layers' batch_size for a file; for a file it replaces that "
        "batch_size)",
    )
    bench_parser.add_argument(
        "--threads", type=positive_int, default=1, help="CPU threads (default: 1)"
    )
    bench_parser.add_argument(
        "--iters",
        type=positive_int,
        default=20,
        help="iterations per timed round (default: 20)",
    )
    bench_parser.add_argument(
        "--repeats", type=positive_int, default=5, help="timed rounds (default: 5)"
    )
    add_pass_options(bench_parser)
    bench_parser.add_argument(
        "--json",
        metavar="FILE",
        help="write the report as JSON to FILE; - writes it to standard output "
        "and the tables to stderr",
    )
    bench_parser.add_argument(
        "--profile",
        action="store_true",
        help="also time each layer's forward and backward, mochac beside PyTorch "
        "(with --backend cuda: mochac's device times alone)",
    )
    bench_parser.add_argument(
        "--no-peer", action="store_true", help="time mochac alone, without PyTorch"
    )
    bench_parser.add_argument(
        "--no-torch-compile", action="store_true", help="skip the torch.compile peer"
    )
    bench_parser.add_argument(
        "--no-inference",
        action="store_true",
        help="skip the inference timings (the net without its loss at the batch "
        "size and at batch 1)",
    )
    bench_parser.add_argument(
        "--backend",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu (default) against PyTorch on the CPU; cuda: GPUBackend against "
        "PyTorch on the same GPU (needs CuPy and a CUDA device)",
    )
    bench_parser.set_defaults(run=bench_command, opt_level=1)
    plot_parser = commands.add_parser(
        "plot", help="draw learning curves from a coffee lounge HDF5 file"
    )
    plot_parser.add_argument("statistics", help="the coffee lounge's statistics file")
    plot_parser.add_argument(
        "-o",
        "--output",
        default="curve.png",
        help="image file to write, in the format its suffix names; missing "
        "folders are created (default: curve.png)",
    )
    plot_parser.add_argument(
        "--stat",
        action="append",
        default=[],
        help="a statistic to draw, e.g. obj_val; repeatable (default: all)",
    )
    plot_parser.set_defaults(run=plot_command)
    return parser


def printed_by_log_to_console(record: logging.LogRecord) -> bool:
    """Return whether a handler of log_to_console() prints ``record`` already."""
    if record.name != "mochac" and not record.name.startswith("mochac."):
        return False
    handlers = logging.getLogger("mochac").handlers
    return any(getattr(handler, "mochac_console", False) for handler in handlers)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handlers_before = set(logging.root.handlers)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s:%(name)s: %(message)s",
    )
    # A net file that calls log_to_console() adds a handler on the "mochac"
    # logger. Its records also reach this root handler, so without the
    # filter every mochac line would print twice.
    for handler in logging.root.handlers:
        if handler not in handlers_before:
            handler.addFilter(lambda record: not printed_by_log_to_console(record))
    try:
        return args.run(args)
    except UsageError as error:
        logger.error("%s", error)
        return 2
    except MochacError as error:
        logger.error("%s", error)
        return 1
    except OSError as error:
        # A path the checks above could not foresee: a folder that cannot be
        # created (under /proc, or below a file), a full disk, no permission.
        where = f"{error.filename}: " if error.filename else ""
        logger.error(
            "%s%s; check the path and its permissions", where, error.strerror or error
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
