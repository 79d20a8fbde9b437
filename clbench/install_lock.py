"""Which install produced a result: the SHA-256 of the committed dependency lock, and whether
the running environment matches it.

`make install` installs with `-c requirements/lock.txt` (every distribution of every extra,
pinned), so two results with the same `lock_sha256` and `lock_matches_install: true` ran the
same versions of everything. A checkout whose lock changed since the venv was made, or an
install made without the lock, records `false` and the first differing pins.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name

LOCK_PATH = Path(__file__).resolve().parent.parent / "requirements" / "lock.txt"
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)")


def read_pins(path: Path = LOCK_PATH) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def installed_versions() -> dict[str, str]:
    """Name -> version of the first copy on sys.path (the one `import` and `version()` see: a later
    vendored copy, such as setuptools/_vendor's packaging, does not count)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return found


def mismatches(pins: dict[str, str], installed: dict[str, str]) -> list[str]:
    """'name lock=X installed=Y' for every pinned distribution whose installed version differs."""
    return [f"{name} lock={want} installed={installed.get(name, 'missing')}"
            for name, want in sorted(pins.items()) if installed.get(name) != want]


@lru_cache(maxsize=1)
def lock_record() -> dict[str, Any]:
    """`env` fields of a result: lock_sha256 ('none' outside a checkout), lock_matches_install."""
    if not LOCK_PATH.is_file():
        return {"lock_sha256": "none", "lock_matches_install": False}
    differing = mismatches(read_pins(), installed_versions())
    record: dict[str, Any] = {"lock_sha256": hashlib.sha256(LOCK_PATH.read_bytes()).hexdigest(),
                              "lock_matches_install": not differing}
    if differing:
        record["lock_mismatches"] = differing[:10]
    return record
