"""Optuna's own plots of each study (optimisation history, parameter importances), as PNG files."""

from __future__ import annotations

import warnings
from pathlib import Path


def write_plots(studies, out: Path) -> list[Path]:
    """`<scenario>__<label>__history.png` and `__importances.png` per row; importances need two or
    more completed trials (Optuna's fANOVA), so a row with fewer gets its history only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as optuna_plots

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t, study in studies:
        stem = f"{t.row.scenario}__{t.row.label}"
        plots = [("history", optuna_plots.plot_optimization_history)]
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) >= 2:
            plots.append(("importances", optuna_plots.plot_param_importances))
        for name, plot in plots:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
                ax = plot(study)
            path = out / f"{stem}__{name}.png"
            ax.figure.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(ax.figure)
            written.append(path)
    return written
