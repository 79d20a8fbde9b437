"""Bad config fuzzing: random and garbage suite files and `--set` values given to
`clbench bench`. Every input either is a valid suite (it reaches the engine,
which is replaced here by a stub) or ends in one clean line on stderr and exit
code 2, with nothing written. A traceback is a failed example.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clbench.cli import main
from clbench.config import SUITE_KEYS

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
SCENARIOS = ["pmnist", "split_mnist", "split_cifar100", "nope", ""]
STRATEGIES = ["naive", "ewc", "replay", "joint", "icarl", "hope", "bogus"]
SET_KEYS = ["lr", "epochs", "train_mb_size", "optimizer", "model", "device", "plugins", "label", "seed", "train.lr",
            "scenario.n_experiences", "scenario.train_per_exp", "strategy.ewc_lambda", "strategy.mem_size",
            "optim.beta", "model.hidden", "plugin.cms_multirate.periods", "bogus", "strategy.", ".x", ""]


class ReachedEngine(Exception):
    """The stub engine: the input was valid all the way to running cells."""


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float, str)):
        return json.dumps(value)  # JSON numbers and \u-escaped strings are TOML too
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"


scalars = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(), st.text(max_size=12),
                    st.sampled_from(SCENARIOS + STRATEGIES))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
def keyed(keys, inner=values):
    return st.dictionaries(st.sampled_from(keys), inner, max_size=3)


# A valid suite with any of its fields replaced by something random, often nearly right.
FIELDS = {
    "name": st.one_of(values, st.sampled_from(["ok_name", "../up", "a/b", ""])),
    "profile": st.one_of(values, st.sampled_from(["smoke", "quick", "full", "huge"])),
    "seeds": st.one_of(values, st.lists(st.integers(-2**63, 2**63 - 1), max_size=3)),
    "scenarios": st.one_of(values, st.lists(st.sampled_from(SCENARIOS), max_size=3)),
    "strategies": st.one_of(values, st.lists(st.sampled_from(STRATEGIES), max_size=3)),
    "set": st.one_of(values, keyed(SET_KEYS)),
    "scenario_args": st.one_of(values, keyed(["pmnist", "nope"], st.one_of(values, keyed(["n_experiences", "x"])))),
    "strategy_args": st.one_of(values, keyed(["naive", "ewc"], st.one_of(values, keyed(["ewc_lambda", "x"])))),
    "variants": st.one_of(values, st.lists(st.one_of(values, keyed(["label", "strategy", "set", "junk"], st.one_of(
        values, st.sampled_from(STRATEGIES), keyed(SET_KEYS)))), max_size=2)),
    "tune": st.one_of(values, keyed(["naive", "ewc"], st.one_of(values, keyed(["lr", "strategy.ewc_lambda", "x"], st.one_of(
        values, keyed(["grid", "range", "log", "x"])))))),
    "plugin_files": values,
    "skip_unsupported": values,
    "log": st.one_of(values, st.lists(st.sampled_from(["tensorboard", "csv", "none", "tb", ""]), max_size=3)),
    "unknown_key": values,
}
one_field = st.one_of([st.fixed_dictionaries({key: field}) for key, field in FIELDS.items()])
suite_tables = st.builds(lambda changed: {"scenarios": ["pmnist"], "strategies": ["naive"], "seeds": [0]} | changed,
                         st.one_of(one_field, st.fixed_dictionaries({}, optional=FIELDS)))
set_args = st.lists(
    st.one_of(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(SET_KEYS), st.text(max_size=12)),
              st.builds(lambda k, v: f"{k}={toml_value(v)}", st.sampled_from(SET_KEYS), values),
              st.text(max_size=16)),
    max_size=3,
)


def bench(suite_text: str, sets: list[str]) -> None:
    """Run `clbench bench` on the text; assert the outcome is valid or a clean exit 2."""
    def engine(*args, **kwargs):
        raise ReachedEngine

    with pytest.MonkeyPatch.context() as patch, tempfile.TemporaryDirectory() as tmp:
        patch.setattr("clbench.suite.run_suite", engine)
        tmp = Path(tmp)
        (tmp / "suite.toml").write_text(suite_text)
        argv = ["bench", str(tmp / "suite.toml"), "-q"]
        argv += [f"--set={pair}" for pair in sets]  # "=" form: a value may start with "-"
        err, cwd = io.StringIO(), os.getcwd()
        os.chdir(tmp)  # a suite without --out writes under ./runs
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
        except ReachedEngine:
            return
        finally:
            os.chdir(cwd)
        message = err.getvalue()
        assert code == 2, message
        assert message.startswith("clbench: error: ") and message.count("\n") == 1, message
        assert sorted(p.name for p in tmp.iterdir()) == ["suite.toml"]  # nothing written


@SETTINGS
@given(text=st.text(max_size=200))
def test_garbage_suite_files(text):
    bench(text, [])


@SETTINGS
@given(table=suite_tables, sets=set_args)
def test_random_suite_tables_and_set_values(table, sets):
    text = "\n".join(f"{json.dumps(key)} = {toml_value(value)}" for key, value in table.items())
    bench(text, sets)


@SETTINGS
@given(sets=set_args)
def test_random_set_values_on_a_valid_suite(sets):
    bench('scenarios = ["pmnist"]\nstrategies = ["naive", "ewc"]\nseeds = [0]\n', sets)


def test_the_fuzzer_knows_every_suite_key():
    assert set(FIELDS) - {"unknown_key"} == SUITE_KEYS


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".", ".."])
def test_a_suite_name_that_is_not_a_folder_name_needs_out(name):
    bench(f'name = {json.dumps(name)}\nscenarios = ["pmnist"]\nstrategies = ["naive"]\n', [])
