"""Nested Learning methods (Behrouz et al., NeurIPS 2025) as Avalanche components.

Importing this package registers its models, optimizers and plugins by name
(see the modules it imports).
"""
