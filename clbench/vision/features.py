"""Per-image backbone features of one image set, computed lazily and cached on disk.

Each image is computed *alone* (a batch of one, on one thread), like the MiniLM bottom
cache (`clbench.text_cache`): its value is then a function of the image only, not of the
batch, subset, order, cell or worker that first asked for it, so results are identical
whether the cache was cold, warm, shared between workers or off.

Disk layout (under `$CLBENCH_CACHE/features/`; `CLBENCH_CACHE=off` keeps everything in
memory): one folder per (backbone, weights SHA-256, resolution, feature kind, storage
dtype, torch version, image set), the image set named by the SHA-256 of its uint8 bytes,
so a cache written by another resolution, weights file, torch build or dataset copy is
never reused. The folder holds three memory-mapped `.npy` arrays with one row per image:
`values` (pooled rows float32, token rows float16), `crc` (CRC-32 of each value row) and
`done` (1 once the row is written). A memory map was chosen over SQLite because every cell
reads the whole 60k-row table: mapping it is a page-cache read, shared by all workers.

Safety: rows are written under an exclusive `flock` on the folder's `lock` file (value and
checksum first, then the done flag), so two workers can fill the same table; a row two
workers both computed gets the same bytes twice. A row is used only after its checksum
matched, once per process; a mismatch (flipped bytes, a write cut short) recomputes the
row. A file cut short is extended with zeros when mapped (numpy's r+ mode), so its lost
rows fail their done flag or checksum and are recomputed; one whose header is damaged
cannot be mapped and the table is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from clbench.cache_dir import cache_root
from clbench.vision import backbone as bb

log = logging.getLogger(__name__)
KINDS = ("pooled", "tokens")
# Token maps are 25x bigger than pooled vectors (25 tokens at 160 px): float16 halves the
# 60k-image table (3.8 GB instead of 7.7 GB). Rounding is applied in memory-only mode too,
# so the values do not depend on whether the cache is on.
STORE_DTYPE = {"pooled": np.float32, "tokens": np.float16}
CHUNK = 64  # rows computed between two looks at what other workers wrote
PROGRESS_MIN = 256  # a tqdm bar for colder computes than this


def feature_shape(kind: str, resolution: int) -> tuple[int, ...]:
    side = resolution // bb.STRIDE
    return (bb.DIM,) if kind == "pooled" else (side * side, bb.DIM)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Intra-op threads split convolution sums differently; one thread fixes the order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class FeatureTable:
    """features[i] of images[i] (uint8 [N, 32, 32, 3]) for one backbone, resolution and kind."""

    def __init__(self, images: torch.Tensor, *, backbone: str, resolution: int, kind: str, data_root, download: bool):
        if kind not in KINDS:
            raise ValueError(f"bad features {kind!r}; accepted: {', '.join(KINDS)}")
        self.images, self.backbone, self.resolution, self.kind = images, backbone, resolution, kind
        self.data_root, self.download = Path(data_root), download
        self.weights_path, self.weights_sha = bb.ensure_weights(self.data_root, download)
        self.shape, self.dtype = feature_shape(kind, resolution), STORE_DTYPE[kind]
        self.key = {
            "backbone": backbone, "weights": bb.WEIGHTS_FILE, "weights_sha256": self.weights_sha,
            "resolution": resolution, "kind": kind, "dtype": np.dtype(self.dtype).name,
            "torch": torch.__version__,
            "images_sha256": hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest(),
            "n_images": len(images),
        }
        root = cache_root()
        name = hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = None if root is None else root / "features" / f"{backbone}-r{resolution}-{kind}-{name}"
        self._model = None
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.verified = np.zeros(len(images), dtype=bool)  # rows whose checksum this process checked

    def __len__(self) -> int:
        return len(self.images)

    def __getstate__(self):  # maps and the model are reopened in the receiving process
        state = dict(self.__dict__, _model=None)
        if self.folder is not None:
            state.update(_arrays=None, verified=np.zeros(len(self.images), dtype=bool))
        return state

    # ------------------------------------------------------------------ storage
    def _paths(self) -> dict[str, Path]:
        return {n: self.folder / f"{n}.npy" for n in ("values", "crc", "done")}

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        import fcntl

        with open(self.folder / "lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, or its process dies
            yield

    def _open(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._arrays is not None:
            return self._arrays
        n = len(self.images)
        if self.folder is None:
            self._arrays = (np.zeros((n, *self.shape), self.dtype), np.zeros(n, np.uint32), np.zeros(n, np.uint8))
            return self._arrays
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._lock():
            self._arrays = self._map() or self._create()
        return self._arrays

    def _map(self):
        """The three arrays mapped read-write, or None when any is missing, cut short or reshaped."""
        paths, n = self._paths(), len(self.images)
        want = {"values": ((n, *self.shape), self.dtype), "crc": ((n,), np.uint32), "done": ((n,), np.uint8)}
        arrays = []
        for name, path in paths.items():
            try:
                a = np.load(path, mmap_mode="r+")
            except (OSError, ValueError):  # absent, or shorter than its header says
                return None
            if a.shape != want[name][0] or a.dtype != want[name][1]:
                return None
            arrays.append(a)
        return tuple(arrays)

    def _create(self):
        """Fresh, empty arrays (sparse files: disk is used only by rows written), replacing any
        broken ones; called under the lock. Done is written last, so it never outlives values."""
        n = len(self.images)
        specs = {"values": ((n, *self.shape), self.dtype), "crc": ((n,), np.uint32), "done": ((n,), np.uint8)}
        (self.folder / "key.json").write_text(json.dumps(self.key, indent=1, sort_keys=True) + "\n")
        for name, path in self._paths().items():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            np.lib.format.open_memmap(tmp, mode="w+", dtype=specs[name][1], shape=specs[name][0]).flush()
            os.replace(tmp, path)
        return self._map()

    # ------------------------------------------------------------------ compute
    def _features(self):
        if self._model is None:
            self._model, sha = bb.load_backbone(self.backbone, self.data_root, self.download)
            assert sha == self.weights_sha, "weights changed while in use"
        return self._model

    def compute(self, i: int) -> np.ndarray:
        """Row i computed now, alone, and rounded to the storage dtype."""
        with one_thread():
            value = bb.extract(self._features(), self.images[i], self.resolution, self.kind)
        return value.numpy().astype(self.dtype)

    def _check(self, rows: np.ndarray, warn: bool = True) -> np.ndarray:
        """Of `rows`, those whose stored value is written and matches its checksum."""
        values, crc, done = self._open()
        written = rows[done[rows] == 1]
        good = np.array([zlib.crc32(values[i]) == crc[i] for i in written], dtype=bool)
        if warn and len(written) and not good.all():
            log.warning("feature cache %s: %d rows failed their checksum; recomputing them", self.folder, (~good).sum())
        return written[good] if len(written) else written

    def ensure(self, rows, progress: bool = True) -> int:
        """Make `rows` available and verified; returns how many were computed here."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        todo = rows[~self.verified[rows]]
        if not len(todo):
            return 0
        self.verified[self._check(todo)] = True
        todo = todo[~self.verified[todo]]
        if not len(todo):
            return 0
        from tqdm import tqdm

        values, crc, done = self._open()
        computed, start = 0, time.perf_counter()
        bar = tqdm(total=len(todo), desc=f"{self.backbone} features r{self.resolution} {self.kind}",
                   disable=not progress or len(todo) < PROGRESS_MIN, leave=False)
        for lo in range(0, len(todo), CHUNK):
            chunk = todo[lo:lo + CHUNK]
            if self.folder is not None:  # another worker may have written some since
                self.verified[self._check(chunk, warn=False)] = True
                chunk = chunk[~self.verified[chunk]]
            out = {int(i): self.compute(int(i)) for i in chunk}
            with self._lock() if self.folder is not None else contextlib.nullcontext():
                for i, v in out.items():
                    values[i] = v
                    crc[i] = zlib.crc32(values[i])
                done[list(out)] = 1
            self.verified[chunk] = True
            computed += len(out)
            bar.update(CHUNK if lo + CHUNK <= len(todo) else len(todo) - lo)
        bar.close()
        if self.folder is not None:
            for a in (values, crc, done):
                a.flush()
        self._log(computed, time.perf_counter() - start)
        return computed

    def _log(self, computed: int, seconds: float) -> None:
        if not computed:
            return
        line = f"computed {computed} rows in {seconds:.1f} s ({1000 * seconds / computed:.2f} ms/image), pid {os.getpid()}"
        log.info("feature cache %s: %s", self.folder or "(memory)", line)
        if self.folder is not None:
            with open(self.folder / "compute.log", "a") as f:
                f.write(time.strftime("%Y-%m-%dT%H:%M:%S ") + line + "\n")

    def get(self, rows) -> torch.Tensor:
        """float32 [len(rows), *shape], computing and verifying rows that need it."""
        rows = np.asarray(rows, dtype=np.int64)
        self.ensure(rows, progress=False)
        return torch.from_numpy(self._open()[0][rows].astype(np.float32))


def cifar_table(split: str, *, backbone: str, resolution: int, kind: str, data_root, download: bool) -> FeatureTable:
    from clbench.scenarios.cifar100_data import load_cifar100

    images = load_cifar100(data_root, split, download=download).x
    return FeatureTable(images, backbone=backbone, resolution=resolution, kind=kind, data_root=data_root, download=download)


def _fill_worker(args) -> int:
    split, rows, opts, show = args
    torch.set_num_threads(1)
    return cifar_table(split, **opts).ensure(rows, progress=show)


def fill_cifar(resolution: int, kind: str = "pooled", *, data_root, workers: int = 2, backbone: str = "mobilenet_v2") -> dict:
    """Fill the whole table of both CIFAR-100 splits with `workers` processes (each takes
    every workers-th row); returns wall time and rows computed."""
    import multiprocessing as mp

    opts = dict(backbone=backbone, resolution=resolution, kind=kind, data_root=str(data_root), download=False)
    jobs = []
    for split in ("train", "test"):
        n = len(cifar_table(split, **opts))
        jobs += [(split, np.arange(w, n, workers), opts, w == 0) for w in range(workers)]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        computed = sum(pool.map(_fill_worker, jobs, chunksize=1))
    return {"wall_s": time.perf_counter() - start, "computed": computed}


if __name__ == "__main__":
    import argparse

    from clbench.scenarios.cifar100_features import DEFAULT_RESOLUTION
    from clbench.scenarios.datasets import resolve_data_root

    p = argparse.ArgumentParser(description="Fill the CIFAR-100 feature cache ($CLBENCH_CACHE/features) "
                                "ahead of a suite; prints one JSON line per kind with its wall time")
    p.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION)
    p.add_argument("--kind", default="pooled", choices=(*KINDS, "both"))
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    for kind in KINDS if a.kind == "both" else (a.kind,):
        done = fill_cifar(a.resolution, kind, data_root=resolve_data_root(), workers=a.workers)
        print(json.dumps({"resolution": a.resolution, "kind": kind, "workers": a.workers, **done}), flush=True)
