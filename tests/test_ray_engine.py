"""`clbench bench --engine ray` on a real local Ray cluster (2 CPUs, one session for the module).

Ray is in the dev extra (as in the `dist` extra), so these tests always run;
the last one shows what a user without Ray gets.
"""

from __future__ import annotations

import sys

import pytest

from clbench.cli import main
from clbench.engines.ray_engine import import_ray

from .test_reliability import by_label, results, stable, write_suite


@pytest.fixture(scope="module")
def ray_session():
    ray = import_ray(local=True)  # services on 127.0.0.1, as the engine's own local instance
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def marker_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ray_markers")


def test_ray_gives_the_same_results_as_the_local_engine(ray_session, tmp_path, one_torch_thread):
    suite = write_suite(tmp_path / "smoke.toml", "ray_smoke",
                        [{"label": "naive", "strategy": "naive"}, {"label": "ewc", "strategy": "ewc"}], seeds=[0, 1])
    assert main(["bench", str(suite), "--out", str(tmp_path / "local"), "-q"]) == 0
    assert main(["bench", str(suite), "--engine", "ray", "--out", str(tmp_path / "ray"), "-q", "--log", "csv"]) == 0
    local, on_ray = results(tmp_path / "local"), results(tmp_path / "ray")
    assert sorted(local) == sorted(on_ray) and len(local) == 4
    for cid in local:
        assert stable(on_ray[cid]) == stable(local[cid]), cid  # matrices to the bit, configs, sizes
        # --log reaches the Ray task, whose tracking files land in the driver's run dir.
        r = on_ray[cid]
        rows = (tmp_path / "ray" / "tracking" / "csv" / r["scenario"] / r["label"] / f"seed{r['seed']}" / "metrics.csv")
        last = {name: float(value) for _, name, value in (line.split(",") for line in rows.read_text().splitlines()[1:])}
        assert [last[f"eval/accuracy/exp{j:02d}"] for j in range(len(r["matrix"]))] == r["matrix"][-1]
    assert (tmp_path / "ray" / "summary.csv").read_text().count("\n") == 3  # header + 2 labels


def test_ray_retries_dead_workers_and_isolates_failures(ray_session, tmp_path, marker_dir):
    dies = {"strategy.marker_dir": str(marker_dir)}
    suite = write_suite(tmp_path / "faults.toml", "ray_faults", [
        {"label": "naive", "strategy": "naive"},
        {"label": "raises", "strategy": "raises"},
        {"label": "dies_once", "strategy": "dies", "set": dies | {"strategy.die_times": 1}},
        {"label": "dies_always", "strategy": "dies", "set": dies | {"strategy.die_times": 9}},
        {"label": "hangs", "strategy": "probe", "set": {"strategy.pause": 600.0}},
    ], seeds=[0])
    code = main(["bench", str(suite), "--engine", "ray", "--retries", "1", "--cell-timeout", "60",
                 "--out", str(tmp_path / "run"), "-q"])
    assert code == 1
    cells = by_label(results(tmp_path / "run"))
    assert cells["naive"]["status"] == "ok" and cells["dies_once"]["status"] == "ok"
    assert cells["dies_once"]["matrix"] and (marker_dir / f"{cells['dies_once']['cell_id']}.attempts").read_text() == "2"
    assert cells["raises"]["error"] == "RuntimeError: deliberate failure inside the strategy"
    assert cells["dies_always"]["error"].startswith("WorkerDied: the Ray worker running this cell died 2 time(s)")
    assert cells["hangs"]["error"].startswith("CellTimeout: the cell ran longer than --cell-timeout 60 s")
    assert all(cells[k]["matrix"] == [] for k in ("raises", "dies_always", "hangs"))


def test_without_ray_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    suite = write_suite(tmp_path / "s.toml", "no_ray", [{"label": "naive", "strategy": "naive"}], seeds=[0])
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` does when it is not installed
    assert main(["bench", str(suite), "--engine", "ray", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--engine ray needs Ray, which is not installed" in err and "pip install 'clbench[dist]'" in err
    assert not (tmp_path / "run").exists()
