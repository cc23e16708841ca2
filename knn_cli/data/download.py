"""Fetching CIFAR-10 when no local copy exists: the archive must match its MD5 and is unpacked
member by member into temporary names, so a corrupt, hostile or interrupted download never leaves
files outside the target or a half folder a later run would trust.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from knn_cli.data.cifar10 import CIFAR10_MD5, CIFAR10_URL, FOLDER_NAME, missing_files
from knn_cli.errors import DataError

_DOWNLOAD_TIMEOUT_S = 30


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _fetch(url: str, out: BinaryIO, progress: bool | None) -> str:
    """Stream `url` into `out` and return its MD5, hashing as we go to avoid a second read."""
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc="CIFAR-10",
                disable=not _show_progress(progress),
            ) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (OSError, HTTPException, ValueError) as exc:  # URLError and timeouts are OSErrors
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"download from {url} failed ({reason})") from None
    return digest.hexdigest()


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse members that could write outside the target or create surprising file types."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or member.name.startswith(("/", "\\")) or ".." in name.parts:
        raise DataError(f"{archive}: refusing unsafe member path {member.name!r}")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing {member.name!r} (links and devices not allowed)")


def _extract_safely(archive: Path, target: Path) -> None:
    """Check every member before writing anything, then copy regular files byte by byte.

    Writing the files ourselves (instead of `extractall`) means permissions, owners and
    timestamps from the archive are never applied.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            for member in members:
                dest = target.joinpath(*PurePosixPath(member.name).parts)
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # regular files always have content
                with source, dest.open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: cannot unpack ({exc})") from None


def download_cifar10(
    dest_parent: Path,
    *,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    progress: bool | None = None,
) -> Path:
    """Download, verify and unpack CIFAR-10 into `dest_parent/cifar-10-batches-py`.

    Every step happens in temporary names inside `dest_parent` and the finished folder is renamed
    into place, so an interrupted or concurrent download never leaves a half folder that a later
    run would trust.
    """
    dest_parent = Path(dest_parent)
    final = dest_parent / FOLDER_NAME
    try:
        dest_parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".cifar-10-", suffix=".tar.gz", dir=dest_parent)
    except OSError as exc:
        raise DataError(f"cannot write to {dest_parent} ({exc.strerror or exc})") from None
    archive = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _fetch(url, out, progress)
        if actual != md5:
            raise DataError(f"download from {url} is corrupt (MD5 {actual}, expected {md5})")
        return _unpack_into_place(archive, final)
    finally:
        archive.unlink(missing_ok=True)


def _unpack_into_place(archive: Path, final: Path) -> Path:
    staging = Path(tempfile.mkdtemp(prefix=".cifar-10-unpack-", dir=final.parent))
    try:
        _extract_safely(archive, staging)
        unpacked = staging / FOLDER_NAME
        missing = missing_files(unpacked)
        if missing:
            raise DataError(f"archive {archive.name} lacks {FOLDER_NAME}/{', '.join(missing)}")
        try:
            unpacked.rename(final)
        except OSError as exc:
            if missing_files(final):  # not a concurrent download that finished first
                raise DataError(
                    f"cannot move the unpacked data to {final} ({exc.strerror or exc});"
                    " remove that folder and retry"
                ) from None
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
