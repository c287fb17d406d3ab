"""Run the code blocks of README.md and docs/*.md, so the docs keep working.

Every fenced ```python block is a test case: it runs in a fresh namespace,
with a fresh temporary folder as the working directory, and fails the test
when it raises. A ```sh block runs only when its marker says ``run``, and
then each of its lines must be a ``mochac ...`` command, which runs through
``mochac.cli.main`` in this process and must return 0. Other blocks
(```text output, install and benchmark commands) are not run, and their
printed output is not compared, because the last digits of floats depend
on the BLAS and the CPU.

A marker is an HTML comment on the line right before the opening fence, so
it does not show in the rendered page. It contains directives separated
by semicolons:

    <!-- docs-test: skip (needs the real MNIST data) -->
    <!-- docs-test: name training-script -->
    <!-- docs-test: after training-script -->
    <!-- docs-test: file nets.py; name toy-nets -->
    <!-- docs-test: run; after toy-nets; name compile-toy-nets -->
    <!-- docs-test: run; prepare mnist-stand-in; name compile-deploy -->

- ``skip REASON``: do not run the block; the reason shows in the skip.
- ``name NAME``: label the block so that later blocks of the same file can
  continue it. Names are unique within a file.
- ``after NAME``: the block continues the block named NAME. The blocks of
  that chain (NAME, the block NAME continues, and so on) first run once in
  a folder of their own. The test copies that folder, runs the chain again
  in the copy with a fresh namespace, then runs the block. docs/runtime.md
  states that its examples ran this way: each after the first example, in
  a folder that contains the snapshots of a complete run of it.
- ``file PATH``: write the block to PATH in the working folder instead of
  running it (a net file for ``mochac compile``). Its own test only checks
  that it compiles as Python.
- ``run``: run a ```sh block, as described above.
- ``prepare NAME``: before the block, call the function that PREPARE_STEPS
  maps NAME to, with the working folder. It writes small stand-ins for the
  files that the block expects, such as the MNIST tutorial's data.

Every block must finish in a second or two on two cores: a block that
trains for long, needs real MNIST, a GPU or the network gets ``skip``.
There is no mechanism that shortens a block, so what the test runs is what
the reader runs.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest

from mochac import save_snapshot
from mochac.cli import main as mochac_main
from mochac.runtime.solver import SolverState

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")
DIRECTIVES = {"skip", "name", "after", "file", "run", "prepare"}


@dataclass
class Block:
    doc: str  # path relative to the repository root
    line: int  # line of the opening fence, 1-based
    lang: str
    source: str
    skip: str | None = None
    name: str | None = None
    after: str | None = None
    file: str | None = None
    run: bool = False
    prepare: list[str] = field(default_factory=list)

    @property
    def test_id(self) -> str:
        return f"{self.doc}:{self.line}"


def parse_marker(body: str, block: Block) -> None:
    for directive in filter(None, (part.strip() for part in body.split(";"))):
        key, _, value = directive.partition(" ")
        value = value.strip()
        if key not in DIRECTIVES:
            raise ValueError(
                f"{block.test_id}: unknown docs-test directive {key!r}; "
                f"expected one of {sorted(DIRECTIVES)}"
            )
        if key == "run":
            block.run = True
        elif key == "prepare":
            block.prepare.append(value)
        else:
            if not value:
                raise ValueError(f"{block.test_id}: docs-test {key} needs a value")
            setattr(block, key, value.strip("()") if key == "skip" else value)


def read_blocks(path: Path) -> list[Block]:
    """Return the fenced blocks of a Markdown file with their markers."""
    doc = str(path.relative_to(ROOT))
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        end = index + 1
        while not lines[end].startswith("```"):
            end += 1
        block = Block(
            doc, index + 1, fence["lang"], "\n".join(lines[index + 1 : end]) + "\n"
        )
        marker = MARKER.match(lines[index - 1]) if index > 0 else None
        if marker is not None:
            parse_marker(marker["body"], block)
        blocks.append(block)
        index = end + 1
    return blocks


def collect_blocks() -> tuple[list[Block], dict[tuple[str, str], Block]]:
    """Return the blocks that are test cases, and the named blocks by
    (doc, name). Raises ValueError for a marker that names a missing block."""
    cases = []
    named = {}
    for path in DOC_FILES:
        for block in read_blocks(path):
            if block.name is not None:
                key = (block.doc, block.name)
                if key in named:
                    raise ValueError(
                        f"{block.test_id}: name {block.name!r} is already used"
                    )
                named[key] = block
            if block.after is not None and (block.doc, block.after) not in named:
                raise ValueError(
                    f"{block.test_id}: after {block.after!r} names no earlier "
                    "block of this file"
                )
            for step in block.prepare:
                if step not in PREPARE_STEPS:
                    raise ValueError(f"{block.test_id}: unknown prepare {step!r}")
            if block.lang == "python" or (block.lang == "sh" and block.run):
                cases.append(block)
    return cases, named


def prepare_mnist_stand_in(folder: Path) -> None:
    """Write the files the README's compiled-package examples read: the
    deploy net's files, 10 random test images in the layout of
    prepare_data.py, and a snapshot named like the one that train.py saves
    at iteration 10000."""
    mnist = folder / "examples" / "mnist"
    (mnist / "data").mkdir(parents=True, exist_ok=True)
    for name in ("deploy_net.py", "lenet.py"):
        shutil.copy(ROOT / "examples" / "mnist" / name, mnist / name)
    rng = np.random.default_rng(0)
    with h5py.File(mnist / "data" / "test.hdf5", "w") as handle:
        handle["data"] = rng.random((10, 1, 28, 28), dtype=np.float32)
        handle["label"] = rng.integers(0, 10, (10, 1)).astype(np.float32)
    # The deploy net has the parameters of the train net's snapshots.
    namespace = {"__name__": "deploy_net"}
    sys.path.insert(0, str(mnist))
    source = (mnist / "deploy_net.py").read_text(encoding="utf-8")
    exec(compile(source, "deploy_net.py", "exec"), namespace)  # noqa: S102 - repo file
    net = namespace["net"]
    snapshot = mnist / "snapshots" / "snapshot-010000.h5"
    snapshot.parent.mkdir(exist_ok=True)
    save_snapshot(snapshot, net, SolverState(iter=10000, method="SGD"))
    net.destroy()


PREPARE_STEPS = {"mnist-stand-in": prepare_mnist_stand_in}

BLOCKS, NAMED = collect_blocks()


def chain_of(block: Block) -> list[Block]:
    """Return the blocks that ``block`` continues, first one first, then it."""
    chain = [block]
    while chain[0].after is not None:
        chain.insert(0, NAMED[(chain[0].doc, chain[0].after)])
    return chain


def run_mochac_commands(block: Block) -> None:
    for line in block.source.splitlines():
        if not line.strip():
            continue
        words = shlex.split(line)
        assert words[0] == "mochac", (
            f"{block.test_id}: a docs-test run block may hold only mochac "
            f"commands, not {line!r}"
        )
        assert mochac_main(words[1:]) == 0, f"{block.test_id}: {line!r} failed"


def run_block(block: Block, folder: Path, namespace: dict) -> None:
    for step in block.prepare:
        PREPARE_STEPS[step](folder)
    if block.file is not None:
        (folder / block.file).write_text(block.source, encoding="utf-8")
    elif block.lang == "sh":
        run_mochac_commands(block)
    else:
        code = compile(block.source, block.test_id, "exec")
        exec(code, namespace)  # noqa: S102 - running doc blocks is the test


@contextlib.contextmanager
def restored_process_state(folder: Path):
    """Undo what blocks run in ``folder`` changed in this process on exit:
    sys.path, the modules they imported from ``folder``, the import
    finders they created and mochac's log handlers."""
    mochac_logger = logging.getLogger("mochac")
    handlers = list(mochac_logger.handlers)
    level = mochac_logger.level
    path = list(sys.path)
    modules = set(sys.modules)
    finders = set(sys.path_importer_cache)
    # A block that imports from a relative folder ("compiled") must not
    # reuse a finder that listed the same name under another working folder.
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            module_file = getattr(sys.modules[name], "__file__", None)
            # A module found through a relative sys.path entry has a
            # relative __file__, which is relative to ``folder``.
            if module_file and (folder / module_file).resolve().is_relative_to(
                folder.resolve()
            ):
                del sys.modules[name]
        for entry in set(sys.path_importer_cache) - finders:
            del sys.path_importer_cache[entry]
        mochac_logger.handlers[:] = handlers
        mochac_logger.setLevel(level)


def run_chain(chain: list[Block], folder: Path, monkeypatch) -> None:
    """Run the blocks in ``folder`` in one fresh namespace."""
    namespace = {"__name__": "__main__"}
    with monkeypatch.context() as patch, restored_process_state(folder):
        patch.chdir(folder)
        try:
            for block in chain:
                run_block(block, folder, namespace)
        finally:
            namespace.clear()
            # Destroys the nets of the namespace, which closes their files.
            gc.collect()


@pytest.fixture(scope="module")
def chain_folders(tmp_path_factory):
    """Map a named block to the folder where its chain ran once, or to the
    exception the chain raised there."""
    results = {}

    def folder_of(block: Block) -> Path:
        key = (block.doc, block.name)
        if key not in results:
            folder = tmp_path_factory.mktemp(block.name)
            try:
                with pytest.MonkeyPatch.context() as monkeypatch:
                    run_chain(chain_of(block), folder, monkeypatch)
                results[key] = folder
            except Exception as error:  # noqa: BLE001 - raised for each dependent
                results[key] = error
        result = results[key]
        if isinstance(result, Exception):
            raise result
        return result

    return folder_of


@pytest.mark.parametrize("block", BLOCKS, ids=[block.test_id for block in BLOCKS])
def test_doc_block_runs(block, tmp_path, monkeypatch, chain_folders):
    if block.skip is not None:
        pytest.skip(block.skip)
    if block.file is not None and block.after is None:
        compile(block.source, block.test_id, "exec")
        return
    if block.name is not None and block.after is None:
        chain_folders(block)
        return
    folder = tmp_path / "work"
    if block.after is None:
        folder.mkdir()
        run_chain([block], folder, monkeypatch)
        return
    parent = NAMED[(block.doc, block.after)]
    shutil.copytree(chain_folders(parent), folder)
    run_chain(chain_of(block), folder, monkeypatch)


def test_raising_block_fails(tmp_path, monkeypatch):
    block = Block("docs/example.md", 1, "python", "raise RuntimeError('broken')\n")
    with pytest.raises(RuntimeError, match="broken"):
        run_chain([block], tmp_path, monkeypatch)


def test_unknown_directive_rejected():
    block = Block("docs/example.md", 1, "python", "")
    with pytest.raises(ValueError, match="unknown docs-test directive 'skipp'"):
        parse_marker("skipp (typo)", block)


def test_marker_directives_parsed():
    block = Block("docs/example.md", 1, "sh", "")
    parse_marker("run; after first; name second; skip (needs MNIST)", block)
    assert block.run
    assert block.after == "first"
    assert block.name == "second"
    assert block.skip == "needs MNIST"
