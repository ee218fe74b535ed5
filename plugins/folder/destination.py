"""The folder destination: atomic writes under a root, paths from a template.

Each object is written to a temporary file in ``ROOT/.pacsguard-tmp/``, fsync'd, then
renamed to its place: a reader never sees half a file. A temporary file that a kill -9
left is removed when the destination starts (so do not point two running pacsguard
services at one destination folder). Where the target folder is on another file system
than the root (a mount below it), the temporary file is made beside the target instead.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

import structlog
from pydantic import Field, field_validator

from pacsguard.daemon.errors import DeliveryError
from pacsguard.daemon.extension import Destination, Options
from pacsguard.daemon.fileio import fsync_dir, fsync_file
from pacsguard.daemon.item import SEALED_SUFFIX
from pacsguard.daemon.units import AbsPath

from .template import DEFAULT_TEMPLATE, render, template_fields

log = structlog.get_logger("pacsguard.folder")

_RETRYABLE = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO,
              errno.ENOENT, errno.ESTALE, errno.EBUSY}


class FolderDestinationOptions(Options):
    path: AbsPath = Field(description="destination root folder")
    template: str = Field(DEFAULT_TEMPLATE, description="relative file path from DICOM keywords")
    fsync: bool = Field(True, description="fsync each file and folder before reporting delivery")

    @field_validator("template")
    @classmethod
    def _template(cls, v):
        template_fields(v)
        return v


TMP_DIR = ".pacsguard-tmp"


class FolderDestination(Destination):
    """Write each object to a folder, at a path built from its attributes.

    An object sealed whole (``encrypt`` with ``scope: file``) is written with the suffix
    ``.pgenc`` instead of ``.dcm`` (appended when the template ends otherwise); its path
    comes from the clear header pacsguard kept when it sealed it."""

    name = "folder"
    Options = FolderDestinationOptions

    def start(self) -> None:
        tmp_dir = self.options.path / TMP_DIR
        removed = 0
        if tmp_dir.is_dir() and not tmp_dir.is_symlink():
            for leftover in tmp_dir.iterdir():
                if leftover.name.endswith(".tmp") and leftover.is_file():
                    leftover.unlink(missing_ok=True)
                    removed += 1
        if removed:
            log.info("removed temporary files an interrupted run left", destination=self.destination_name,
                     files=removed)

    def send(self, path: Path, header) -> None:
        root = self.options.path
        try:
            rel = render(self.options.template, header)
        except ValueError as exc:
            raise DeliveryError(f"cannot build the destination path: {exc}", permanent=True) from None
        target = root.joinpath(*rel.parts)
        if Path(path).suffix == SEALED_SUFFIX:  # sealed whole: not DICOM, say so in the name
            target = target.with_suffix(SEALED_SUFFIX) if target.suffix == ".dcm" else \
                target.with_name(target.name + SEALED_SUFFIX)
        try:
            root.mkdir(parents=True, exist_ok=True)
            real_root = root.resolve()
            # Check every existing folder on the way before creating anything: a symbolic
            # link below the root must not lead the writes (or a mkdir) out of it.
            folder = root
            for part in rel.parts[:-1]:
                folder = folder / part
                if folder.is_symlink() and not folder.resolve().is_relative_to(real_root):
                    raise DeliveryError("destination path leaves the destination root",
                                        permanent=True)
                folder.mkdir(exist_ok=True)
            if not target.parent.resolve().is_relative_to(real_root):
                raise DeliveryError("destination path leaves the destination root", permanent=True)
            tmp_dir = root / TMP_DIR
            tmp_dir.mkdir(exist_ok=True)
            if tmp_dir.is_symlink():
                raise DeliveryError(f"{TMP_DIR} in the destination root is a symbolic link", permanent=True)
            tmp = tmp_dir / f"{uuid.uuid4().hex}.tmp"
            try:
                shutil.copyfile(path, tmp)
                if self.options.fsync:
                    fd = os.open(tmp, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                try:
                    os.replace(tmp, target)
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    tmp.unlink(missing_ok=True)  # another file system below the root
                    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
                    shutil.copyfile(path, tmp)
                    if self.options.fsync:
                        fsync_file(tmp)
                    os.replace(tmp, target)
            finally:
                if tmp.exists():
                    tmp.unlink(missing_ok=True)
            if self.options.fsync:
                fsync_dir(target.parent)
        except DeliveryError:
            raise
        except OSError as exc:
            reason = f"cannot write to destination folder: {exc.strerror or type(exc).__name__}"
            raise DeliveryError(reason, permanent=exc.errno not in _RETRYABLE) from None
