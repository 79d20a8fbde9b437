"""The repo's top-level `kernels/`, `strategies/` and `scenarios/` never shadow installed packages.

Hugging Face's `kernels` distribution is a dependency of transformers, whose
`transformers.integrations.hub_kernels` runs `from kernels import CUDAProperties, ...` when the
distribution is installed. With the repo root ahead of site-packages, that import found our
`kernels/` folder and every MiniLM model failed (`ImportError: cannot import name 'CUDAProperties'`).
These tests check it from the two places it went wrong: the pytest process itself (started from
the repo root by `make test`), and fresh interpreters started from the repo root.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHADOWING_NAMES = ("kernels", "strategies", "scenarios")

# Imports transformers' hub-kernels integration and loads the pretrained MiniLM encoder; prints
# where `kernels` came from. Run from the repo root, after clbench is imported the way each entry
# point imports it.
LOAD_ENCODER = """
import importlib.util, sys
{prelude}
import transformers.integrations.hub_kernels as hub
assert hasattr(hub, "CUDAProperties"), "transformers did not load Hugging Face's kernels"
from clbench.text_encoder import load_minilm
bert = load_minilm()
assert bert.config.hidden_size == 384
print("kernels from", importlib.util.find_spec("kernels").origin)
"""


def _not_ours(name: str, origin: str | None) -> bool:
    """The module `name` was not loaded from the repo's folder of that name (.venv may sit in the repo)."""
    return origin is None or not Path(origin).resolve().is_relative_to(REPO_ROOT / name)


def test_hf_kernels_is_installed():
    # The lock pins it (transformers requires it); without it the tests below would prove nothing.
    assert importlib.metadata.version("kernels")


def test_pytest_process_does_not_see_the_repo_root():
    for entry in sys.path:  # '' is the cwd, which is the root under `make test`
        assert Path(entry or ".").resolve() != REPO_ROOT, entry
    for name in SHADOWING_NAMES:
        spec = importlib.util.find_spec(name)
        assert _not_ours(name, spec and spec.origin), f"import {name} finds {spec.origin}"


def test_transformers_hub_kernels_and_minilm_load_in_the_test_process():
    import transformers.integrations.hub_kernels as hub

    from clbench.text_encoder import load_minilm

    assert hasattr(hub, "CUDAProperties")
    assert _not_ours("kernels", sys.modules["kernels"].__file__)
    assert load_minilm().config.hidden_size == 384


@pytest.mark.parametrize("prelude", ["import clbench", "import clbench.cli", "import clbench.engines.local"])
def test_python_c_from_the_repo_root(prelude):
    """`python -c` puts the cwd (here the repo root) first on sys.path; importing clbench drops it."""
    proc = subprocess.run([sys.executable, "-c", LOAD_ENCODER.format(prelude=prelude)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "site-packages" in proc.stdout, proc.stdout


def test_python_m_clbench_from_the_repo_root():
    proc = subprocess.run([sys.executable, "-m", "clbench", "list", "models"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "minilm_frozen" in proc.stdout


def test_a_module_imported_from_the_root_before_clbench_is_forgotten():
    """`python -c "import kernels; import clbench"` from the root: the stale module is evicted."""
    code = "import kernels; import clbench; import kernels as again; print(again.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _not_ours("kernels", proc.stdout.strip()), proc.stdout
