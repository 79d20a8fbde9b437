"""Cache of a frozen encoder bottom's outputs, per text, in memory and on disk.

A pretrained encoder's frozen layers give the same output for the same text in every
cell of a suite (every seed, strategy and variant), so computing them once per text for
the whole suite, instead of once per cell, is most of the CPU time of a text suite.

Each text is computed *alone*, at its own length (a batch of one, no padding). That
makes a text's cached value a function of the text only: not of the batch it first
came in, not of which cell or worker met it first. So results are bit-identical whether
the cache was cold, warm, shared between `--jobs` workers or turned off.

Disk store: one SQLite file per model and cut (`namespace`), under `$CLBENCH_CACHE`
(default `~/.cache/clbench`); `CLBENCH_CACHE=off` keeps the cache in memory only. SQLite
serialises concurrent writers (two suite workers), and an entry is written in one
transaction, so a killed run leaves whole entries or none. Values are stored as fp32
bytes with their shape: exactly what the in-memory cache would hold.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from clbench.cache_dir import CACHE_ENV, cache_root  # noqa: F401  (re-exported)


class DiskStore:
    """key (bytes) -> fp32 tensor, in one SQLite file."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:  # opened lazily: the store travels to spawned workers unopened
            self._db = sqlite3.connect(self.path, timeout=120)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit does not wait for fsync
            self._db.execute("CREATE TABLE IF NOT EXISTS rows (key BLOB PRIMARY KEY, shape TEXT, data BLOB)")
        return self._db

    def get(self, key: bytes) -> torch.Tensor | None:
        row = self._conn().execute("SELECT shape, data FROM rows WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        shape = tuple(int(n) for n in row[0].split(",") if n)
        return torch.from_numpy(np.frombuffer(row[1], dtype=np.float32).reshape(shape).copy())

    def put(self, key: bytes, value: torch.Tensor) -> None:
        data = value.detach().float().contiguous().numpy().tobytes()
        with self._conn():  # one transaction per entry
            self._conn().execute(
                "INSERT OR IGNORE INTO rows VALUES (?, ?, ?)", (key, ",".join(map(str, value.shape)), data)
            )

    def __getstate__(self):
        return {"path": self.path, "_db": None}


class BottomCache:
    """compute(ids) of a frozen bottom, per text, from memory, then disk, then computed alone.

    Shared, not copied, by deepcopy: LwF and DER keep a deep copy of the model, and the
    bottom is frozen, so its outputs are the same for every copy.
    """

    def __init__(self, namespace: str, disk: bool = True):
        self.namespace = namespace.encode()
        self.rows: dict[bytes, torch.Tensor] = {}
        root = cache_root() if disk else None
        name = hashlib.sha256(self.namespace).hexdigest()[:16]
        self.store = DiskStore(root / f"bottom-{name}.sqlite") if root is not None else None

    def __deepcopy__(self, memo):
        return self

    def lookup(self, ids: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """compute(ids) for a batch [B, L] of right-padded ids (0 = padding).

        Per-token outputs are stored cut to the text's length and come back zero-padded to
        the batch's length (attention and pooling mask padding out anyway); pooled outputs
        (one vector per text) come back stacked.
        """
        lengths = (ids != 0).sum(1).tolist()
        rows = []
        for row, n in zip(ids, lengths, strict=True):
            text = row[: max(n, 1)]
            key = hashlib.sha256(self.namespace + text.cpu().numpy().tobytes()).digest()
            value = self.rows.get(key)
            if value is None and self.store is not None:
                value = self.store.get(key)
            if value is None:
                value = compute(text[None])[0].cpu()
                if self.store is not None:
                    self.store.put(key, value)
            self.rows[key] = value
            rows.append(value)
        if rows[0].dim() == 1:
            return torch.stack(rows).to(ids.device)
        out = rows[0].new_zeros(len(rows), ids.shape[1], rows[0].shape[-1])
        for i, value in enumerate(rows):
            out[i, : len(value)] = value
        return out.to(ids.device)
