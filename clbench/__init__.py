"""clbench: a continual-learning benchmark suite built on Avalanche.

Baselines, Nested Learning methods (HOPE, CMS, deep optimizers) and user
strategies run on the same tensorized streams and are scored from the same
accuracy matrices.
"""

__version__ = "0.1.0"

from clbench.sys_path_guard import drop_repo_root  # noqa: E402  (first: see its docstring)

drop_repo_root()

from clbench.registry import (  # noqa: E402  (the public registration API)
    register_model,
    register_plugin,
    register_scenario,
    register_strategy,
)

__all__ = [
    "CellFailedError", "Result", "curves", "load", "register_model", "register_plugin", "register_scenario",
    "register_strategy", "run", "summary", "__version__",
]  # fmt: skip

# The Python API (docs/api.md), imported on first use: `import clbench` must stay cheap
# (no torch, no pandas) because every worker and console script starts with it.
_API = ("CellFailedError", "Result", "curves", "load", "run", "summary")


def __getattr__(name: str):
    if name in _API:
        from clbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'clbench' has no attribute {name!r}")
