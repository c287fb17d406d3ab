"""Resuming a solver from the snapshot or model file that load_from names.

restore reads and checks every part of the file before it changes the net.
Then it loads the parameters, the method's buffers, the learning-rate
policy's state, the iteration count and the coffee breaks still due.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from mochac.caffe import load_model_file
from mochac.errors import SnapshotError
from mochac.runtime import resume_point
from mochac.runtime.coffee_breaks import Snapshot
from mochac.runtime.freeze import frozen_layers, trainable_groups
from mochac.runtime.pending_breaks import match_pending_breaks
from mochac.runtime.snapshot import (
    COFFEE_BREAKS,
    FROZEN_LAYERS,
    PENDING_BREAKS,
    apply_solver_state,
    check_param_shapes,
    latest_snapshot,
    load_params,
    open_model,
    read_solver_attributes,
    read_solver_state,
    snapshot_path,
    unused_parameters,
)
from mochac.values import as_int, as_real

# The solver's messages keep the solver module's logger name, so that a
# level or filter set on it also covers the resume.
logger = logging.getLogger("mochac.runtime.solver")

# A load_from path with one of these suffixes names a file; any other path
# that does not exist yet is a snapshot folder to be created.
MODEL_SUFFIXES = (".h5", ".hdf5", ".jld")


def restore(solver, net):
    """Resume ``solver`` and ``net`` from the snapshot or model file that the
    solver's load_from names, if it names one."""
    # The snapshot this solve() resumed from, if any (warn_of_later_files).
    solver._resumed_from = None
    load_from = solver.params.get("load_from")
    if not load_from:
        return
    path = Path(load_from)
    # A solve() called again after an error goes on from this solver's
    # own iteration when there is no snapshot to resume.
    if solver.state.iter == 0:
        start = "training from scratch"
    else:
        start = f"going on from iteration {solver.state.iter}"
    if not path.exists() and path.suffix not in MODEL_SUFFIXES:
        # The tutorial's first run names a snapshot folder that the
        # Snapshot coffee break has not created yet.
        logger.info("snapshot folder %s does not exist yet; %s", path, start)
        return
    if path.is_dir():
        found = latest_snapshot(path)
        if found is None:
            logger.info("no snapshot in %s; %s", path, start)
            return
        path = found
    elif not path.exists():
        h5 = path.with_suffix(".h5")
        # Mocha's snapshots end in .jld; a ported script may still name one.
        advice = (
            f"mochac's snapshots are HDF5 files: name {h5}"
            if path.suffix == ".jld" and h5.exists()
            else "fix the path, or name a snapshot folder"
        )
        raise SnapshotError(f"load_from={str(load_from)!r}: file not found; {advice}")
    restore_policy = getattr(solver.params["lr_policy"], "restore", None)
    with open_model(path) as handle:
        try:
            iteration, stored, unused = _read_resume_state(
                solver, net, handle, path, restore_policy is not None
            )
        except SnapshotError as error:
            note = _other_net_note(handle, net, path)
            if note is None:
                raise
            raise SnapshotError(f"{str(error).rstrip('.')}. {note}") from error
    if stored is None:
        logger.info(
            "%s contains no solver state: starting at iteration 0 from its parameters "
            "(fine-tuning)",
            path,
        )
        return
    attrs, buffers = stored.attrs, stored.buffers
    if unused:
        logger.warning(
            "%s contains parameters that net '%s' lacks (%s), of layers removed "
            "or renamed since it was saved; the resume ignores them and their "
            "solver buffers. Resume with the net that saved it to train them on",
            path,
            net.name,
            ", ".join(unused),
        )
    if iteration > 0:
        _warn_missing_buffers(
            solver, net, buffers, path, attrs.get(FROZEN_LAYERS, frozenset())
        )
    _warn_frozen_change(solver, net, attrs, path)
    if PENDING_BREAKS in attrs:
        pending = _stored_pending_breaks(solver, attrs, iteration, path)
    else:
        pending = _inferred_pending_breaks(solver, net, iteration, path)
    solver._pending_breaks = pending
    # Entries of the run before the resume name iterations this run repeats.
    solver._snapshots_with_pending = {}
    if solver._pending_breaks is not None and _in_snapshot_folder(solver, path):
        # Saved again once the breaks it lists have run (Solver._settle_snapshots).
        listed = list(solver._pending_breaks[1])
        solver._snapshots_with_pending[path] = (iteration, listed)
    solver.method.load_buffers(buffers, net.backend)
    if restore_policy is not None:
        restore_policy(attrs)
        # The snapshots this run saves before the policy's next decision
        # must keep what it restored, or a resume from one of them loses it.
        state_attrs = getattr(solver.params["lr_policy"], "state_attrs", None)
        if state_attrs is not None:
            solver.state.policy_attrs = state_attrs()
    solver.state.iter = iteration
    obj_val = as_real(attrs.get("obj_val"))
    solver.state.obj_val = math.nan if obj_val is None else float(obj_val)
    # The state keeps the rate and momentum of the update that reached this
    # iteration until the next update, so a resume that trains nothing
    # returns them and a snapshot saved again at once keeps them.
    for key in ("learning_rate", "momentum"):
        value = as_real(attrs.get(key))
        if value is not None and math.isfinite(value) and value >= 0:
            setattr(solver.state, key, float(value))
    solver._resumed_from = path
    logger.info("resumed from %s at iteration %d", path, solver.state.iter)


def _read_resume_state(solver, net, handle, path, needs_rate: bool):
    """Check an open snapshot or model file and load it into ``net``.

    Returns (iteration, solver state or None for a model file, the file's
    parameters that the net lacks, which the resume ignores). Every part of
    the file is read and checked before anything reaches the net, so a
    file this solver cannot resume leaves the net unchanged.
    """
    iteration = 0
    unused = []
    attrs = read_solver_attributes(handle, path)
    if attrs is not None:
        iteration = _check_solver_attrs(solver, attrs, path, needs_rate)
    check_param_shapes(handle, net, path)
    stored = read_solver_state(handle, net, path)
    if stored is None:
        # A model file, perhaps exported from Caffe without biases,
        # loads as load_network loads it.
        load_model_file(handle, net, path)
    else:
        load_params(handle, net, path, missing_advice=_missing_advice(path))
        unused = unused_parameters(handle, net, path)
        apply_solver_state(net, stored, path)
    return iteration, stored, unused


def _other_net_note(handle, net, path) -> str | None:
    """Return a sentence naming the net that saved ``path`` when its name
    differs from ``net``'s, else None. A resume that fails on such a file
    most likely found another training's snapshots in a shared folder."""
    saved = handle.attrs.get("net")
    if isinstance(saved, bytes):
        saved = saved.decode(errors="replace")
    if not isinstance(saved, str) or saved == net.name:
        return None
    return (
        f"{path.name} was saved by net '{saved}', and this net is '{net.name}'; "
        "if the folder contains another net's snapshots, give this run a "
        "Snapshot folder and load_from of its own"
    )


def _missing_advice(path) -> str:
    """Return the advice of the error for a snapshot that lacks parameters
    of the net being resumed."""
    return (
        "resume with the net that saved it, or, to train this net from the "
        f"parameters it contains, call load_snapshot(net, {str(path)!r}, "
        "allow_missing=True) and solve with load_from=None, which starts at "
        "iteration 0"
    )


def _in_snapshot_folder(solver, path: Path) -> bool:
    """Return whether ``path`` is in the folder of one of the solver's
    Snapshot coffee breaks. Those breaks write only there, so a file that
    load_from names elsewhere stays as it is."""
    folder = path.parent.resolve()
    return any(
        isinstance(coffee_break, Snapshot) and coffee_break.folder.resolve() == folder
        for coffee_break, _, _ in solver.breaks
    )


def _stored_pending_breaks(solver, attrs: dict, iteration: int, path):
    """Return (iteration, indices) of the coffee breaks a snapshot lists as
    not yet run at its iteration (its pending_breaks attribute), or None
    when it lists none.

    The Snapshot break that saved it ran, and so did those before it. The
    solver saves the snapshot again once the breaks after it finish
    (Solver._settle_snapshots), so a listed break is one that had not
    finished when the run stopped. When the snapshot
    describes the saving solver's breaks and they differ from this
    solver's, each pending break runs where it is now, or is skipped
    (match_pending_breaks), with a warning.
    """
    pending = attrs[PENDING_BREAKS]
    saved = attrs.get(COFFEE_BREAKS)
    if saved is not None:
        if pending and saved != solver.state.coffee_breaks:
            pending = _match_changed_breaks(solver, pending, saved, iteration, path)
        return (iteration, pending) if pending else None
    # Snapshots of older versions name the breaks by index alone.
    unknown = [index for index in pending if index >= len(solver.breaks)]
    if unknown:
        logger.warning(
            "%s lists %d coffee breaks still to run at iteration %d, but this "
            "solver has only %d; add the coffee breaks in the order of the "
            "run that saved it. Skipped the missing ones",
            path,
            len(pending),
            iteration,
            len(solver.breaks),
        )
        pending = [index for index in pending if index < len(solver.breaks)]
    return (iteration, pending) if pending else None


def _inferred_pending_breaks(solver, net, iteration: int, path: Path):
    """Return (iteration, indices) of the coffee breaks due at a snapshot's
    iteration that may not have run, for a snapshot of an older version
    without the pending_breaks attribute; None when there are none.

    The solver runs the breaks due at an iteration in the order they were
    added, so the Snapshot break that wrote the file ran after those before
    it. The breaks after it had run only if the run went on past the save,
    which the file does not record. They are pending, because running a
    break again costs time, but skipping one loses a validation or a
    snapshot. The due breaks are those of this solver, which may differ
    from those of the run that saved the file. When no Snapshot break of
    this solver due at the iteration writes ``path``, every due break is
    pending.

    ``net`` must contain the snapshot's data layer states, which show
    whether the batch before the snapshot ended an epoch.
    """
    if iteration == 0:
        # The first round of breaks runs before any batch completes an epoch.
        due = solver._due(0, -1, -1)
    else:
        due = solver._due(iteration, *resume_point.latest_batch_epochs(net))
    target = path.resolve()
    writers = [
        position
        for position, index in enumerate(due)
        if isinstance(solver.breaks[index][0], Snapshot)
        and snapshot_path(solver.breaks[index][0].folder, iteration).resolve() == target
    ]
    descriptions = solver.state.coffee_breaks
    if writers:
        # A break that shares the folder and runs later wrote the same file
        # again. The first one is taken, because the run may have stopped
        # before the later one.
        writer = due[writers[0]]
        pending = due[writers[0] + 1 :]
        reason = (
            f"it was written by {descriptions[writer]} (index {writer}), so the "
            "coffee breaks due after it run"
        )
    else:
        pending = due
        reason = (
            "no Snapshot coffee break of this solver due at that iteration writes "
            "it, so every coffee break due there runs"
        )
    listed = ", ".join(f"{descriptions[index]} (index {index})" for index in pending)
    logger.info(
        "%s does not record which coffee breaks were still due at iteration %d "
        "(a snapshot of an older mochac version); %s: %s",
        path,
        iteration,
        reason,
        listed or "none",
    )
    return (iteration, pending) if pending else None


def _match_changed_breaks(
    solver, pending: list[int], saved: list[str], iteration: int, path
) -> list[int]:
    """Return the indices in this solver's breaks of a snapshot's
    ``pending`` breaks, and log a warning that names the breaks run and
    skipped. ``saved`` describes the saving solver's breaks, which differ
    from this solver's."""
    matches = match_pending_breaks(pending, saved, solver.state.coffee_breaks)
    ran = [
        f"{match.description} (index {match.saved_index}, now {match.index})"
        for match in matches
        if match.index is not None
    ]
    skipped = [
        f"{match.description} (index {match.saved_index})"
        for match in matches
        if match.index is None
    ]
    if skipped:
        advice = (
            "; to run them all, add the same coffee breaks as the run that "
            "saved it (in its order where breaks share a description)"
        )
    else:
        advice = ""
    logger.warning(
        "%s lists %d coffee breaks still to run at iteration %d, but it was "
        "saved with the coffee breaks [%s] and this solver has [%s]. The "
        "resume runs %s and skips %s%s",
        path,
        len(pending),
        iteration,
        ", ".join(saved),
        ", ".join(solver.state.coffee_breaks),
        ", ".join(ran) or "none",
        ", ".join(skipped) or "none",
        advice,
    )
    return [match.index for match in matches if match.index is not None]


def _warn_frozen_change(solver, net, attrs: dict, path) -> None:
    """Log a warning when the net's frozen layers differ from those at the
    snapshot's save; snapshots of older versions record none."""
    saved = attrs.get(FROZEN_LAYERS)
    if saved is None:
        return
    # Freezing a layer without parameters changes nothing, so freeze_all
    # and freeze() of the same parameter layers compare equal.
    with_params = set(net.params)
    saved = saved & with_params
    current = frozen_layers(net) & with_params
    if saved == current:
        return

    def listed(names) -> str:
        return ", ".join(sorted(names)) or "none"

    logger.warning(
        "net '%s': %s was saved with frozen layers %s, but now %s are frozen; "
        "training goes on with the current setting. Call freeze(net, ...) or "
        "unfreeze(net, ...) before solve() to train as the saved run did",
        net.name,
        path,
        listed(saved),
        listed(current),
    )


def _warn_missing_buffers(
    solver, net, buffers: dict, path, saved_frozen: frozenset
) -> None:
    """Log a warning for each trainable parameter whose method buffer
    (momentum history, Adam's moments) the snapshot lacks: the resumed
    run starts it from zeros, so it differs from an uninterrupted one.

    A parameter of a layer frozen at the save has no buffer in the
    uninterrupted run either, so it gets no warning.
    """
    for members in trainable_groups(net):
        if any(member[0].name in saved_frozen for member in members):
            continue
        info, spec = members[0][:2]
        key = (info.name, spec.name)
        for name in solver.method.buffer_names:
            if key not in buffers.get(name, {}):
                logger.warning(
                    "%s has no solver buffer '%s' for layer '%s', parameter "
                    "'%s'; it starts from zeros, so the resumed run differs "
                    "from an uninterrupted one",
                    path,
                    name,
                    info.name,
                    spec.name,
                )


def _check_solver_attrs(solver, attrs: dict, path, needs_rate: bool) -> int:
    """Return the iteration a snapshot's solver attributes record.

    Raises SnapshotError when another method saved the snapshot or an
    attribute the resume reads is missing or invalid. ``needs_rate``:
    the learning-rate policy restores its rate from the snapshot.
    """
    saved_method = str(attrs.get("method", ""))
    if saved_method != solver.method.name:
        raise SnapshotError(
            f"{path} was saved by solver {saved_method}, but this solver is "
            f"{solver.method.name}; resume with {saved_method} or load the parameters "
            "alone with load_snapshot"
        )
    if "iter" not in attrs:
        raise SnapshotError(
            f"{path}: the solver state has no 'iter' attribute, so the iteration "
            "to resume from is unknown; resume from another snapshot or load the "
            "parameters alone with load_snapshot"
        )
    iteration = as_int(attrs["iter"])
    if iteration is None or iteration < 0:
        stored = attrs["iter"]
        if isinstance(stored, np.generic):
            stored = stored.item()
        raise SnapshotError(
            f"{path}: the solver state's 'iter' attribute is {stored!r}, "
            "not an int >= 0; resume from another snapshot or load the "
            "parameters alone with load_snapshot"
        )
    rate = as_real(attrs.get("learning_rate"))
    if needs_rate and (rate is None or not math.isfinite(rate) or rate < 0):
        raise SnapshotError(
            f"{path}: the solver state's 'learning_rate' attribute is "
            f"{attrs.get('learning_rate')!r}, not a finite number >= 0, and "
            f"lr_policy {solver.params['lr_policy']!r} restores its rate from it; "
            "resume from another snapshot"
        )
    return iteration
