"""structlog set-up, done once from ``main()``: JSON lines under systemd, console on a TTY.

Library loggers (pynetdicom, pydicom, watchdog) go through the same processor chain. No
patient data and no key material in any log line: log job ids and hashed UIDs.
"""

from __future__ import annotations

import logging
import re
import sys

import threading

import structlog
from structlog.tracebacks import ExceptionDictTransformer

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# Libraries that would log dataset contents at debug level stay at WARNING.
_QUIET = {"pynetdicom": logging.WARNING, "pydicom": logging.WARNING, "watchdog": logging.WARNING}


# Libraries quote the values they complain about ("Invalid value for VR PN: 'DOE^JANE'"):
# in their lines, every quoted text is replaced, so no patient data reaches the log.
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")


def redact_foreign(logger, method_name, event_dict):
    """For lines from other libraries (and Python warnings): hide quoted values, and keep
    each line one line: a multi-line message becomes its first line plus ``detail``, a
    list of the rest (a Python warning's source line is dropped)."""
    record = event_dict.get("_record")
    if record is None or event_dict.get("_from_structlog") or record.name.startswith("pacsguard"):
        return event_dict
    event = event_dict.get("event")
    if isinstance(event, str) and "\n" in event:
        first, *rest = [line.strip() for line in event.strip().splitlines() if line.strip()]
        event_dict["event"] = first
        if rest and record.name != "py.warnings":
            event_dict["detail"] = [_QUOTED.sub("'<redacted>'", line) for line in rest]
    for key in ("event", "exception"):
        if isinstance(event_dict.get(key), str):
            event_dict[key] = _QUOTED.sub("'<redacted>'", event_dict[key])
    exception = event_dict.get("exception")
    if isinstance(exception, list):  # structured traceback (JSON output)
        for frame_set in exception:
            if isinstance(frame_set, dict) and isinstance(frame_set.get("exc_value"), str):
                frame_set["exc_value"] = _QUOTED.sub("'<redacted>'", frame_set["exc_value"])
    return event_dict


class _NoWarningTwice(logging.Filter):
    """pydicom reports a problem twice: to its logger and as a Python warning with the same
    text, right after, in the same thread. Keep the logger's line, drop the warning."""

    def __init__(self):
        super().__init__()
        self._last = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pydicom"):
            self._last.message = record.getMessage()
            return True
        if record.name == "py.warnings":
            last = getattr(self._last, "message", None)
            self._last.message = None
            if last and last in record.getMessage():
                return False
        return True


def configure_logging(level: str = "info", fmt: str = "auto", stream=None) -> None:
    stream = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = (structlog.dev.ConsoleRenderer(colors=False) if fmt == "console"
                else structlog.processors.JSONRenderer(sort_keys=False))
    structlog.configure(
        processors=shared + [structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    # JSON: a traceback is a structured list of frames (no locals: they may hold patient
    # data), not multi-line text inside a line.
    exceptions = (structlog.processors.format_exc_info if fmt == "console" else
                  structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)))
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            exceptions,
            redact_foreign,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(_NoWarningTwice())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    logging.captureWarnings(True)  # pydicom's UserWarnings go through the same chain
    for name, lib_level in _QUIET.items():
        logging.getLogger(name).setLevel(max(lib_level, _LEVELS[level]))


def set_level(level: str) -> None:
    logging.getLogger().setLevel(_LEVELS[level])
