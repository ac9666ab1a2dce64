"""The report of one load: what was loaded, resized, dropped and missed, as one line."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


@dataclass
class LoadReport:
    """What a conversion did. `summary()` is the line every tool prints, e.g.
    "loaded 171 encoder tensors from X (timm layout); dropped 2 entries not used here (head: 2);
    missing encoder tensors: 0"."""

    source: str = ""
    fmt: str = ""                # the layout recognised, e.g. "timm layout"
    prefix: str = ""             # the encoder's key prefix in the file
    loaded: int = 0
    resized: List[str] = field(default_factory=list)
    window_change: Optional[Tuple[int, int]] = None
    dropped: Dict[str, int] = field(default_factory=dict)   # category -> count (head, decoder, ...)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    @property
    def head_dropped(self) -> bool:
        """True when the file carried a classification head that was not loaded."""
        return any(self.dropped.get(k) for k in ("head", "fc", "classifier"))

    def summary(self) -> str:
        parts = [f"loaded {self.loaded} encoder tensors from {self.source or 'state dict'} ({self.fmt})"]
        if self.resized:
            old, new = self.window_change or ("?", "?")
            parts.append(f"resized {len(self.resized)} relative position bias tables (window {old} -> {new})")
        if self.dropped:
            dropped = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items()))
            parts.append(f"dropped {sum(self.dropped.values())} entries not used here ({dropped})")
        parts.append(f"missing encoder tensors: {len(self.missing)}" + examples(self.missing))
        if self.unexpected:
            parts.append(f"unexpected entries: {len(self.unexpected)}" + examples(self.unexpected))
        return "; ".join(parts)


def examples(names: List[str], k: int = 3) -> str:
    """" (a, b, c, ...)" for messages; "" when there are none."""
    if not names:
        return ""
    more = ", ..." if len(names) > k else ""
    return " (" + ", ".join(names[:k]) + more + ")"
