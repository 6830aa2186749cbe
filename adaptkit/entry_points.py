"""The `adaptkit` entry-point group: whether any third-party distribution declares one, and the entry points.

`third_party_installed` scans the dist-info (and egg-info) folders on sys.path directly: importing
importlib.metadata and parsing every distribution costs more than the rest of `adaptkit --help`, so
the CLI and the registry read entry points only when some other distribution declares the group.
"""

from __future__ import annotations

import os
import sys
from typing import Any

GROUP = "adaptkit"
OWN_DISTRIBUTION = "adaptkit"


def third_party_installed() -> bool:
    """Whether any installed distribution besides adaptkit declares an `adaptkit` entry point."""
    marker = f"[{GROUP}]"
    for entry in sys.path:
        try:
            children = os.scandir(entry or ".")
        except OSError:
            continue
        with children:
            for child in children:
                name = child.name
                if not name.endswith((".dist-info", ".egg-info")):
                    continue
                if name.rsplit(".", 1)[0].split("-")[0].lower() == OWN_DISTRIBUTION:  # our own (installed or a source checkout)
                    continue
                try:
                    with open(os.path.join(child.path, "entry_points.txt"), encoding="utf-8") as handle:
                        if marker in handle.read():
                            return True
                except OSError:
                    continue
    return False


def entry_points() -> list[Any]:
    """The group's entry points by name (importlib.metadata), or none when no third party declares any."""
    if not third_party_installed():
        return []
    from importlib import metadata

    return sorted(metadata.entry_points(group=GROUP), key=lambda ep: ep.name)
