"""clbench: a continual-learning benchmark suite built on Avalanche.

Baselines, Nested Learning methods (HOPE, CMS, deep optimizers) and user
strategies run on the same tensorized streams and are scored from the same
accuracy matrices.
"""

__version__ = "0.1.0"
