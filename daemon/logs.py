"""structlog set-up, done once from ``main()``: JSON lines under systemd, console on a TTY.

Library loggers (pynetdicom, pydicom, watchdog) go through the same processor chain. No
patient data and no key material in any log line: log job ids and hashed UIDs.
"""

from __future__ import annotations

import logging
import re
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# Libraries that would log dataset contents at debug level stay at WARNING.
_QUIET = {"pynetdicom": logging.WARNING, "pydicom": logging.WARNING, "watchdog": logging.WARNING}


# Libraries quote the values they complain about ("Invalid value for VR PN: 'DOE^JANE'"):
# in their lines, every quoted text is replaced, so no patient data reaches the log.
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")


def redact_foreign(logger, method_name, event_dict):
    """For lines from other libraries (and Python warnings): hide quoted values."""
    record = event_dict.get("_record")
    if record is None or event_dict.get("_from_structlog") or record.name.startswith("pacsguard"):
        return event_dict
    for key in ("event", "exception"):
        if isinstance(event_dict.get(key), str):
            event_dict[key] = _QUOTED.sub("'<redacted>'", event_dict[key])
    return event_dict


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
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.processors.format_exc_info,
            redact_foreign,
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
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
