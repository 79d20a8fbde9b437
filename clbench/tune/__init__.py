"""`clbench tune`: hyper-parameter search on Optuna, one study per suite row (docs/tuning.md).

space.py parses the suite's `[tune.<label>]` tables, study.py checks the
request and makes the studies, run.py runs trials as cells, tuned_file.py
reads and writes tuned.toml, command.py is the CLI and plots.py Optuna's plots.
"""
