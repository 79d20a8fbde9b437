"""The closed-form strategies (NCM / SimpleCIL, RanPAC) against their closed forms in numpy.

A tiny seeded feature stream (3 experiences x 2 classes, 8-dim features) goes
through the same path as a run (`build_strategy`, Avalanche `train(exp)` per
experience, `evaluate_row`-style batched forward); after every experience the
head's statistics, classifier and predictions must equal what numpy computes
in one batch from all the training data seen so far.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from clbench.errors import ConfigError
from clbench.resolve import resolve_config
from clbench.runner import build_strategy, run_cell
from clbench.scenarios.stream import ExperienceTensors, ScenarioInfo, TensorStream

D, CLASSES, N_TRAIN, N_TEST = 8, [[0, 1], [2, 3], [4, 5]], 25, 15
RIDGE_GRID = [10.0 ** k for k in range(-8, 14)]


def feature_stream(seed: int = 0) -> TensorStream:
    """Gaussian blobs with overlapping classes (so the ridge choice matters), float32 like real features."""
    rng = np.random.RandomState(seed)
    centres = rng.randn(6, D) * 1.2 + 0.5
    train, test = [], []
    for classes in CLASSES:
        for split, n in ((train, N_TRAIN), (test, N_TEST)):
            y = np.repeat(classes, n)
            rng.shuffle(y)
            x = centres[y] + rng.randn(len(y), D) * 1.5
            split.append(ExperienceTensors(torch.tensor(x, dtype=torch.float32), torch.tensor(y), task=0))
    info = ScenarioInfo("features", "class_il", 3, 6, (D,), CLASSES)
    return TensorStream(info, train, test)


def run(strategy: str, stream: TensorStream, seed: int = 0, **overrides):
    """Train experience by experience like the runner; yield (k, head, test predictions) after each."""
    cfg = resolve_config("split_mnist", strategy, seed=seed, profile="smoke",
                         overrides={"train.train_mb_size": 10, **overrides})
    _, template = build_strategy(cfg, stream, torch.device("cpu"))
    x_test = torch.cat([e.x for e in stream.test])
    for k, exp in enumerate(stream.to_benchmark().train_stream):
        template.train(exp)
        with torch.no_grad():
            yield k, template.model, template.model(x_test).argmax(1).numpy()


def seen_data(stream, k):
    x = torch.cat([e.x for e in stream.train[:k + 1]]).double().numpy()
    y = torch.cat([e.y for e in stream.train[:k + 1]]).numpy()
    return x, y


def test_ncm_prototypes_are_class_means_and_predictions_the_nearest():
    stream = feature_stream()
    x_test = torch.cat([e.x for e in stream.test]).double().numpy()
    for metric in ("cosine", "euclidean"):
        for k, head, pred in run("ncm", stream, **{"strategy.metric": metric}):
            x, y = seen_data(stream, k)
            seen = sorted(set(y.tolist()))
            means = np.stack([x[y == c].mean(0) for c in seen])
            np.testing.assert_allclose(head.prototypes[seen].numpy(), means, rtol=1e-12)
            if metric == "cosine":
                sim = (x_test / np.linalg.norm(x_test, axis=1, keepdims=True)) @ (
                    means / np.linalg.norm(means, axis=1, keepdims=True)).T
            else:
                sim = -((x_test[:, None, :] - means[None]) ** 2).sum(-1)
            expected = np.array(seen)[sim.argmax(1)]
            np.testing.assert_array_equal(pred, expected)
            assert set(pred.tolist()) <= set(seen)  # only classes seen so far are predicted


def numpy_ridge_search(h: np.ndarray, onehot: np.ndarray, seed: int, experience: int) -> tuple[float, list]:
    """The paper's selection, written directly: seeded 80/20 split, one solve per grid value."""
    n = len(h)
    order = np.random.default_rng([seed, experience]).permutation(n)
    fit, val = order[:int(0.8 * n)], order[int(0.8 * n):]
    losses = []
    for lam in RIDGE_GRID:
        w = np.linalg.solve(h[fit].T @ h[fit] + lam * np.eye(h.shape[1]), h[fit].T @ onehot[fit])
        losses.append(((h[val] @ w - onehot[val]) ** 2).mean())
    return RIDGE_GRID[int(np.argmin(losses))], losses


@pytest.mark.parametrize("ridge", ["auto", 0.3])
def test_ranpac_weight_is_the_batch_ridge_solution_over_all_data_seen(ridge):
    stream, seed = feature_stream(), 3
    x_test = torch.cat([e.x for e in stream.test]).double().numpy()
    picks = []
    overrides = {"strategy.projection_dim": 40, "strategy.ridge": ridge}
    for k, head, pred in run("ranpac", stream, seed=seed, **overrides):
        w_rand = head.projection.numpy()
        assert w_rand.shape == (D, 40)
        np.testing.assert_array_equal(  # the projection is the run seed's, fixed for the whole run
            w_rand, torch.randn(D, 40, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy())
        x, y = seen_data(stream, k)
        h, onehot = np.maximum(x @ w_rand, 0), np.eye(6)[y]
        if ridge == "auto":
            exp_h = np.maximum(stream.train[k].x.double().numpy() @ w_rand, 0)
            lam, losses = numpy_ridge_search(exp_h, np.eye(6)[stream.train[k].y.numpy()], seed, k)
            np.testing.assert_allclose(head.ridge_losses, losses, rtol=1e-6)
        else:
            lam = ridge
        assert head.chosen_ridges[-1] == lam
        picks.append(lam)
        np.testing.assert_allclose(head.gram.numpy(), h.T @ h, rtol=1e-10)
        w_out = np.linalg.solve(h.T @ h + lam * np.eye(40), h.T @ onehot)
        np.testing.assert_allclose(head.weight.numpy(), w_out, rtol=1e-6, atol=1e-9)
        seen = sorted(set(y.tolist()))
        scores = np.maximum(x_test @ w_rand, 0) @ w_out
        np.testing.assert_array_equal(pred, np.array(seen)[scores[:, seen].argmax(1)])
    if ridge == "auto":  # the data makes the search pick inside the grid, not at an end
        assert all(RIDGE_GRID[0] < lam < RIDGE_GRID[-1] for lam in picks), picks


@pytest.mark.parametrize("strategy, overrides", [
    ("ncm", {}), ("ncm", {"strategy.metric": "euclidean"}), ("ranpac", {"strategy.projection_dim": 40}),
])
def test_statistics_and_predictions_do_not_depend_on_minibatch_size(strategy, overrides):
    stream = feature_stream(1)
    outcomes = []
    for mb in (1, 7, 1000):
        runs = list(run(strategy, stream, **overrides, **{"train.train_mb_size": mb}))
        outcomes.append([(pred, {k: v.clone() for k, v in head.state_dict().items()}) for _, head, pred in runs])
    for other in outcomes[1:]:
        for (pred_a, state_a), (pred_b, state_b) in zip(outcomes[0], other, strict=True):
            np.testing.assert_array_equal(pred_a, pred_b)
            for name in state_a:
                torch.testing.assert_close(state_a[name], state_b[name], rtol=1e-10, atol=1e-12)


def test_extra_epochs_do_not_count_the_data_twice():
    stream = feature_stream()
    with pytest.warns(UserWarning, match="train_epochs=3 runs as 1"):
        runs = list(run("ncm", stream, **{"train.epochs": 3}))
    _, head, _ = runs[-1]
    assert head.counts.tolist() == [N_TRAIN] * 6


@pytest.mark.parametrize("strategy", ["ncm", "ranpac"])
def test_a_runner_cell_evaluates_the_closed_form_head(strategy, tmp_path, data_root):
    overrides = {"scenario.train_per_exp": 60, "scenario.test_per_exp": 30, "strategy.projection_dim": 64}
    if strategy == "ncm":
        del overrides["strategy.projection_dim"]
    cfg = resolve_config("split_mnist", strategy, profile="smoke", overrides=overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # epochs defaults to the single pass: no warning
        result = run_cell(cfg, tmp_path, data_root=data_root, progress=False)
    assert result["status"] == "ok", result["traceback"]
    assert cfg.train.epochs == 1
    assert result["num_params"] == 0  # nothing is trained: the head holds buffers only
    stored = {"ncm": 10 * 784 + 10 + 10, "ranpac": 784 * 64 + 64 * 64 + 2 * 64 * 10 + 10}[strategy]
    assert result["stored_values"] == stored
    assert all(np.isnan(result["initial"]))  # no class seen: no prediction, b undefined
    matrix = np.array(result["matrix"])
    # Class-IL: after experience k the head predicts only classes seen so far, so every later
    # experience scores exactly 0, and the seen ones well above chance.
    assert (matrix[np.triu_indices(5, 1)] == 0).all()
    assert (matrix[np.tril_indices(5)] > 0.3).all(), matrix  # chance is 1/10 after the last


def test_bad_options_and_task_il_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="does not support task_il") as err:
        resolve_config("split_mnist_til", "ncm", profile="smoke")
    assert "\n" not in str(err.value)
    for strategy, key, value, accepted in [("ncm", "metric", "manhattan", "cosine, euclidean"),
                                           ("ranpac", "ridge", "best", "'auto' or a number > 0"),
                                           ("ranpac", "ridge", -1.0, "'auto' or a number > 0"),
                                           ("ranpac", "projection_dim", 0, "an integer >= 1")]:
        with pytest.raises(ConfigError, match=f"bad {key} {value!r}; accepted: {accepted}") as err:
            resolve_config("split_mnist", strategy, profile="smoke", overrides={f"strategy.{key}": value})
        assert "\n" not in str(err.value)
