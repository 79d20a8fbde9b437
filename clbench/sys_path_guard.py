"""Keep the repository root off `sys.path`, so `kernels`, `strategies` and `scenarios` resolve to site-packages.

The repo's top-level folders `kernels/`, `strategies/` and `scenarios/` are installed as
`clbench.kernels`, `clbench.strategies` and `clbench.scenarios` (pyproject's `package-dir`).
Under their own names they are not packages of ours: `kernels` in particular is Hugging Face's
distribution, which transformers imports (`transformers.integrations.hub_kernels` runs
`from kernels import CUDAProperties, ...`). Python puts the current directory at `sys.path[0]`
for `python -m ...` and `python -c ...`, and Ray puts the driver's directory into every
worker's `sys.path`; started from the repo root, either makes `import kernels` find our folder.

`clbench/__init__.py` calls `drop_repo_root()` before anything else, so every entry point
(console script, `python -m clbench`, benchmarks, fork-server and Ray workers, pytest) runs
with the root removed. Removing it costs nothing: `clbench` itself is found through the
install (editable or not), and nothing else importable lives at the root.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHADOWING_NAMES = ("kernels", "strategies", "scenarios")


def _is_repo_root(entry: str) -> bool:
    try:
        return os.path.samefile(entry or os.curdir, REPO_ROOT)
    except OSError:  # a path entry that does not exist (yet)
        return False


def drop_repo_root() -> None:
    """Remove every `sys.path` entry naming the repo root ('' and '.' included when the cwd is
    the root), and forget top-level modules already imported from our folders under those names."""
    if not (REPO_ROOT / "kernels").is_dir():  # an installed copy, not a checkout: nothing can shadow
        return
    sys.path[:] = [entry for entry in sys.path if not _is_repo_root(entry)]
    for name in list(sys.modules):
        top = name.split(".", 1)[0]
        origin = getattr(sys.modules[name], "__file__", None)
        if top in SHADOWING_NAMES and origin and Path(origin).resolve().is_relative_to(REPO_ROOT / top):
            del sys.modules[name]
