"""CIFAR-100 loader for two on-disk layouts, tried in this order:

1. `<root>/CIFAR100/`: the offline copy, one lossless WebP sprite per split and
   fine class plus `meta.json` (see that folder's README). Decoding all 60k
   images takes a couple of seconds, so the decoded arrays are cached as `.npy`
   under `$CLBENCH_CACHE` or `~/.cache/clbench`, keyed by the SHA-256 that
   `meta.json` records for the decoded split. Nothing is written into the data root.
2. `<root>/cifar-100-python/{train,test,meta}`: the official pickles, which is
   also what `torchvision.datasets.CIFAR100(download=True)` creates.

Images come back NHWC uint8 in both cases. The offline copy groups images by
fine class, so "image i" differs between layouts; shuffle with your own seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clbench.errors import CorruptDataError, DataNotFoundError

from .datasets import check_split, one_line
from .integrity import verify_files

OFFLINE_DIR = "CIFAR100"
PICKLE_DIR = "cifar-100-python"
LAYOUT_OFFLINE = "webp_sprites"
LAYOUT_PICKLE = "cifar-100-python"

# The official fine -> superclass table (fine classes in alphabetical order).
# verify_cifar100_offline checks meta.json against it rather than trusting it.
OFFICIAL_FINE_TO_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip
OFFICIAL_IMAGES_PER_CLASS = {"train": 500, "test": 100}
_SPLIT_KEYS = ("images_per_class", "grid_rows", "grid_cols", "decoded_sha256", "files")
_IMAGE_SIZE = 32
_CHANNEL_MEAN_TOLERANCE = 1e-3  # meta.json rounds the means to 4 decimals


@dataclass(frozen=True)
class Cifar100Split:
    x: torch.Tensor  # uint8 [N, 32, 32, 3], NHWC, RGB
    fine: torch.Tensor  # int64 [N], index into fine_label_names
    coarse: torch.Tensor  # int64 [N], index into coarse_label_names
    fine_label_names: list[str]
    coarse_label_names: list[str]
    layout: str  # LAYOUT_OFFLINE or LAYOUT_PICKLE

    def __len__(self) -> int:
        return int(self.x.shape[0])


def resolve_cache_dir() -> Path | None:
    """Where decoded arrays are cached: `$CLBENCH_CACHE`, else `~/.cache/clbench`; None for
    `CLBENCH_CACHE=off` (nothing is written)."""
    from clbench.cache_dir import cache_root

    return cache_root()


def load_cifar100(root: str | os.PathLike, split: str, *, download: bool) -> Cifar100Split:
    """CIFAR-100 `split` ("train" or "test") from the first layout found under `root`."""
    check_split(split)
    root = Path(root)
    if (root / OFFLINE_DIR / "meta.json").is_file():
        return _load_offline(root / OFFLINE_DIR, split)
    if _pickle_layout_present(root / PICKLE_DIR, split):
        return _load_pickle_layout(root / PICKLE_DIR, split)
    if not download:
        raise _missing_error(root, split, "downloads are off")
    try:
        from torchvision import datasets  # imported late: only needed to download

        datasets.CIFAR100(str(root), train=(split == "train"), download=True)
    # Any failure (no network, bad checksum, disk full) leaves the data missing;
    # report that on one line rather than as a network traceback.
    except Exception as exc:
        raise _missing_error(root, split, f"download failed ({one_line(exc)})") from exc
    if not _pickle_layout_present(root / PICKLE_DIR, split):
        raise _missing_error(root, split, "the download did not create them")
    return _load_pickle_layout(root / PICKLE_DIR, split)


def _missing_error(root: Path, split: str, why: str) -> DataNotFoundError:
    return DataNotFoundError(
        f"CIFAR-100 {split} data not found: expected {root / OFFLINE_DIR / 'meta.json'} "
        f"(WebP sprites) or {root / PICKLE_DIR / split} and {root / PICKLE_DIR / 'meta'} "
        f"(official pickles); {why}. Set --data-root or CLBENCH_DATA to a folder holding "
        f"{OFFLINE_DIR}/ or {PICKLE_DIR}/, or allow downloads"
    )


# --- offline layout: WebP sprites ------------------------------------------------


def read_offline_meta(offline_dir: Path) -> dict[str, Any]:
    """meta.json of the sprite layout, with the keys the loader relies on checked."""
    path = offline_dir / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptDataError(f"{path} cannot be read ({one_line(exc)})") from exc
    for key in ("fine_label_names", "coarse_label_names", "fine_to_coarse", "splits"):
        if key not in meta:
            raise CorruptDataError(f"{path} has no {key!r} entry")
    coarse = meta["fine_to_coarse"]
    if len(coarse) != len(meta["fine_label_names"]):
        raise CorruptDataError(f"{path}: fine_to_coarse and fine_label_names differ in length")
    if not all(0 <= c < len(meta["coarse_label_names"]) for c in coarse):
        raise CorruptDataError(f"{path}: fine_to_coarse has an index outside coarse_label_names")
    for split in ("train", "test"):
        missing = [k for k in _SPLIT_KEYS if k not in meta["splits"].get(split, {})]
        if missing:
            raise CorruptDataError(f"{path}: split {split!r} lacks {', '.join(missing)}")
    return meta


def _decode_sprite(path: Path, rows: int, cols: int, tile: int) -> np.ndarray:
    """One class sprite as [rows * cols, tile, tile, 3], tiles in row-major order."""
    if not path.is_file():
        raise DataNotFoundError(
            f"CIFAR-100 sprite {path} is missing; the offline copy is incomplete"
        )
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise CorruptDataError(f"{path} cannot be decoded ({one_line(exc)})") from exc
    if pixels.shape != (rows * tile, cols * tile, 3):
        raise CorruptDataError(
            f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels, expected "
            f"{cols * tile}x{rows * tile} ({rows}x{cols} tiles of {tile}px)"
        )
    # Split both image axes into (grid index, pixel index), then bring the grid
    # axes to the front: one reshape per sprite instead of a slice per tile.
    grid = pixels.reshape(rows, tile, cols, tile, 3).swapaxes(1, 2)
    return grid.reshape(rows * cols, tile, tile, 3)


def decode_offline_split(offline_dir: Path, meta: dict[str, Any], split: str) -> np.ndarray:
    """Decode a split's sprites, classes in `fine_label_names` order (no checksum here)."""
    split_meta = meta["splits"][split]
    rows, cols = split_meta["grid_rows"], split_meta["grid_cols"]
    per_class = split_meta["images_per_class"]
    tile = meta.get("tile_size", _IMAGE_SIZE)
    if rows * cols != per_class:
        raise CorruptDataError(
            f"{offline_dir / 'meta.json'}: {split} grid {rows}x{cols} != {per_class} images per class"
        )
    names = meta["fine_label_names"]
    out = np.empty((len(names) * per_class, tile, tile, 3), dtype=np.uint8)

    def decode_class(index: int) -> None:
        relative = split_meta["files"].get(names[index])
        if relative is None:
            raise CorruptDataError(
                f"{offline_dir / 'meta.json'}: no {split} sprite for {names[index]!r}"
            )
        sprite = _decode_sprite(offline_dir / relative, rows, cols, tile)
        out[index * per_class : (index + 1) * per_class] = sprite

    # Pillow releases the GIL while decoding, so threads give a real speed-up.
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(decode_class, range(len(names))))
    return out


def sha256_of(array: np.ndarray) -> str:
    """SHA-256 of the array's raw C-order bytes, as meta.json records it."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def _cache_path(split: str, sha: str) -> Path | None:
    root = resolve_cache_dir()
    return None if root is None else root / "cifar100" / f"{split}-{sha}.npy"


def _read_cache(path: Path | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array, or None when absent or unusable (it is then rebuilt)."""
    if path is None or not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.dtype != np.uint8 or array.shape != shape:
        return None
    return array


def _write_cache(path: Path, array: np.ndarray) -> None:
    """Save atomically (temp file + rename) so a crash never leaves a half file
    under a valid name; a cache that cannot be written only costs speed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, array, allow_pickle=False)
            os.replace(tmp_name, path)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
    except OSError as exc:
        warnings.warn(f"could not cache decoded CIFAR-100 at {path}: {one_line(exc)}", stacklevel=3)


def _offline_images(offline_dir: Path, meta: dict[str, Any], split: str) -> np.ndarray:
    """Decoded images of a split, from the cache when it holds them.

    The cache file is named after the SHA-256 that meta.json expects and is
    only written after the decoded array matched it, so a cached load needs no
    re-hash (that would cost about as much as the load itself).
    """
    split_meta = meta["splits"][split]
    expected_sha = split_meta["decoded_sha256"]
    num_images = split_meta["images_per_class"] * len(meta["fine_label_names"])
    tile = meta.get("tile_size", _IMAGE_SIZE)
    cache_path = _cache_path(split, expected_sha)
    cached = _read_cache(cache_path, (num_images, tile, tile, 3))
    if cached is not None:
        return cached
    images = decode_offline_split(offline_dir, meta, split)
    actual_sha = sha256_of(images)
    if actual_sha != expected_sha:
        raise CorruptDataError(
            f"CIFAR-100 {split} sprites under {offline_dir} decode to SHA-256 {actual_sha}, "
            f"but meta.json expects {expected_sha}; the copy is damaged or from another version"
        )
    if cache_path is not None:
        _write_cache(cache_path, images)
    return images


def _offline_labels(meta: dict[str, Any], split: str) -> tuple[np.ndarray, np.ndarray]:
    per_class = meta["splits"][split]["images_per_class"]
    fine = np.repeat(np.arange(len(meta["fine_label_names"]), dtype=np.int64), per_class)
    coarse = np.asarray(meta["fine_to_coarse"], dtype=np.int64)[fine]
    return fine, coarse


def _load_offline(offline_dir: Path, split: str) -> Cifar100Split:
    root = offline_dir.parent
    verify_files(root, [offline_dir / "meta.json"])
    meta = read_offline_meta(offline_dir)
    verify_files(root, [offline_dir / f for f in meta["splits"][split]["files"].values()])
    images = _offline_images(offline_dir, meta, split)
    fine, coarse = _offline_labels(meta, split)
    return Cifar100Split(
        x=torch.from_numpy(images),
        fine=torch.from_numpy(fine),
        coarse=torch.from_numpy(coarse),
        fine_label_names=list(meta["fine_label_names"]),
        coarse_label_names=list(meta["coarse_label_names"]),
        layout=LAYOUT_OFFLINE,
    )


# --- official pickle layout ------------------------------------------------------


def _pickle_layout_present(pickle_dir: Path, split: str) -> bool:
    return (pickle_dir / split).is_file() and (pickle_dir / "meta").is_file()


def _as_str(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _unpickle(path: Path) -> dict[str, Any]:
    """A pickled dict with str keys.

    The official files are Python 2 pickles: latin1 turns their byte strings
    into str losslessly (as torchvision does); keys written as bytes are decoded
    too. Pickle can run code, so only data roots you trust should be used.
    """
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise CorruptDataError(
            f"{path} is not a readable CIFAR-100 pickle ({one_line(exc)})"
        ) from exc
    if not isinstance(obj, dict):
        raise CorruptDataError(f"{path} holds a {type(obj).__name__}, expected a dict")
    return {_as_str(key): value for key, value in obj.items()}


def _entry(obj: dict[str, Any], key: str, path: Path) -> Any:
    if key not in obj:
        raise CorruptDataError(f"{path} has no {key!r} entry")
    return obj[key]


def _chw_rows_to_nhwc(data: Any, path: Path) -> np.ndarray:
    """Official rows are 3072 bytes: the R, G and B planes of 32x32, row-major."""
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * _IMAGE_SIZE**2:
        raise CorruptDataError(
            f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072]"
        )
    planes = data.reshape(-1, 3, _IMAGE_SIZE, _IMAGE_SIZE)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


def _labels(obj: dict[str, Any], key: str, count: int, num_classes: int, path: Path) -> np.ndarray:
    labels = np.asarray(_entry(obj, key, path), dtype=np.int64)
    if labels.shape != (count,):
        raise CorruptDataError(f"{path}: {key!r} has shape {labels.shape}, expected ({count},)")
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptDataError(f"{path}: {key!r} values outside 0..{num_classes - 1}")
    return labels


def _load_pickle_layout(pickle_dir: Path, split: str) -> Cifar100Split:
    meta_path, split_path = pickle_dir / "meta", pickle_dir / split
    verify_files(pickle_dir.parent, [meta_path, split_path])
    meta, data = _unpickle(meta_path), _unpickle(split_path)
    fine_names = [_as_str(n) for n in _entry(meta, "fine_label_names", meta_path)]
    coarse_names = [_as_str(n) for n in _entry(meta, "coarse_label_names", meta_path)]
    images = _chw_rows_to_nhwc(_entry(data, "data", split_path), split_path)
    count = images.shape[0]
    fine = _labels(data, "fine_labels", count, len(fine_names), split_path)
    coarse = _labels(data, "coarse_labels", count, len(coarse_names), split_path)
    return Cifar100Split(
        x=torch.from_numpy(images),
        fine=torch.from_numpy(fine),
        coarse=torch.from_numpy(coarse),
        fine_label_names=fine_names,
        coarse_label_names=coarse_names,
        layout=LAYOUT_PICKLE,
    )


# --- verification ----------------------------------------------------------------


def _verify_split(offline_dir: Path, meta: dict[str, Any], split: str) -> dict[str, Any]:
    split_meta = meta["splits"][split]
    start = time.perf_counter()
    images = decode_offline_split(offline_dir, meta, split)
    decode_seconds = time.perf_counter() - start
    fine, coarse = _offline_labels(meta, split)
    per_class = np.bincount(fine, minlength=len(meta["fine_label_names"]))
    per_coarse = np.bincount(coarse, minlength=len(meta["coarse_label_names"]))
    expected_per_class = OFFICIAL_IMAGES_PER_CLASS[split]
    mean = (images.reshape(-1, 3).mean(axis=0) / 255.0).tolist()
    actual_sha = sha256_of(images)
    return {
        "num_images": int(images.shape[0]),
        "per_class_min": int(per_class.min()),
        "per_class_max": int(per_class.max()),
        "per_class_ok": bool((per_class == expected_per_class).all()) and len(per_class) == 100,
        "per_coarse_ok": bool((per_coarse == 5 * expected_per_class).all()),
        "sha256_expected": split_meta["decoded_sha256"],
        "sha256_actual": actual_sha,
        "sha256_ok": actual_sha == split_meta["decoded_sha256"],
        "channel_mean": [round(m, 4) for m in mean],
        "channel_mean_ok": "channel_mean" not in split_meta
        or bool(np.allclose(mean, split_meta["channel_mean"], atol=_CHANNEL_MEAN_TOLERANCE)),
        "decode_seconds": round(decode_seconds, 3),
    }


def _fine_to_coarse_consistent(meta: dict[str, Any]) -> bool:
    """fine_to_coarse (indices) and coarse_to_fine (names) describe the same grouping."""
    fine_names, coarse_names = meta["fine_label_names"], meta["coarse_label_names"]
    pairs = {(coarse_names[c], fine_names[f]) for f, c in enumerate(meta["fine_to_coarse"])}
    named = {(c, f) for c, fines in meta.get("coarse_to_fine", {}).items() for f in fines}
    return "coarse_to_fine" not in meta or pairs == named


def verify_cifar100_offline(root: str | os.PathLike) -> dict[str, Any]:
    """Decode both splits of `<root>/CIFAR100/` and check them against meta.json
    and the official release: 500/100 images per fine class, the official
    fine-to-coarse table, and the decoded SHA-256. Ignores and leaves the cache.

    Returns a report; `report["ok"]` is true when every check passed and
    `report["problems"]` lists the failed ones.
    """
    offline_dir = Path(root) / OFFLINE_DIR
    if not (offline_dir / "meta.json").is_file():
        raise DataNotFoundError(
            f"CIFAR-100 offline copy not found: expected {offline_dir / 'meta.json'}"
        )
    meta = read_offline_meta(offline_dir)
    report: dict[str, Any] = {
        "root": str(offline_dir),
        "fine_to_coarse_official": tuple(meta["fine_to_coarse"]) == OFFICIAL_FINE_TO_COARSE,
        "coarse_to_fine_consistent": _fine_to_coarse_consistent(meta),
        "splits": {split: _verify_split(offline_dir, meta, split) for split in ("train", "test")},
    }
    problems = [
        k for k in ("fine_to_coarse_official", "coarse_to_fine_consistent") if not report[k]
    ]
    for split, checks in report["splits"].items():
        problems += [f"{split}.{k}" for k, v in checks.items() if k.endswith("_ok") and not v]
    report["problems"] = problems
    report["ok"] = not problems
    return report
