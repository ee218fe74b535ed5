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
