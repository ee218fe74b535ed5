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


def keep_responses(assoc) -> None:
    """Work around a race in pynetdicom's association reactor (requestor side).

    ``send_c_store`` pauses the reactor before sending and then waits for the response on
    the DIMSE queue. The reactor marks itself paused just before it checks the pause flag,
    so under load (GIL hand-offs) it can pass the check, take the C-STORE response off the
    queue itself and drop it ("Received unexpected C-STORE service message"); the sender
    then waits for the whole DIMSE timeout (pynetdicom issue #435 describes the family).
    Our associations only send requests, so a response the reactor takes is put back
    where the waiting sender looks for it.
    """
    serve = assoc._serve_request

    def serve_or_requeue(msg, context_id):
        if not msg.is_valid_request and msg.is_valid_response:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_requeue
