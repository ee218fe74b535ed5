"""TLS for DICOM connections (PS3.15 Annex B): the receiver's server context and the
sender's client context, TLS 1.2 or newer, from PEM files.

Private keys and their passwords never appear inline in the configuration: each is a file
path, or ``credential:NAME`` for a systemd credential (``LoadCredential=NAME:/path`` in the
unit; the file is then ``$CREDENTIALS_DIRECTORY/NAME``, readable by the service only).

:class:`ReloadingContext` rebuilds a context when its certificate or key files change, so a
renewed certificate takes effect for the next connection without a restart; a broken
replacement is logged and the last good context stays in use.
"""

from __future__ import annotations

import os
import ssl
import threading
from pathlib import Path
from typing import Callable, Iterable, Literal

import structlog

from ...daemon.credentials import (  # noqa: F401  (SecretPath, is_credential: this module's API)
    CREDENTIAL_PREFIX,
    SecretFileError,
    SecretPath,
    is_credential,
    read_password,
    resolve,
)

log = structlog.get_logger("pacsguard.dicom")

TlsVersion = Literal["1.2", "1.3"]
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

#: A certificate, key or password file cannot be used (the message names the file): the
#: daemon's error for unusable secret files, so that resolving a credential raises it too.
TlsError = SecretFileError


def check_files(**paths) -> None:
    """Config-time check: every given file (label=path; None skipped) exists. Credential
    names are resolved only when the service starts, under systemd."""
    for label, path in paths.items():
        if path is not None and not is_credential(path) and not Path(path).is_file():
            raise ValueError(f"{label}: file {path} does not exist")


def _base(purpose: int, min_version: TlsVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = _VERSIONS[min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path | str | None,
                key_password_file: Path | str | None) -> None:
    cert_file = resolve(cert)
    key_file = resolve(key) if key is not None else None
    for label, f in (("certificate", cert_file), ("private key", key_file)):
        if f is not None and not f.is_file():
            raise TlsError(f"{label} file {f} does not exist")
    password = read_password(key_password_file) if key_password_file is not None else None
    try:
        # a password callback that fails rather than prompting on a terminal
        ctx.load_cert_chain(cert_file, key_file, password=(lambda: password or b""))
    except ssl.SSLError as exc:
        if _encrypted(key_file or cert_file):
            why = "wrong key password" if password else "the key is encrypted: set key_password_file"
        else:
            why = exc.reason or "invalid PEM data, or the key does not belong to the certificate"
        raise TlsError(f"cannot use certificate {cert} with key {key}: {why}") from None
    except OSError as exc:
        raise TlsError(f"cannot read certificate {cert} or key {key}: {exc.strerror or exc}") from None


def _encrypted(pem: Path) -> bool:
    try:
        head = pem.read_bytes()[:4096]
    except OSError:
        return False
    return b"ENCRYPTED" in head


def _load_ca(ctx: ssl.SSLContext, ca: Path | str) -> None:
    ca_file = resolve(ca)
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
    except FileNotFoundError:
        raise TlsError(f"CA file {ca} does not exist") from None
    except ssl.SSLError as exc:
        raise TlsError(f"cannot use CA file {ca}: {exc.reason or 'invalid PEM data'}") from None
    except OSError as exc:
        raise TlsError(f"cannot read CA file {ca}: {exc.strerror or exc}") from None


def server_context(cert: Path, key: Path | str, *, key_password_file: Path | str | None = None,
                   ca: Path | str | None = None, require_client_cert: bool = False,
                   min_version: TlsVersion = "1.2") -> ssl.SSLContext:
    """The context a DICOM receiver wraps accepted connections with.

    ``cert`` holds this node's certificate (then any intermediates), ``key`` its private key,
    optionally encrypted with the password in ``key_password_file``. With ``ca``, client
    certificates that are presented must chain to it; ``require_client_cert`` makes one
    mandatory (mutual TLS). Raises :class:`TlsError` naming the file at fault.
    """
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, min_version)
    _load_chain(ctx, cert, key, key_password_file)
    if ca is not None:
        _load_ca(ctx, ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise TlsError("require_client_cert needs a CA file (ca) to check client certificates against")
    return ctx


def client_context(*, ca: Path | str | None = None, cert: Path | str | None = None,
                   key: Path | str | None = None, key_password_file: Path | str | None = None,
                   check_hostname: bool = True, min_version: TlsVersion = "1.2") -> ssl.SSLContext:
    """The context a DICOM sender connects with.

    The server's certificate is always verified: against ``ca`` when given, else the
    system's trust store; ``check_hostname=False`` skips only the host-name match (peers
    addressed by IP with certificates naming a host). ``cert``/``key`` present a client
    certificate (needed by receivers that require one). Raises :class:`TlsError`.
    """
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, min_version)
    if ca is not None:
        _load_ca(ctx, ca)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cert is not None:
        _load_chain(ctx, Path(cert), key if key is not None else None, key_password_file)
    elif key is not None:
        raise TlsError("a client key needs its certificate (cert)")
    return ctx


def _signature(paths: Iterable[Path | str]) -> tuple:
    sig = []
    for p in paths:
        try:
            st = os.stat(resolve(p))
            sig.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except (OSError, TlsError):
            sig.append(None)
    return tuple(sig)


class ReloadingContext:
    """An SSL context rebuilt by ``build()`` whenever one of ``files`` changes.

    :meth:`get` is cheap (a ``stat`` per file) and safe to call per connection. When a
    rebuild fails (a certificate half-written by a renewal job, a wrong password), the
    error is logged once and the last good context stays in use.
    """

    def __init__(self, build: Callable[[], ssl.SSLContext], files: Iterable[Path | str], *, label: str = "tls"):
        self._build = build
        self._files = [f for f in files if f is not None]
        self._label = label
        self._lock = threading.Lock()
        self._sig = _signature(self._files)
        self._ctx = build()  # the first build raises: a bad configuration must not start
        self._failed_sig: tuple | None = None

    def get(self) -> ssl.SSLContext:
        sig = _signature(self._files)
        if sig != self._sig and sig != self._failed_sig:
            with self._lock:
                if sig != self._sig and sig != self._failed_sig:
                    try:
                        self._swap(sig)
                        log.info("TLS certificates reloaded", context=self._label, trigger="files changed")
                    except TlsError as exc:
                        self._failed_sig = sig
                        log.error("TLS certificates changed but cannot be used; keeping the previous ones",
                                  context=self._label, error=str(exc))
        return self._ctx

    def reload(self) -> None:
        """Rebuild now (SIGHUP); raises :class:`TlsError` and keeps the old context on failure."""
        with self._lock:
            self._swap(_signature(self._files))

    def _swap(self, sig: tuple) -> None:
        ctx = self._build()
        self._ctx, self._sig, self._failed_sig = ctx, sig, None
