"""Nested Learning methods (Behrouz et al., NeurIPS 2025) as Avalanche components.

Importing this package registers its models, optimizers and plugins by name
(see the modules it imports).
"""

import clbench.nested.optim  # noqa: F401  (registers the deep optimizers)
from clbench.nested import cms, hope, multirate  # noqa: F401  (registration side effects)
