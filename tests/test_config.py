"""Config resolution, --set parsing, suite files and the errors they raise."""

from __future__ import annotations

import pytest

from clbench.config import load_suite, parse_set_args
from clbench.errors import ClbenchError, ConfigError, UnknownNameError
from clbench.resolve import expand_suite, resolve_config


def test_layers_apply_in_order_profile_defaults_suite_cli():
    # pmnist quick profile: sgd lr 0.1; ewc's P-MNIST default: lambda 1.
    base = resolve_config("pmnist", "ewc", profile="quick")
    assert base.train.optimizer == "sgd" and base.train.lr == 0.1
    assert base.strategy_args["ewc_lambda"] == 1.0
    assert resolve_config("split_mnist", "ewc").strategy_args["ewc_lambda"] == 10000.0
    assert base.scenario_args["n_experiences"] == 10  # the quick P-MNIST that forgets (issue 15)
    cfg = resolve_config(
        "pmnist", "ewc", profile="quick",
        layers=[("suite", {"lr": 0.05, "strategy.ewc_lambda": 7})],
        overrides={"train.lr": 0.01},
    )
    assert cfg.train.lr == 0.01  # the command line beats the suite
    assert cfg.strategy_args["ewc_lambda"] == 7.0  # ints are accepted for floats


def test_profiles_size_the_scenario():
    smoke = resolve_config("pmnist", "naive", profile="smoke")
    full = resolve_config("pmnist", "naive", profile="full")
    assert smoke.scenario_args["train_per_exp"] == 256
    assert full.scenario_args["n_experiences"] == 10 and full.scenario_args["train_per_exp"] is None


def test_config_hash_ignores_seed_but_not_hyperparameters():
    a = resolve_config("split_mnist", "replay", seed=0)
    b = resolve_config("split_mnist", "replay", seed=1)
    c = resolve_config("split_mnist", "replay", seed=0, overrides={"strategy.mem_size": 100})
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_model_auto_resolves_per_scenario():
    assert resolve_config("pmnist", "naive").model == "mlp"
    assert resolve_config("split_cifar100", "naive", profile="smoke").model == "slim_resnet18"
    assert resolve_config("split_cifar100", "naive").model == "conv4"  # the quick profile names it
    assert resolve_config("split_cifar100", "naive", profile="full").model == "resnet18"  # the profile names it


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lrr": 0.1}, "unknown config key 'lrr'"),
        ({"lr": "fast"}, "bad value for --set lr: 'fast' is not a number"),
        ({"epochs": 0}, "bad value for epochs: 0"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'; valid optimizers: adam, adamw, delta_momentum, dgd, dmgd, m3, sgd"),
        ({"optim.beta": 1}, "optimizer 'sgd' takes no options; got beta"),
        ({"strategy.ewc_lambda": -1}, "ewc_lambda must be >= 0"),
        ({"strategy.lambda": 1}, "unknown strategy 'ewc' option(s) lambda; valid: ewc_lambda"),
        ({"scenario.n_experiences": "five"}, "is not an integer"),
        ({"model": "transformer9000"}, "unknown model 'transformer9000'; valid models: "),
        ({"plugins": ["nope"]}, "unknown plugin 'nope'"),
        ({"model.width": 3}, "unknown argument(s) width for model 'mlp'; valid: hidden, layers"),
        ({"lr": float("nan")}, "not a finite number"),
    ],
)
def test_bad_values_are_rejected_with_the_accepted_ones(overrides, message):
    with pytest.raises(ClbenchError) as err:
        resolve_config("pmnist", "ewc", overrides=overrides)
    assert message in str(err.value)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid strategys: agem, .*, der, dmgd, .*, ewc,"):
        resolve_config("pmnist", "ewcc")
    with pytest.raises(UnknownNameError, match="pmnist, rotated_mnist"):
        resolve_config("pmnsit", "ewc")


def test_incompatible_scenario_type_is_rejected_up_front():
    with pytest.raises(ConfigError, match="'icarl' does not support domain_il scenarios such as 'pmnist'"):
        resolve_config("pmnist", "icarl")
    with pytest.raises(ConfigError, match="does not support task_il"):
        resolve_config("split_mnist_til", "der")


def test_parse_set_values_are_toml_with_bare_strings():
    parsed = parse_set_args(["lr=0.5", "plugins=[\"a\", \"b\"]", "model=mlp", "strategy.alpha=[0, 0.5]", "x=true",
                             "plugins2=[cms_multirate, ewc_like]", "p3=[true, 1e-3]"])
    assert parsed == {"lr": 0.5, "plugins": ["a", "b"], "model": "mlp", "strategy.alpha": [0, 0.5], "x": True,
                      "plugins2": ["cms_multirate", "ewc_like"], "p3": [True, 1e-3]}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_set_args(["lr"])


def test_suite_toml_error_names_the_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\nscenarios = ["pmnist"\nstrategies = ["naive"]\n')
    with pytest.raises(ConfigError, match=r"TOML error in suite file .*bad.toml: .*line 3"):
        load_suite(path)


def test_suite_unknown_key_and_missing_strategies(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('scenarios = ["pmnist"]\nstrategies = ["naive"]\nseed = 3\n')
    with pytest.raises(ConfigError, match="unknown key.*seed.*valid: .*seeds"):
        load_suite(path)
    path.write_text('scenarios = ["pmnist"]\n')
    with pytest.raises(ConfigError, match="lists no strategies"):
        load_suite(path)


def test_suite_expands_scenarios_strategies_variants_and_seeds(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        'scenarios = ["pmnist", "split_mnist"]\nstrategies = ["naive", "ewc"]\nseeds = [0, 1]\nprofile = "smoke"\n'
        '[strategy_args.ewc]\newc_lambda = 5\n'
        '[scenario_args.pmnist]\nn_experiences = 2\n'
        '[[variants]]\nlabel = "replay_small"\nstrategy = "replay"\nset = { "strategy.mem_size" = 50 }\n'
    )
    suite = load_suite(path)
    cells = expand_suite(suite, ["epochs=2"])
    assert len(cells) == 2 * 3 * 2
    by_label = {(c.scenario, c.label, c.seed): c for c in cells}
    assert by_label[("pmnist", "ewc", 1)].strategy_args["ewc_lambda"] == 5.0
    assert by_label[("pmnist", "naive", 0)].scenario_args["n_experiences"] == 2
    assert by_label[("split_mnist", "naive", 0)].scenario_args["n_experiences"] == 5
    small = by_label[("split_mnist", "replay_small", 0)]
    assert small.strategy == "replay" and small.strategy_args["mem_size"] == 50
    assert all(c.train.epochs == 2 for c in cells)


def test_suite_rejects_duplicate_labels_and_stray_scenario_args(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('scenarios = ["pmnist"]\nstrategies = ["naive"]\n[[variants]]\nlabel = "naive"\nstrategy = "ewc"\n')
    with pytest.raises(ConfigError, match="uses these labels twice: naive"):
        expand_suite(load_suite(path))
    path.write_text('scenarios = ["pmnist"]\nstrategies = ["naive"]\n[scenario_args.split_mnist]\nn_experiences = 5\n')
    with pytest.raises(ConfigError, match="scenarios it does not run: split_mnist"):
        expand_suite(load_suite(path))


def test_variant_scenarios_limit_where_a_variant_runs(tmp_path):
    path = tmp_path / "s.toml"
    base = 'scenarios = ["pmnist", "split_mnist"]\nstrategies = ["naive"]\nseeds = [0]\n[[variants]]\nlabel = "r"\nstrategy = "replay"\n'
    path.write_text(base + 'scenarios = ["split_mnist"]\n')
    cells = expand_suite(load_suite(path))
    assert [(c.scenario, c.label) for c in cells] == [("pmnist", "naive"), ("split_mnist", "naive"), ("split_mnist", "r")]
    path.write_text(base + 'scenarios = ["clinc150"]\n')
    with pytest.raises(ConfigError, match="variant 'r' names scenarios the suite does not run: clinc150"):
        expand_suite(load_suite(path))
    path.write_text(base + 'scenarios = "split_mnist"\n')
    with pytest.raises(ConfigError, match="variants\\[0\\].scenarios must be a list"):
        load_suite(path)


def test_skip_unsupported_lists_the_pairs_it_leaves_out(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('scenarios = ["pmnist", "split_mnist"]\nstrategies = ["naive", "icarl"]\nseeds = [0]\n')
    with pytest.raises(ConfigError, match="'icarl' does not support domain_il"):
        expand_suite(load_suite(path))
    path.write_text(path.read_text() + "skip_unsupported = true\n")
    skipped: list[str] = []
    cells = expand_suite(load_suite(path), skipped=skipped)
    assert [(c.scenario, c.strategy) for c in cells] == [("pmnist", "naive"), ("split_mnist", "naive"), ("split_mnist", "icarl")]
    assert skipped == ["pmnist/icarl: icarl does not support domain_il"]


def test_model_args_reach_the_model(tmp_path, data_root):
    from clbench.runner import run_cell

    cfg = resolve_config("pmnist", "naive", profile="smoke", overrides={
        "model.hidden": 32, "model.layers": 1, "scenario.n_experiences": 1, "scenario.train_per_exp": 32,
        "scenario.test_per_exp": 32})
    result = run_cell(cfg, tmp_path, data_root=data_root, progress=False)
    assert result["num_params"] == 784 * 32 + 32 + 32 * 10 + 10


def test_a_strategy_can_default_its_own_model():
    assert resolve_config("pmnist", "cms").model == "cms_mlp"
    assert resolve_config("split_cifar100", "cms").model == "cms_resnet"
    assert resolve_config("pmnist", "cms", overrides={"model": "mlp"}).model == "mlp"
