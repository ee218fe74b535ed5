"""pynetdicom's module-level switches that pacsguard relies on, set in exactly one place.

pynetdicom keeps these as globals in ``pynetdicom._config``; STYLE.md's rule is to wrap
such a gap once rather than flip private attributes from several modules.
"""

from __future__ import annotations

_done = False


def configure() -> None:
    """Idempotent. Called by the DICOM source and destination before they start."""
    global _done
    if _done:
        return
    from pynetdicom import _config

    # Receive C-STORE data sets straight into a file (event.dataset_path), undecoded.
    _config.STORE_RECV_CHUNKED_DATASET = True
    # send_c_store(path) sends the file's bytes as they are, without decode/re-encode.
    _config.STORE_SEND_CHUNKED_DATASET = True
    # Identifiers may hold patient data: never log them.
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # structlog context (association id, peer AE) reaches pynetdicom's handler threads.
    _config.PASS_CONTEXTVARS = True
    # Accept every storage SOP class, including private and newer ones pynetdicom does not name.
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    _done = True
