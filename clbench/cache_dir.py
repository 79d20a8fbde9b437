"""Where clbench keeps what it computes once per machine: `$CLBENCH_CACHE`, else
`~/.cache/clbench`; `CLBENCH_CACHE=off` means no disk cache at all (values stay in memory).

Every cache (decoded datasets, shared bases, checksum stamps, text and image features)
asks here, so `off` is honoured everywhere, never taken for a folder named "off".
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "CLBENCH_CACHE"


def cache_root() -> Path | None:
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() == "off":
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "clbench"
