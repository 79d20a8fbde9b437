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

__all__ = ["register_model", "register_plugin", "register_scenario", "register_strategy", "__version__"]
