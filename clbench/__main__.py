"""`python -m clbench ...`: the same as the `clbench` console script (the repo root is dropped from sys.path on import)."""

from clbench.cli import main

raise SystemExit(main())
