"""Checked downloads: fetch a file over HTTP(S), verify its SHA-256, then move it in place.

The bytes go to a temporary file next to the destination and are renamed to
the final name only after the checksum matched, so a failed, interrupted or
corrupt download never leaves a file under the name that loaders look for.
`ensure_files` is the loaders' entry point: it returns the local paths of a
dataset's files, downloading the missing ones when downloads are allowed and
raising a `DataNotFoundError` that names every missing file otherwise.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from clbench.errors import CorruptDataError, DataNotFoundError

from .datasets import one_line

_CHUNK = 1 << 20
DEFAULT_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RemoteFile:
    """Where a data file comes from and the SHA-256 it must have."""

    url: str
    sha256: str


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(remote: RemoteFile, dest: str | os.PathLike, *, timeout: float = DEFAULT_TIMEOUT_S) -> Path:
    """Download `remote` to `dest`, verified; nothing is left at `dest` unless it verified.

    Raises DataNotFoundError when the server or network fails (HTTP status, no
    route, timeout) and CorruptDataError when the bytes have the wrong SHA-256.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(remote.url, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if actual != remote.sha256:
            raise CorruptDataError(
                f"download of {dest.name} from {remote.url} has SHA-256 {actual}, expected "
                f"{remote.sha256}; the file was not saved (a changed or damaged source)"
            )
        os.replace(tmp_name, dest)
    except urllib.error.HTTPError as exc:
        raise DataNotFoundError(
            f"download of {dest.name} from {remote.url} failed: HTTP {exc.code} {exc.reason}"
        ) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise DataNotFoundError(
            f"download of {dest.name} from {remote.url} failed ({one_line(exc)})"
        ) from exc
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return dest


def ensure_files(
    folder: Path, files: Mapping[str, RemoteFile], *, download: bool, dataset: str,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Path]:
    """Local paths of `files` (name -> source) under `folder`, downloading missing ones.

    With downloads off, a missing file is a DataNotFoundError that names the
    expected paths and where to get them. Files already present are used as
    they are (not re-hashed): the parsers check their content.
    """
    paths = {name: folder / name for name in files}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing and not download:
        wanted = ", ".join(str(paths[n]) for n in missing)
        urls = ", ".join(files[n].url for n in missing)
        raise DataNotFoundError(
            f"{dataset} data not found: expected {wanted}; downloads are off. Set --data-root or "
            f"CLBENCH_DATA to a folder holding {folder.parent.name}/{folder.name}/, or allow "
            f"downloads (they fetch {urls})"
        )
    for name in missing:
        download_file(files[name], paths[name], timeout=timeout)
    return paths
