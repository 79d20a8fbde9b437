"""report.html is self-contained and renders in a real headless browser (Chromium)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess

import pytest

from clbench.report import build_report
from clbench.report.synthetic import write_synthetic_run

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("html") / "run"
    write_synthetic_run(
        run_dir, scenarios=("pmnist", "split_mnist"), strategies=("naive", "ewc", "joint")
    )
    before = tmp_path_factory.mktemp("html_before") / "run_before"
    write_synthetic_run(before, scenarios=("pmnist",), strategies=("naive", "ewc"), seeds=(0, 1))
    return build_report(run_dir, compare=[before], formats=("html",))


def test_page_is_self_contained(report):
    html = (report.out_dir / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in html
    assert html.count("<table") == 4  # two scenarios + a comparison table for each
    assert html.count('src="data:image/png;base64,') == 10  # five figures per scenario
    assert "forgetting vs plasticity" in html or "Forgetting versus plasticity" in html
    # Nothing fetched from anywhere: no external scripts, styles or images.
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "<script" not in html
    assert not (report.out_dir / "pmnist__heatmaps.png").exists()  # "png" not requested


def chromium(tmp_path, *args):
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)"
)
def test_renders_in_headless_chromium(report, tmp_path):
    url = (report.out_dir / "report.html").resolve().as_uri()
    dom = chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count("<table") == 4
    for text in ("pmnist (domain_il, T=5, accuracy, higher is better)", "joint (upper bound)",
                 "pmnist: comparison", "<caption>Table 1."):  # fmt: skip
        assert text in html
    assert len(re.findall(r"<tr>", html)) >= 3 * 2 + 2  # header + rows in every table

    shot = tmp_path / "report.png"
    run = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,2000", url)
    assert run.returncode == 0, run.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1400, 2000)
