"""Reliability guarantees of `clbench bench`, each shown end to end (docs/cluster.md):
kill and resume, determinism, two processes on one run dir, fault isolation,
data integrity. Cells are tiny (tests/plugins/tiny_cells.py) so the cost is in
the processes these tests start, not in training.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clbench.cli import main
from clbench.locking import WAIT, CellTask, Claim, ClaimQueue
from clbench.store import result_path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugins" / "tiny_cells.py"
VOLATILE = {"env", "started_at", "finished_at", "traceback"}  # plus *_seconds, *_per_s, *_mb


def write_suite(path: Path, name: str, variants: list[dict], seeds=(0, 1)) -> Path:
    lines = [f'name = "{name}"', 'profile = "smoke"', f"seeds = {list(seeds)}", 'scenarios = ["tiny_blobs"]',
             f'plugin_files = ["{PLUGIN}"]']
    for v in variants:
        sets = ", ".join(f'"{k}" = {json.dumps(val)}' for k, val in v.get("set", {}).items())
        lines += ["[[variants]]", f'label = "{v["label"]}"', f'strategy = "{v["strategy"]}"', f"set = {{ {sets} }}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def results(run_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(run_dir).glob("cells/*/result.json"))}


def stable(result: dict) -> dict:
    """What must be identical between runs: everything but timings, memory and host facts."""
    return {k: v for k, v in result.items()
            if k not in VOLATILE and not k.endswith(("_seconds", "_per_s", "_mb"))}


def summary_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "summary.csv") as f:
        return [{k: v for k, v in row.items() if not k.startswith("wall_seconds")} for row in csv.DictReader(f)]


def cli_process(*args: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "clbench.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def starts(marker_dir: Path) -> list[tuple[str, int]]:
    log = marker_dir / "starts.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [(cid, int(pid)) for cid, pid in (line.split() for line in lines)]


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may be slow to reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def markers(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("markers")


@pytest.fixture(scope="module")
def smoke_suite(tmp_path_factory, markers) -> Path:
    probe = {"strategy.marker_dir": str(markers), "strategy.pause": 0.3}
    return write_suite(tmp_path_factory.mktemp("suite") / "smoke.toml", "smoke",
                       [{"label": "probe", "strategy": "probe", "set": probe}], seeds=range(6))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, smoke_suite) -> Path:
    """The smoke suite, uninterrupted, in this process, one torch thread."""
    import torch

    run_dir = tmp_path_factory.mktemp("reference")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["bench", str(smoke_suite), "--out", str(run_dir), "-q"]) == 0
    finally:
        torch.set_num_threads(previous)
    assert len(results(run_dir)) == 6
    return run_dir


# --------------------------------------------------------------------------- 1. kill and resume
def test_sigkill_mid_cell_then_resume_matches_an_uninterrupted_run(reference, smoke_suite, markers, tmp_path,
                                                                   one_torch_thread):
    run_dir = tmp_path / "run"
    seen_before = len(starts(markers))
    proc = cli_process("bench", str(smoke_suite), "--out", str(run_dir), "--jobs", "2", "-q")

    def mid_cell() -> bool:
        # Every JSON in the run dir parses at every moment: writes are atomic.
        for path in run_dir.rglob("*.json"):
            json.loads(path.read_text())
        done = sum(r["status"] == "ok" for r in results(run_dir).values()) if run_dir.is_dir() else 0
        return done >= 1 and len(starts(markers)) - seen_before > done

    try:
        wait_until(mid_cell, 600, "a finished cell and one in flight")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_workers = {pid for _, pid in starts(markers)[seen_before:]}
    finished = {cid: result_path(run_dir, cid).read_bytes() for cid in results(run_dir)}
    assert 1 <= len(finished) < 6
    # The workers die with the driver (PR_SET_PDEATHSIG): nothing keeps running a cell.
    wait_until(lambda: not any(running(pid) for pid in killed_workers), 30, "workers to exit")

    assert main(["bench", str(smoke_suite), "--out", str(run_dir), "-q"]) == 0
    resumed, uninterrupted = results(run_dir), results(reference)
    assert sorted(resumed) == sorted(uninterrupted)
    for cid, result in resumed.items():
        assert stable(result) == stable(uninterrupted[cid]), cid
    assert {cid: result_path(run_dir, cid).read_bytes() for cid in finished} == finished  # not rerun
    assert summary_rows(run_dir) == summary_rows(reference)
    assert not list(run_dir.rglob("*.tmp"))


# --------------------------------------------------------------------------- 2-4. jobs 2, faults
@pytest.fixture(scope="module")
def fault_run(tmp_path_factory, markers):
    """A good cell (the smoke suite's seed 0) next to every kind of failure, --jobs 2, one thread each."""
    probe = {"strategy.marker_dir": str(markers), "strategy.pause": 0.3}
    variants = [
        {"label": "probe", "strategy": "probe", "set": probe},
        {"label": "raises", "strategy": "raises"},
        {"label": "nan", "strategy": "naive", "set": {"lr": 1e30}},
        {"label": "hangs", "strategy": "probe", "set": {"strategy.pause": 600.0}},
        {"label": "dies_once", "strategy": "dies", "set": {"strategy.marker_dir": str(markers), "strategy.die_times": 1}},
        {"label": "dies_always", "strategy": "dies", "set": {"strategy.marker_dir": str(markers), "strategy.die_times": 9}},
    ]
    base = tmp_path_factory.mktemp("faults")
    suite = write_suite(base / "faults.toml", "faults", variants, seeds=[0])
    run_dir = base / "run"
    code = main(["bench", str(suite), "--out", str(run_dir), "--jobs", "2", "--cell-timeout", "20", "--retries", "1",
                 "-q"])
    return code, results(run_dir)


def by_label(run: dict[str, dict]) -> dict[str, dict]:
    return {r["label"]: r for r in run.values()}


def test_jobs_2_matrices_are_bit_identical_to_the_sequential_run(fault_run, reference):
    _, run = fault_run
    (cid,) = [c for c, r in run.items() if r["label"] == "probe"]
    assert run[cid]["status"] == "ok"
    assert run[cid]["matrix"] == results(reference)[cid]["matrix"]  # float equality: same bits
    assert run[cid]["initial"] == results(reference)[cid]["initial"]


def test_failures_are_stored_with_their_reason_and_the_rest_completes(fault_run):
    code, run = fault_run
    assert code == 1  # some cells failed; all were stored
    cells = by_label(run)
    assert set(cells) == {"probe", "raises", "nan", "hangs", "dies_once", "dies_always"}
    assert cells["raises"]["error"] == "RuntimeError: deliberate failure inside the strategy"
    assert cells["nan"]["error"].startswith("NonFiniteLossError: loss is nan")
    assert cells["hangs"]["error"].startswith("CellTimeout: the cell ran longer than --cell-timeout 20 s")
    assert cells["dies_always"]["error"].startswith("WorkerDied: the worker process running this cell died "
                                                    "(exit code -9) 2 time(s); retries are set to 1")
    for label in ("probe", "dies_once"):  # a worker death is retried; the retry completes the cell
        assert cells[label]["status"] == "ok" and len(cells[label]["matrix"]) == 2
        assert all(len(row) == 2 for row in cells[label]["matrix"])
    for label in ("raises", "nan", "hangs", "dies_always"):
        assert cells[label]["status"] == "failed" and cells[label]["matrix"] == []


def test_deterministic_flag_changes_nothing_on_cpu(reference, smoke_suite, tmp_path, one_torch_thread):
    import torch

    try:
        assert main(["bench", str(smoke_suite), "--out", str(tmp_path), "--deterministic", "-q"]) == 0
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    ours, theirs = results(tmp_path), results(reference)
    assert {c: r["matrix"] for c, r in ours.items()} == {c: r["matrix"] for c, r in theirs.items()}


# --------------------------------------------------------------------------- 3. two processes
def test_two_processes_on_one_run_dir_split_the_cells(tmp_path):
    marker_dir, gate = tmp_path / "markers", tmp_path / "go"
    marker_dir.mkdir()
    probe = {"strategy.marker_dir": str(marker_dir), "strategy.gate": str(gate)}
    suite = write_suite(tmp_path / "shared.toml", "shared", [{"label": "probe", "strategy": "probe", "set": probe}],
                        seeds=range(6))
    run_dir = tmp_path / "run"
    procs = [cli_process("bench", str(suite), "--out", str(run_dir), "-q") for _ in range(2)]
    try:
        # Both processes hold a cell at the gate before any cell may finish: they overlap.
        wait_until(lambda: len({pid for _, pid in starts(marker_dir)}) == 2, 600, "both processes to start a cell")
        gate.touch()
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    ran = [cid for cid, _ in starts(marker_dir)]
    assert len(ran) == 6 and len(set(ran)) == 6  # every cell ran exactly once
    assert all(r["status"] == "ok" for r in results(run_dir).values()) and len(results(run_dir)) == 6
    assert sum(int(o.split(" ran ok")[0].rsplit(" ", 1)[1]) for o in outputs) == 6
    assert all("stored by another process" in o for o in outputs)
    assert int(summary_rows(run_dir)[0]["n_seeds"]) == 6


def test_claim_queue_skips_cells_held_elsewhere_until_they_are_free(tmp_path):
    tasks = [CellTask(None, f"cell{i}") for i in range(3)]
    held = Claim.try_take(tmp_path, "cell1")  # another process's claim (a separate open file)
    queue = ClaimQueue(tmp_path, tasks, resume=True)
    assert queue.next().cell_id == "cell0"
    assert queue.next().cell_id == "cell2"
    assert queue.next() == WAIT
    held.release()
    time.sleep(0.25)
    assert queue.next().cell_id == "cell1"
    assert Claim.try_take(tmp_path, "cell1") is None  # still ours
    queue.close()
    assert queue.next() is None


# --------------------------------------------------------------------------- bad engine options
@pytest.mark.parametrize("args, message", [
    (["--address", "auto"], "--address only apply to --engine ray"),
    (["--engine", "ray", "--jobs", "2"], "--jobs applies to --engine local"),
    (["--cell-timeout", "0"], "bad --cell-timeout 0.0"),
    (["--retries", "-1"], "bad --retries -1"),
])
def test_bad_engine_options_are_refused_before_anything_runs(args, message, smoke_suite, tmp_path, capsys):
    assert main(["bench", str(smoke_suite), "--out", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clbench: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 5. data integrity
def test_a_verified_file_is_not_hashed_again_until_it_changes(tmp_path, monkeypatch):
    from clbench.scenarios import integrity

    monkeypatch.setenv("CLBENCH_VERIFY_DATA", "1")
    data = tmp_path / "DATA" / "raw" / "file.bin"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"x" * 1000)
    sums = {"DATA/raw/file.bin": integrity._digest(data, "sha256", False)}
    hashed = []
    real_digest = integrity._digest
    monkeypatch.setattr(integrity, "_digest", lambda *a: hashed.append(a[0]) or real_digest(*a))
    integrity.verify_files(tmp_path, [data], sha256=sums, md5={})
    integrity.verify_files(tmp_path, [data], sha256=sums, md5={})
    assert hashed == [data]  # the second check is a stat against the stamp
    data.write_bytes(b"x" * 999 + b"y")  # same size, new content and mtime
    os.utime(data, ns=(time.time_ns() + 10**9,) * 2)
    with pytest.raises(integrity.CorruptDataError, match=r"DATA/raw/file\.bin is corrupt: its SHA256 is"):
        integrity.verify_files(tmp_path, [data], sha256=sums, md5={})
    assert not list(tmp_path.rglob("verified"))  # stamps live in the cache, not the data root


def test_gz_files_are_checked_by_their_content_and_unknown_files_refused(tmp_path, monkeypatch):
    from clbench.scenarios import integrity

    monkeypatch.setenv("CLBENCH_VERIFY_DATA", "1")
    plain = tmp_path / "labels-ubyte"
    plain.write_bytes(bytes(range(200)))
    sums = {"labels-ubyte": integrity._digest(plain, "sha256", False)}
    packed = tmp_path / "labels-ubyte.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    integrity.verify_files(tmp_path, [packed], sha256=sums, md5={})
    stray = tmp_path / "other-ubyte"
    stray.write_bytes(b"1")
    with pytest.raises(integrity.CorruptDataError, match=r"other-ubyte has no recorded checksum"):
        integrity.verify_files(tmp_path, [stray], sha256=sums, md5={})


def test_a_corrupt_dataset_file_fails_the_cell_by_name_and_gives_no_numbers(data_root, tmp_path, monkeypatch):
    """One flipped label byte (still a valid digit, so only the checksum can notice)."""
    from clbench.resolve import resolve_config
    from clbench.runner import run_cell
    from clbench.scenarios import checksums, integrity

    monkeypatch.setenv("CLBENCH_VERIFY_DATA", "1")
    copy = tmp_path / "data" / "MNIST" / "raw"
    copy.mkdir(parents=True)
    sums = {}
    for source in sorted((data_root / "MNIST" / "raw").iterdir()):
        if source.name.endswith("-ubyte"):
            (copy / source.name).symlink_to(source.resolve())  # data_root may be relative (CI)
            sums[f"MNIST/raw/{source.name}"] = integrity._digest(source, "sha256", False)
    # The recorded sums are those of this data root's files (the official ones on CI).
    monkeypatch.setattr(checksums, "SHA256", sums)
    labels = copy / "train-labels-idx1-ubyte"
    content = bytearray(labels.read_bytes())
    labels.unlink()
    content[8] = (content[8] + 1) % 10
    labels.write_bytes(bytes(content))
    cfg = resolve_config("pmnist", "naive", profile="smoke",
                         overrides={"scenario.n_experiences": 2, "scenario.train_per_exp": 64, "scenario.test_per_exp": 32})
    result = run_cell(cfg, tmp_path / "run", data_root=tmp_path / "data", progress=False)
    assert result["status"] == "failed" and result["matrix"] == [] and result["initial"] == []
    assert result["error"].startswith(f"CorruptDataError: {labels} is corrupt: its SHA256 is")


def test_recorded_sums_accept_the_official_files_and_refuse_made_up_ones(data_root, monkeypatch):
    from clbench.scenarios import checksums, integrity

    monkeypatch.setenv("CLBENCH_VERIFY_DATA", "1")
    paths = sorted((data_root / "MNIST" / "raw").glob("*-ubyte"))
    official = all(integrity._digest(p, "sha256", False) == checksums.SHA256[f"MNIST/raw/{p.name}"] for p in paths)
    if official:  # the shared copy (CI): every recorded file it holds passes, text and CIFAR-100 too
        present = [data_root / key for key in checksums.SHA256 if (data_root / key).is_file()]
        assert len(present) > len(paths)
        integrity.verify_files(data_root, present)
    else:  # tests/conftest.py's synthetic digits under the official names
        with pytest.raises(integrity.CorruptDataError, match="is corrupt"):
            integrity.verify_files(data_root, paths)
    assert len(paths) == 4


def test_text_sums_agree_with_the_sources_downloads_are_checked_against():
    from clbench.scenarios import checksums, text_data

    for folder, files in text_data.SOURCES.items():
        for name, remote in files.items():
            accepted = checksums.SHA256[f"{folder}/{name}"]
            assert remote.sha256 in ((accepted,) if isinstance(accepted, str) else accepted), name
