"""Built-in scenarios (task streams). Importing this package registers them."""

from clbench.scenarios import cifar100, cifar100_features, mnist, text  # noqa: F401  (registration side effects)
