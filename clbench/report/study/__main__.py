"""`python -m clbench.report.study REPORT_DIR`: see clbench.report.study."""

from clbench.report.study import main

raise SystemExit(main())
