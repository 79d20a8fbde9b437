"""Triton GPU kernels with pure-PyTorch references (`clbench.kernels`).

Each op gets its own sub-package holding `naive.py` (token-loop reference),
`chunk.py` (chunked PyTorch), `triton.py` and a dispatch in `__init__.py`; see
docs/kernels.md once the kernels land (issue 7).
"""
