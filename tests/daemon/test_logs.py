"""Logging: one chain for pacsguard and library loggers; no patient data from libraries."""

from __future__ import annotations

import io
import json
import logging
import warnings

import pytest
import structlog

from pacsguard.daemon.logs import configure_logging


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_library_lines_are_json_and_quoted_values_are_redacted(restore_logging):
    out = io.StringIO()
    configure_logging("info", "json", out)
    logging.getLogger("pydicom").warning("Invalid value for VR PN: 'DOE^JANE'")
    logging.getLogger("pynetdicom.assoc").warning('Non-conformant "Affected SOP Instance UID" value "1.2.3.4"')
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # pytest installs its own warning recorder per test; route warnings to logging again
        logging.captureWarnings(False)
        logging.captureWarnings(True)
        warnings.warn("Invalid value for VR LO: 'PID-0001'", UserWarning)
    text = out.getvalue()
    assert "DOE^JANE" not in text and "1.2.3.4" not in text and "PID-0001" not in text
    got = lines(out)
    assert [g["logger"] for g in got] == ["pydicom", "pynetdicom.assoc", "py.warnings"]
    assert got[0]["event"] == "Invalid value for VR PN: '<redacted>'"
    assert all(g["level"] == "warning" for g in got)


def test_own_lines_are_not_redacted(restore_logging):
    out = io.StringIO()
    configure_logging("info", "json", out)
    structlog.get_logger("pacsguard.test").info("route 'ct' matched", job=7)
    (line,) = lines(out)
    assert line["event"] == "route 'ct' matched" and line["job"] == 7


def test_a_library_traceback_is_structured_not_multiline_text(restore_logging):
    """pydicom's decoders log exceptions with their tracebacks (LOGGER.exception)."""
    out = io.StringIO()
    configure_logging("info", "json", out)
    try:
        raise ValueError("cannot decode 'DOE^JANE'")
    except ValueError as exc:
        logging.getLogger("pydicom.pixels.decoders.base").exception(exc)
    logging.getLogger("pydicom").warning("Unable to decode:\n  pylibjpeg: failed 'PID-7'\n  pillow: too big")
    text = out.getvalue()
    assert len(text.splitlines()) == 2
    assert "DOE^JANE" not in text and "PID-7" not in text
    first, second = lines(out)
    assert isinstance(first["exception"], list) and first["exception"][0]["exc_type"] == "ValueError"
    assert all("\n" not in frame.get("line", "") for frame in first["exception"][0]["frames"])
    assert "locals" not in first["exception"][0]["frames"][-1]
    assert second["event"] == "Unable to decode:"
    assert second["detail"] == ["pylibjpeg: failed '<redacted>'", "pillow: too big"]


def test_a_pydicom_warning_is_logged_once(restore_logging):
    """warn_and_log sends the same text to pydicom's logger and to warnings.warn."""
    from pydicom.misc import warn_and_log

    out = io.StringIO()
    configure_logging("info", "json", out)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(False)
        logging.captureWarnings(True)
        warn_and_log("Expected explicit VR, but found implicit VR")
        warnings.warn("an unrelated warning", UserWarning)
    got = lines(out)
    assert [(g["logger"], g["event"]) for g in got][0] == ("pydicom", "Expected explicit VR, but found implicit VR")
    assert len(got) == 2 and got[1]["logger"] == "py.warnings" and "unrelated" in got[1]["event"]
    assert all("\n" not in g["event"] for g in got)
