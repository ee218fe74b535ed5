"""Files that hold secrets: paths or systemd credentials, never the secret inline.

A secret file (private key, key password, symmetric secret) is named by its path, or by
``credential:NAME`` for a systemd credential (``LoadCredential=NAME:/path`` in the unit;
the file is then ``$CREDENTIALS_DIRECTORY/NAME``, readable by the service only). The key
store and the DICOM TLS contexts resolve them the same way, with this module.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

CREDENTIAL_PREFIX = "credential:"


class SecretFileError(ValueError):
    """A key, certificate or password file cannot be used (the message names the file,
    never its content)."""


def _secret_path(value):
    if isinstance(value, str) and value.startswith(CREDENTIAL_PREFIX):
        name = value[len(CREDENTIAL_PREFIX):]
        if not name or "/" in name or name in (".", ".."):
            raise ValueError("use credential:NAME with the plain name given to systemd's LoadCredential=")
        return Path(value)
    if isinstance(value, (str, os.PathLike)):
        if not str(value).strip():
            raise ValueError("empty path")
        return Path(value).expanduser().absolute()
    raise ValueError("expected a file path or credential:NAME")


#: A file path (relative: from the working directory at load time), or ``credential:NAME``
#: for ``$CREDENTIALS_DIRECTORY/NAME`` (resolved when the file is read).
SecretPath = Annotated[
    Path,
    BeforeValidator(_secret_path),
    WithJsonSchema({"type": "string",
                    "description": "a file path, or credential:NAME for a systemd credential"
                                   " ($CREDENTIALS_DIRECTORY/NAME)"}),
]


def is_credential(path: Path | str) -> bool:
    return str(path).startswith(CREDENTIAL_PREFIX)


def resolve(path: Path | str) -> Path:
    """The real file behind a :data:`SecretPath` (or any path)."""
    text = str(path)
    if not text.startswith(CREDENTIAL_PREFIX):
        return Path(path)
    base = os.environ.get("CREDENTIALS_DIRECTORY")
    if not base:
        raise SecretFileError(f"{text}: $CREDENTIALS_DIRECTORY is not set (LoadCredential= in the systemd unit)")
    return Path(base) / text[len(CREDENTIAL_PREFIX):]


def read_password(path: Path | str) -> bytes:
    """A key password from a file: its first line, without the line end."""
    real = resolve(path)
    try:
        data = real.read_bytes()
    except OSError as exc:
        raise SecretFileError(f"cannot read key password file {path}: {exc.strerror or type(exc).__name__}") from None
    password = data.splitlines()[0] if data else b""
    if not password:
        raise SecretFileError(f"key password file {path} is empty")
    return password


def check_owner_only(path: Path | str) -> None:
    """Refuse a secret file that group or others may read or write (``chmod 600`` fixes it).

    Files of systemd credentials are exempt when their directory is closed to others, as
    systemd makes it: there the service alone can reach them, whatever their mode bits
    say (systemd grants the service user access through ACLs, which show in the group
    bits)."""
    real = resolve(path)
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise SecretFileError(f"file {real} does not exist") from None
    except OSError as exc:
        raise SecretFileError(f"cannot read {real}: {exc.strerror or type(exc).__name__}") from None
    if not stat.S_ISREG(mode):
        raise SecretFileError(f"{real} is not a regular file")
    if is_credential(path):
        try:
            if os.stat(real.parent).st_mode & 0o007 == 0:
                return
        except OSError:
            pass
    if mode & 0o077:
        raise SecretFileError(f"{real} may be read by group or others (mode {stat.S_IMODE(mode):04o});"
                              f" run: chmod 600 {real}")
