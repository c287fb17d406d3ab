"""PassReport: what one pass changed in a net."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PassReport:
    """The changes of one pass: a line per change and the bytes it saved."""

    name: str
    changes: list[str] = field(default_factory=list)
    bytes_saved: int = 0

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "changes": list(self.changes),
            "bytes_saved": self.bytes_saved,
        }
