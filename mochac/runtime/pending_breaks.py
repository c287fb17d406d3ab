"""Coffee breaks that a snapshot lists as still due, matched to a resumed solver.

A snapshot lists the coffee breaks still due at its iteration by their
indices in the order of add_coffee_break (the /solver attribute
pending_breaks). Beside them it stores a description of every break of the
saving solver (coffee_breaks), so that a resumed solver whose breaks were
added in another order, or are other breaks, runs the right ones.
"""

from __future__ import annotations

from dataclasses import dataclass


def describe_break(coffee_break, every_n_iter, every_n_epoch) -> str:
    """Return the description that snapshots store for a scheduled coffee
    break: its class name, identity (CoffeeBreak.identity) and interval,
    e.g. "Snapshot('snapshots', every_n_iter=100)"."""
    name = type(coffee_break).__name__
    identity = getattr(coffee_break, "identity", None)
    label = identity() if callable(identity) else ""
    prefix = f"{str(label)!r}, " if label else ""
    if every_n_iter is not None:
        return f"{name}({prefix}every_n_iter={every_n_iter})"
    return f"{name}({prefix}every_n_epoch={every_n_epoch})"


@dataclass
class PendingMatch:
    """A break still due in the saved run: its index there and its index in
    the resumed solver, or None when the resumed solver has no such break."""

    description: str
    saved_index: int
    index: int | None


def match_pending_breaks(
    pending: list[int], saved: list[str], current: list[str]
) -> list[PendingMatch]:
    """Find the resumed solver's break for each index in ``pending``.

    ``saved`` and ``current`` describe the breaks (describe_break) of the
    saving and the resumed solver, in the order they were added. A
    description found once in each list matches wherever it is now. A
    description found several times matches only at its saved index,
    because breaks with the same description cannot be distinguished.
    Anything else matches nothing.
    """
    matches = []
    for saved_index in pending:
        description = saved[saved_index]
        if saved.count(description) == 1 and current.count(description) == 1:
            index = current.index(description)
        elif saved_index < len(current) and current[saved_index] == description:
            index = saved_index
        else:
            index = None
        matches.append(PendingMatch(description, saved_index, index))
    return matches
