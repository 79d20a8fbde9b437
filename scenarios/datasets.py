"""Dataset loaders: where the data lives, whether we may download it, and MNIST.

Every loader reads files from a data root, found (in order) from an explicit
argument (the CLI's `--data-root`), the `CLBENCH_DATA` environment variable, or
`./data`. Missing data is a `DataNotFoundError` whose message names the exact
file expected; a file that exists but is damaged is a `CorruptDataError`.

MNIST and Fashion-MNIST use torchvision's raw layout,
`<root>/{MNIST,FashionMNIST}/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`
(each file plain or `.gz`). The IDX files are parsed with numpy in one pass,
without PIL or per-sample Python; torchvision is only used to download.

CIFAR-100 lives in `cifar100_data.py` (which uses the helpers here) and is
re-exported from this module lazily, see `__getattr__` at the end.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from clbench.errors import CorruptDataError, DataNotFoundError, UnknownNameError

from .integrity import verify_files

# The CIFAR-100 names (Cifar100Split, load_cifar100, resolve_cache_dir,
# verify_cifar100_offline) are also importable from here, see __getattr__.
__all__ = [
    "MNIST_VARIANTS",
    "SPLITS",
    "downloads_allowed",
    "load_mnist",
    "read_idx",
    "resolve_data_root",
]

SPLITS = ("train", "test")

# variant -> folder under the data root (torchvision's class name, so a
# torchvision download lands exactly where we look).
MNIST_VARIANTS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
_MNIST_FILE_PREFIX = {"train": "train", "test": "t10k"}
_MNIST_IMAGE_SIZE = (28, 28)
_MNIST_NUM_CLASSES = 10

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), the number of dims.
_IDX_UBYTE = 0x08
_FALSE_STRINGS = {"", "0", "false", "no", "off", "n", "f"}


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data root: `data_root` if given, else `$CLBENCH_DATA`, else `./data`."""
    if data_root is not None and str(data_root) != "":
        return Path(data_root).expanduser()
    from_env = os.environ.get("CLBENCH_DATA", "").strip()
    if from_env:
        return Path(from_env).expanduser()
    # Absolute, so error messages name a path the user can find.
    return Path.cwd() / "data"


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in _FALSE_STRINGS


def downloads_allowed(flag: bool | None = None) -> bool:
    """Whether loaders may download missing data.

    An explicit flag wins. Otherwise downloads are on, except when
    `CLBENCH_OFFLINE` or `CI` is set to a true-ish value: CI machines have no
    internet, and a download attempt there only hangs until a timeout.
    """
    if flag is not None:
        return bool(flag)
    return not (_env_true("CLBENCH_OFFLINE") or _env_true("CI"))


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise UnknownNameError("split", split, SPLITS)
    return split


def one_line(exc: BaseException) -> str:
    """An exception as `Type: message` on one line (CLI errors are one line)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- IDX parsing -----------------------------------------------------------------


def _read_bytes(path: Path) -> bytearray:
    """The file's (decompressed) bytes, in a writable buffer so numpy views of it
    can go to `torch.from_numpy` without a copy or a read-only warning."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return bytearray(f.read())
        buf = bytearray(path.stat().st_size)
        with open(path, "rb") as f:
            f.readinto(buf)
        return buf
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise CorruptDataError(
            f"{path} is a damaged gzip file ({one_line(exc)}); delete it and download it again"
        ) from exc


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an unsigned-byte IDX file (plain or .gz) into a uint8 array.

    The header gives the shape; the file must hold exactly that many bytes, so a
    truncated download is caught here rather than as garbage images later.
    """
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0:
        raise CorruptDataError(f"{path} is not an IDX file (bad magic number)")
    if buf[2] != _IDX_UBYTE:
        raise CorruptDataError(f"{path}: IDX type code 0x{buf[2]:02x}, expected 0x08 (uint8)")
    ndim = buf[3]
    header_len = 4 + 4 * ndim
    if len(buf) < header_len:
        raise CorruptDataError(f"{path} is truncated inside its IDX header")
    shape = struct.unpack(f">{ndim}I", bytes(buf[4:header_len]))
    expected_len = header_len + math.prod(shape)
    if len(buf) != expected_len:
        problem = "truncated" if len(buf) < expected_len else "longer than its header says"
        raise CorruptDataError(
            f"{path} is {problem}: header shape {shape} needs {expected_len} bytes, "
            f"file has {len(buf)}; delete it and download it again"
        )
    return np.frombuffer(buf, dtype=np.uint8, offset=header_len).reshape(shape)


# --- MNIST / Fashion-MNIST ---------------------------------------------------------


def _mnist_file_names(split: str) -> tuple[str, str]:
    prefix = _MNIST_FILE_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_plain_or_gz(raw_dir: Path, name: str) -> Path | None:
    for candidate in (raw_dir / name, raw_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def mnist_files(root: str | os.PathLike, split: str, variant: str = "mnist") -> list[Path] | None:
    """The (images, labels) files `load_mnist` would read, or None while either is missing."""
    return _locate_mnist(Path(root) / MNIST_VARIANTS[variant] / "raw", _mnist_file_names(split))


def _locate_mnist(raw_dir: Path, names: tuple[str, ...]) -> list[Path] | None:
    found = [_find_plain_or_gz(raw_dir, name) for name in names]
    return None if None in found else found


def _missing_mnist_error(raw_dir: Path, names: tuple[str, ...], folder: str, why: str) -> Exception:
    missing = [str(raw_dir / n) for n in names if _find_plain_or_gz(raw_dir, n) is None]
    return DataNotFoundError(
        f"{folder} data not found: expected {' and '.join(missing)} (plain or .gz); {why}. "
        f"Set --data-root or CLBENCH_DATA to a folder holding {folder}/raw/, or allow downloads"
    )


def _download_mnist(root: Path, variant: str, split: str) -> None:
    from torchvision import datasets  # imported late: only needed to download

    cls = datasets.MNIST if variant == "mnist" else datasets.FashionMNIST
    cls(str(root), train=(split == "train"), download=True)


def _check_mnist_arrays(images: np.ndarray, labels: np.ndarray, paths: list[Path]) -> None:
    if images.ndim != 3 or images.shape[1:] != _MNIST_IMAGE_SIZE:
        raise CorruptDataError(
            f"{paths[0]}: images have shape {images.shape}, expected [N, 28, 28]"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise CorruptDataError(
            f"{paths[1]}: {labels.shape} labels for {images.shape[0]} images in {paths[0]}"
        )
    if labels.size and int(labels.max()) >= _MNIST_NUM_CLASSES:
        raise CorruptDataError(f"{paths[1]}: label {int(labels.max())} is not a digit class 0-9")


def load_mnist(
    root: str | os.PathLike, split: str, *, download: bool, variant: str = "mnist"
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST or Fashion-MNIST as (x uint8 [N, 28, 28], y int64 [N]).

    Files are looked up under `<root>/<MNIST|FashionMNIST>/raw/`. If they are
    missing and `download` is true, torchvision fetches them into that folder.
    """
    if variant not in MNIST_VARIANTS:
        raise UnknownNameError("MNIST variant", variant, MNIST_VARIANTS)
    check_split(split)
    root = Path(root)
    folder = MNIST_VARIANTS[variant]
    raw_dir = root / folder / "raw"
    names = _mnist_file_names(split)

    paths = _locate_mnist(raw_dir, names)
    if paths is None and not download:
        raise _missing_mnist_error(raw_dir, names, folder, "downloads are off")
    if paths is None:
        try:
            _download_mnist(root, variant, split)
        # Any failure (no network, bad checksum, disk full) means the data is
        # still missing; say so on one line instead of a network traceback.
        except Exception as exc:
            raise _missing_mnist_error(
                raw_dir, names, folder, f"download failed ({one_line(exc)})"
            ) from exc
        paths = _locate_mnist(raw_dir, names)
        if paths is None:
            raise _missing_mnist_error(raw_dir, names, folder, "the download did not create them")

    verify_files(root, paths)  # against the recorded SHA-256 sums, before any number is read
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    _check_mnist_arrays(images, labels, paths)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


# cifar100_data imports helpers from this module, so it cannot be imported at the
# top; resolving its names on first access (PEP 562) keeps one import point.
_CIFAR_EXPORTS = ("Cifar100Split", "load_cifar100", "resolve_cache_dir", "verify_cifar100_offline")


def __getattr__(name: str):
    if name in _CIFAR_EXPORTS:
        from . import cifar100_data

        return getattr(cifar100_data, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
