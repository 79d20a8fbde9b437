"""The committed dependency lock: it pins every distribution the install needs, the install
matches it, and a result records which lock made it (clbench/install_lock.py)."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from clbench.install_lock import LOCK_PATH, installed_versions, lock_record, mismatches, read_pins

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_lock_parses_names_canonically():
    pins = read_pins()
    assert pins["avalanche-lib"] == "0.6.0"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    # pip writes some names with '_' or capitals; compare them canonically.
    assert all(name == re.sub(r"[-_.]+", "-", name).lower() for name in pins)


def test_lock_pins_every_requirement_of_every_extra():
    pins = read_pins()
    requirements = importlib.metadata.requires("clbench") or []
    names = {re.split(r"[\s\[<>=!~;(]", req, maxsplit=1)[0] for req in requirements}
    names = {re.sub(r"[-_.]+", "-", n).lower() for n in names}
    assert names, "clbench's metadata lists no requirements"
    assert not names - set(pins), f"not pinned in {LOCK_PATH.name}: {sorted(names - set(pins))}"
    # transformers pulls Hugging Face's `kernels`, the package our kernels/ folder must not shadow.
    assert "kernels" in pins


def test_this_install_matches_the_lock():
    """make install (and so .ci/run) installs with -c requirements/lock.txt."""
    assert mismatches(read_pins(), installed_versions()) == []
    assert lock_record()["lock_matches_install"] is True


def test_mismatches_name_the_differing_pins():
    pins = {"torch": "2.14.1", "numpy": "1.0.0", "absent-dist": "1.2"}
    installed = {"torch": "2.14.1", "numpy": "2.4.6"}
    assert mismatches(pins, installed) == ["absent-dist lock=1.2 installed=missing",
                                           "numpy lock=1.0.0 installed=2.4.6"]


def test_makefile_and_ci_install_from_the_lock():
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*-c \$\(LOCK\)", makefile.replace("$(PIP)", "pip install"))
    assert "LOCK   := requirements/lock.txt" in makefile
    assert "make install" in (REPO_ROOT / ".ci" / "run").read_text()
