"""Small JSON files that mark finished work (generated datasets, pipeline stages)."""
from __future__ import annotations

import json
import os
from typing import Dict, Optional


def read_json(path: str) -> Optional[Dict]:
    """The JSON object in path, or None if it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path: str, obj: Dict) -> None:
    """Writes obj to path atomically (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
