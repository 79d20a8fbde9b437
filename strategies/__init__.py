"""Built-in strategies: Avalanche's own baselines under registered names.

One file per method. Importing this package registers them all.
"""

from clbench.strategies import (  # noqa: F401  (registration side effects)
    agem,
    cms,
    cumulative,
    der,
    dmgd,
    er_ace,
    ewc,
    gdumb,
    gem,
    hope,
    icarl,
    joint,
    lwf,
    mas,
    naive,
    ncm,
    online_ewc,
    ranpac,
    replay,
    si,
)
