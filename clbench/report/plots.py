"""Report figures: five PNGs per scenario, whatever the number of strategies or seeds.

1. `<scenario>__heatmaps.png`: the mean result matrix of every strategy, one panel each;
2. `<scenario>__seen_average.png`: average metric on the experiences seen so far
   after each experience (A_k), one line per strategy, 95% CI bands;
3. `<scenario>__forgetting.png`: per-experience forgetting after the last experience;
4. `<scenario>__stability_plasticity.png`: forgetting versus plasticity, 95% CIs both
   ways, one point per row: forgetting means little for a row that learned little;
5. `<scenario>__pareto.png`: ACC versus wall time, with the Pareto front.

The figure count is bounded per scenario because rendering dominates the report's
run time. Colours come from seaborn's colour-blind palette, each strategy keeping
the same colour and marker in every figure of its scenario.
"""

from __future__ import annotations

import io
import math
import multiprocessing as mp
import os
import re
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display needed, same output everywhere

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.path import Path  # noqa: E402
from matplotlib.textpath import TextPath, text_to_path  # noqa: E402
from matplotlib.transforms import Affine2D  # noqa: E402
from scipy import stats  # noqa: E402

from clbench.report.aggregate import Analysis, ScenarioInfo  # noqa: E402
from clbench.report.display import units_for  # noqa: E402

DPI = 150
# seaborn's "colorblind" palette (Waskom 2021), inlined to skip importing seaborn.
PALETTE = ["#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc",
           "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9"]  # fmt: skip
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<"]
MAX_ANNOTATED_T = 10  # beyond this, numbers in heatmap cells become unreadable


@dataclass
class Plot:
    scenario: str
    kind: str
    filename: str
    title: str
    png: bytes


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def render_plots(analysis: Analysis, jobs: int | None = None) -> list[Plot]:
    """Every figure of the report, rendered in `jobs` processes (default: idle CPUs, max 4).

    Figures are independent and rendering is CPU-bound, so on Linux they are
    drawn in forked workers, which inherit `analysis` and the imported matplotlib
    without pickling or re-importing anything. `CLBENCH_REPORT_JOBS=1` forces one process.
    """
    tasks = [(name, kind) for kind in KINDS for name in sorted(analysis.scenarios)]
    jobs = min(jobs or _default_jobs(), len(tasks))
    if jobs < 2 or not _fork_is_safe():
        results = [_render_one(analysis, name, kind) for name, kind in tasks]
    else:
        global _FORKED_ANALYSIS
        _FORKED_ANALYSIS = analysis
        try:
            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork")) as pool:
                results = list(pool.map(_render_in_worker, tasks))
        finally:
            _FORKED_ANALYSIS = None
    order = {kind: k for k, kind in enumerate(KINDS)}
    plots = [p for p in results if p is not None]
    return sorted(plots, key=lambda p: (p.scenario, order[p.kind]))


def _default_jobs() -> int:
    """CLBENCH_REPORT_JOBS if set, else the CPUs left idle by other processes (1 to 4).

    Forked workers need about a third more CPU time in total than one process
    (copy-on-write, cold caches), so they only pay off on cores nobody else uses:
    on a busy machine one process finishes first.
    """
    env = os.environ.get("CLBENCH_REPORT_JOBS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    cpus = os.cpu_count() or 1
    try:
        idle = cpus - os.getloadavg()[0]
    except OSError:  # no load average on this platform
        idle = cpus
    return max(1, min(4, round(idle)))


def _fork_is_safe() -> bool:
    """Fork only on Linux and from a single-threaded Python process.

    A thread holding a lock at fork time (a progress bar, a logging handler)
    can leave a child blocked forever; rendering in one process is only slower.
    """
    return (
        sys.platform == "linux"
        and "fork" in mp.get_all_start_methods()
        and threading.active_count() == 1
    )


_FORKED_ANALYSIS: Analysis | None = None
# Heatmaps first: they are the slowest, and starting them early balances the workers.
KINDS = ("heatmaps", "seen_average", "forgetting", "stability_plasticity", "pareto")


def _render_in_worker(task: tuple[str, str]) -> Plot | None:
    return _render_one(_FORKED_ANALYSIS, *task)


def _render_one(analysis: Analysis, name: str, kind: str) -> Plot | None:
    info = analysis.scenarios[name]
    labels = list(analysis.summary.loc[analysis.summary["scenario"] == name, "label"])
    make, title = {
        "heatmaps": (_heatmaps, "Result matrices (mean over seeds)"),
        "seen_average": (_seen_average, "Average on the experiences seen so far"),
        "forgetting": (_forgetting_bars, "Forgetting per experience"),
        "stability_plasticity": (_stability_plasticity, "Forgetting versus plasticity"),
        "pareto": (_pareto, f"Final {info.metric_name} versus wall time"),
    }[kind]
    fig = make(analysis, info, labels, _styles(labels))
    if fig is None:
        return None
    return Plot(name, kind, f"{safe_name(name)}__{kind}.png", f"{name}: {title}", _png(fig))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # Light compression: 40% faster to encode for files about 30% larger.
    fig.savefig(buf, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    plt.close(fig)
    return buf.getvalue()


def _styles(labels: list[str]) -> dict[str, tuple]:
    return {
        lab: (PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]) for i, lab in enumerate(labels)
    }


def _figure_with_legend_room(size: tuple[float, float]):
    """One axes with room on the right for a legend placed outside the plot."""
    fig, ax = plt.subplots(figsize=size)
    fig.subplots_adjust(left=0.12, right=1 - 2.0 / size[0], bottom=0.13, top=0.9)
    return fig, ax


def _axis_label(info: ScenarioInfo) -> str:
    """E.g. "accuracy (%), higher is better" or "bpc, lower is better"."""
    unit = units_for(info.metric_name).level
    name = info.metric_name if unit == info.metric_name else f"{info.metric_name} ({unit})"
    return f"{name}, {'higher' if info.higher_is_better else 'lower'} is better"


def _mean_ci(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and 95% t half-widths over the seed axis (NaN for one seed)."""
    n = samples.shape[0]
    mean = samples.mean(axis=0)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    half = stats.t.ppf(0.975, n - 1) * samples.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, half


def _heatmaps(analysis, info, labels, style):
    u = units_for(info.metric_name)
    T = info.n_experiences
    means = [analysis.groups[(info.name, lab)].matrices.mean(axis=0) * u.scale for lab in labels]
    finite = np.concatenate([m[np.isfinite(m)] for m in means])
    vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    ncols = min(4, len(labels))
    nrows = math.ceil(len(labels) / ncols)
    side = max(2.2, 0.26 * T + 0.6)  # inches per panel
    width, height = side * ncols + 2.2, side * nrows + 1.3
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
    # Fixed margins in inches: constrained layout costs more than the drawing itself here.
    fig.subplots_adjust(
        left=0.8 / width, right=1 - 1.4 / width, bottom=0.7 / height, top=1 - 0.6 / height,
        wspace=0.12, hspace=0.25,
    )  # fmt: skip
    # viridis is dark at its low end; reversed for losses so that "good" is always bright.
    cmap = plt.get_cmap("viridis" if info.higher_is_better else "viridis_r").with_extremes(
        bad="lightgrey"
    )
    ticks = np.arange(T)
    image = None
    for ax, lab, M in zip(axes.flat, labels, means, strict=False):  # spare panels stay empty
        image = ax.imshow(M, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        n = len(analysis.groups[(info.name, lab)].seeds)
        ax.set_title(f"{lab} (n={n})", fontsize=10)
        if T <= MAX_ANNOTATED_T:
            _annotate(ax, M, cmap, vmin, vmax, u.decimals - 1)
    # Ticks only on the outer panels: tick objects are expensive to create and lay out.
    names = [str(t + 1) for t in ticks]
    for k, ax in enumerate(axes.flat):
        ax.set_visible(k < len(labels))
        ax.set_xticks(ticks, names, fontsize=7) if k + ncols >= len(labels) else ax.set_xticks([])
        ax.set_yticks(ticks, names, fontsize=7) if k % ncols == 0 else ax.set_yticks([])
    fig.supxlabel("test experience j", y=0.15 / height, fontsize=10)
    fig.supylabel("after training experience i", x=0.15 / width, fontsize=10)
    fig.colorbar(image, ax=axes.ravel().tolist(), label=_axis_label(info), shrink=0.8)
    title = f"{info.name}: result matrix R[i][j], mean over seeds (numbers: trained part j <= i)"
    fig.suptitle(title, y=1 - 0.15 / height)
    return fig


def _annotate(ax, M, cmap, vmin, vmax, decimals) -> None:
    """Numbers on the trained part (j <= i); the upper triangle (mostly chance) is colour only.

    Drawn as one PathCollection of glyph outlines rather than one Text per cell:
    with ten strategies and T = 10 that is 550 numbers per figure, and Text
    objects made the heatmaps the slowest part of the whole report.
    """
    span = (vmax - vmin) or 1.0
    size = 8 if M.shape[0] <= 6 else 6
    paths, offsets, colors = [], [], []
    for (i, j), v in np.ndenumerate(M):
        if j > i:
            continue
        paths.append(_number_path(f"{v:.{decimals}f}" if np.isfinite(v) else "nan", size))
        offsets.append((j, i))
        r, g, b, _ = cmap((v - vmin) / span) if np.isfinite(v) else (1, 1, 1, 1)
        colors.append("white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
    # Glyph outlines are in points: scale to inches, then to pixels at the saving dpi.
    to_pixels = Affine2D().scale(1 / 72) + ax.figure.dpi_scale_trans
    ax.add_collection(
        PathCollection(paths, offsets=offsets, offset_transform=ax.transData, transform=to_pixels,
                       facecolors=colors, edgecolors="none"),
        autolim=False,
    )  # fmt: skip


_GLYPHS: dict[tuple[str, float], tuple[np.ndarray, np.ndarray, float]] = {}


def _glyph(ch: str, size: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(vertices, codes, advance width) of one character, in points; cached."""
    if (ch, size) not in _GLYPHS:
        font = FontProperties(size=size)
        outline = TextPath((0, 0), ch, prop=font)
        advance = text_to_path.get_text_width_height_descent(ch, font, ismath=False)[0]
        _GLYPHS[(ch, size)] = (outline.vertices, outline.codes, advance)
    return _GLYPHS[(ch, size)]


def _number_path(text: str, size: float) -> Path:
    """Outline of `text` centred on (0, 0), in points, assembled from cached glyphs."""
    verts, codes, x = [], [], 0.0
    for ch in text:
        v, c, advance = _glyph(ch, size)
        verts.append(v + (x, 0.0))
        codes.append(c)
        x += advance
    digit_height = _glyph("0", size)[0][:, 1].max()
    return Path(np.concatenate(verts) - (x / 2, digit_height / 2), np.concatenate(codes))


def _seen_average(analysis, info, labels, style):
    u = units_for(info.metric_name)
    T = info.n_experiences
    fig, ax = _figure_with_legend_room((7.5, 4.5))
    x = np.arange(1, T + 1)
    for lab in labels:
        g = analysis.groups[(info.name, lab)]
        mean, half = _mean_ci(g.seen_average * u.scale)
        color, marker = style[lab]
        ax.plot(x, mean, marker=marker, color=color, label=f"{lab} (n={len(g.seeds)})")
        if np.isfinite(half).any():
            ax.fill_between(x, mean - half, mean + half, color=color, alpha=0.18, linewidth=0)
    ax.set_xticks(x)
    ax.set_xlabel("experiences trained so far")
    ax.set_ylabel(f"average on seen experiences\n{_axis_label(info)}")
    ax.set_title(f"{info.name}: average on the experiences seen so far (bands: 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def _forgetting_bars(analysis, info, labels, style):
    u = units_for(info.metric_name)
    T = info.n_experiences
    if T < 2:
        return None  # forgetting is undefined with one experience
    fig, ax = _figure_with_legend_room((max(7.5, 0.12 * (T - 1) * len(labels) + 4), 4.5))
    # One bar call and one errorbar call for all strategies: per-strategy calls
    # create many more artists and cost more than the drawing.
    width = 0.8 / len(labels)
    xs, heights, errs, colors = [], [], [], []
    for k, lab in enumerate(labels):
        mean, half = _mean_ci(analysis.groups[(info.name, lab)].forgetting * u.scale)
        xs.append(np.arange(1, T) - 0.4 + width * (k + 0.5))
        heights.append(mean)
        errs.append(np.where(np.isfinite(half), half, 0.0))
        colors += [style[lab][0]] * (T - 1)
    xs, heights, errs = np.concatenate(xs), np.concatenate(heights), np.concatenate(errs)
    ax.bar(xs, heights, width, color=colors)
    ax.errorbar(xs, heights, yerr=errs, fmt="none", ecolor="black", elinewidth=0.7, capsize=1.5)
    handles = [Patch(color=style[lab][0], label=lab) for lab in labels]
    x = np.arange(1, T)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xlabel("experience (forgetting measured after the last experience)")
    rise = "drop" if info.higher_is_better else "rise"
    unit = "" if u.delta == info.metric_name else f" ({u.delta})"
    ax.set_ylabel(f"forgetting: {rise} of {info.metric_name}{unit}\npositive = worse")
    ax.set_title(f"{info.name}: per-experience forgetting (Chaudhry et al. 2018), 95% CI")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def _stability_plasticity(analysis, info, labels, style):
    """Plasticity (mean R[j][j]) on x, forgetting on y: "forgets less" only counts if it learned."""
    if info.n_experiences < 2:
        return None  # forgetting is undefined with one experience
    u = units_for(info.metric_name)
    rows = analysis.summary[analysis.summary["scenario"] == info.name].set_index("label")
    fig, ax = _figure_with_legend_room((7.5, 4.8))
    for lab in labels:
        r = rows.loc[lab]
        x, y = r["plasticity_mean"] * u.scale, r["forgetting_mean"] * u.scale
        color, marker = style[lab]
        ax.errorbar(x, y, xerr=_err(r["plasticity_ci95"] * u.scale),
                    yerr=_err(r["forgetting_ci95"] * u.scale), fmt=marker, color=color,
                    mfc="none" if r["is_reference"] else color, capsize=2,
                    label=f"{lab} (n={r['n_seeds']})")  # fmt: skip
        ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"plasticity, mean R[j][j]: {_axis_label(info)}")
    ax.set_ylabel(f"forgetting ({u.delta}), lower is better")
    ax.set_title(f"{info.name}: forgetting vs plasticity (95% CI both ways; hollow: reference)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def _pareto(analysis, info, labels, style):
    u = units_for(info.metric_name)
    rows = analysis.summary[analysis.summary["scenario"] == info.name].set_index("label")
    fig, ax = _figure_with_legend_room((7.5, 4.8))
    points = []
    for lab in labels:
        r = rows.loc[lab]
        x, y = r["wall_seconds_mean"], r["acc_mean"] * u.scale
        xerr, yerr = r["wall_seconds_ci95"], r["acc_ci95"] * u.scale
        color, marker = style[lab]
        ax.errorbar(x, y, xerr=_err(xerr), yerr=_err(yerr), fmt=marker, color=color,
                    mfc="none" if r["is_reference"] else color, capsize=2, label=lab)  # fmt: skip
        ax.annotate(lab, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if math.isfinite(x) and math.isfinite(y) and not r["is_reference"]:
            points.append((x, y))  # the joint reference is shown but not on the front
    front = pareto_front(points, info.higher_is_better)
    if len(front) > 1:
        fx, fy = zip(*front, strict=True)
        ax.plot(fx, fy, "--", color="grey", linewidth=1, label="Pareto front")
    xs = [p[0] for p in points if p[0] > 0]
    if xs and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("wall time per cell (s), lower is better")
    ax.set_ylabel(f"final {_axis_label(info)}")
    ax.set_title(f"{info.name}: final {info.metric_name} vs cost (hollow: reference)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return fig


def _err(half: float):
    return half if math.isfinite(half) else None


def pareto_front(
    points: list[tuple[float, float]], higher_is_better: bool
) -> list[tuple[float, float]]:
    """Points not beaten on both time (lower) and metric (its own direction), by time."""
    sign = 1.0 if higher_is_better else -1.0
    front, best = [], -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if sign * y > best:
            front.append((x, y))
            best = sign * y
    return front
