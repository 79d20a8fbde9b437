"""Helpers for the Triton kernel tests (test_dgd_rule_triton*.py, test_mlp_memory.py,
test_dmgd_mlp.py, test_cms_step.py, test_cms_multirate_kernel.py).

Import these inside fixtures and tests (`from .kernel_testing import ...`), not at the top
of a test file: the interpreter subprocess runs the test file as a plain script, where this
package is not importable (and `tests` names the one Avalanche installs in site-packages).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_interpreted(script: str, **env: str) -> dict:
    """Run `python script` with TRITON_INTERPRET=1 and return the JSON object its last
    stdout line holds.

    Triton reads TRITON_INTERPRET when a kernel is decorated, once per process, so the
    kernel checks run in a fresh process; CLBENCH_KERNELS is dropped so that the script's
    own `impl=` choices hold. `env` adds variables (e.g. OMP_NUM_THREADS="1")."""
    run_env = {**os.environ, "TRITON_INTERPRET": "1", **env}
    run_env.pop("CLBENCH_KERNELS", None)
    proc = subprocess.run(
        [sys.executable, script], env=run_env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"interpreter run failed:\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compile_for_sm90(kernel, signature: dict, constants: dict, **options) -> bytes:
    """A Hopper cubin of `kernel` with argument types `signature` and constexpr `constants`;
    needs no GPU (Triton ships ptxas). The interpreter accepts code the compiler rejects
    (e.g. non-constexpr globals), so every kernel is also compiled."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(kernel, signature | dict.fromkeys(constants, "constexpr"), constexprs=constants)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["cubin"]
