"""HOPE (nested_learning.md §6): self-modifying Titans + CMS, as Avalanche-ready models.

memory.py (associative memories and their inner update rule) -> titans.py (the layer) ->
model.py (tokenizers, blocks, features) -> zoo.py (registered models). reference.py is the
token-by-token reference the chunked layer is tested against.
"""

from clbench.nested.hope import zoo  # noqa: F401  (registers hope, hope_attention, transformer_matched)
