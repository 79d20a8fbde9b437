"""Dataset files are checked against their recorded checksums on first use.

`verify_files` hashes each file a loader is about to read and compares it with
`checksums.py`. A mismatch, or a file this clbench has no sum for, is a
CorruptDataError naming the file, raised before any number is computed from
it. A verified file gets a stamp in the user cache (`$CLBENCH_CACHE/verified/`,
never in the data root) keyed by its path, size and modification time, so
later loads only stat it; any change to the file makes it be hashed again.

`CLBENCH_VERIFY_DATA=0` turns the check off, for data made up or modified on
purpose (the test suite's synthetic MNIST uses the official file names).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from clbench.errors import CorruptDataError

from . import checksums

_CHUNK = 1 << 20
_OFF = {"0", "false", "no", "off", "n", "f"}


def verification_enabled() -> bool:
    return os.environ.get("CLBENCH_VERIFY_DATA", "").strip().lower() not in _OFF


def verify_files(root: Path, paths: Iterable[Path], *, sha256: Mapping[str, str | tuple[str, ...]] | None = None,
                 md5: Mapping[str, str] | None = None) -> None:
    """Check every path (under `root`) against its recorded sum; raise on the first bad one."""
    if not verification_enabled():
        return
    sha256 = checksums.SHA256 if sha256 is None else sha256
    md5 = checksums.MD5 if md5 is None else md5
    for path in paths:
        key = Path(path).relative_to(root).as_posix()
        gunzip = key.endswith(".gz") and key[:-3] in {**sha256, **md5}  # a .gz holds the recorded file
        key = key[:-3] if gunzip else key
        algorithm, expected = ("sha256", sha256[key]) if key in sha256 else ("md5", md5.get(key))
        if expected is None:
            raise CorruptDataError(
                f"{path} has no recorded checksum (scenarios/checksums.py), so it is not a file of a known "
                "release; use the official files, or set CLBENCH_VERIFY_DATA=0 for data you changed on purpose"
            )
        _verify_one(Path(path), algorithm, (expected,) if isinstance(expected, str) else tuple(expected), gunzip)


def _verify_one(path: Path, algorithm: str, accepted: tuple[str, ...], gunzip: bool) -> None:
    stamp_file, stamp = _stamp(path, algorithm, accepted)
    if stamp_file is not None and _read(stamp_file) == stamp:
        return
    actual = _digest(path, algorithm, gunzip)
    if actual not in accepted:
        raise CorruptDataError(
            f"{path} is corrupt: its {algorithm.upper()} is {actual}, the recorded sum is {' or '.join(accepted)} "
            "(a damaged or partial copy, or another version); delete it and download it again"
        )
    if stamp_file is not None:
        _write(stamp_file, stamp)


def _digest(path: Path, algorithm: str, gunzip: bool) -> str:
    if algorithm == "sha256" and not gunzip:
        # The text loaders' helper; imported late because download imports datasets.
        from .download import sha256_file

        return sha256_file(path)
    digest = hashlib.new(algorithm)
    try:
        with (gzip.open(path, "rb") if gunzip else open(path, "rb")) as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except (EOFError, OSError) as exc:  # a damaged gzip stream
        raise CorruptDataError(f"{path} is corrupt: it cannot be read to the end ({exc})") from exc
    return digest.hexdigest()


def _stamp(path: Path, algorithm: str, accepted: tuple[str, ...]) -> tuple[Path | None, str]:
    """(stamp file, its expected text); no file with CLBENCH_CACHE=off (then every load re-hashes)."""
    from clbench.cache_dir import cache_root

    resolved = path.resolve()
    st = resolved.stat()
    name = hashlib.sha256(str(resolved).encode()).hexdigest()[:32]
    root = cache_root()
    return (None if root is None else root / "verified" / f"{name}.txt",
            f"{resolved}\n{st.st_size} {st.st_mtime_ns} {algorithm}:{','.join(accepted)}\n")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _write(path: Path, text: str) -> None:
    """Atomically; a cache that cannot be written only costs a re-hash next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError:
        pass
