"""Structured JSON-lines logging (one object per line, `extra` fields included)."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Any

import orjson

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg", ...extra} as one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


# A log file rotates at this size, keeping this many old files (aws-node keeps 100 MB files).
LOG_FILE_MAX_BYTES = 100 * 1024 * 1024
LOG_FILE_BACKUPS = 5


def configure(level: str, destination: str = "stderr") -> None:
    """Send every vpcni logger to `destination` (stderr, stdout or a file path, rotated) as JSON
    lines at `level`."""
    handler: logging.Handler
    if destination == "stderr":
        handler = logging.StreamHandler(sys.stderr)
    elif destination == "stdout":
        handler = logging.StreamHandler(sys.stdout)
    else:
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            destination, maxBytes=LOG_FILE_MAX_BYTES, backupCount=LOG_FILE_BACKUPS
        )
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # botocore's debug chatter would drown ours.
    logging.getLogger("botocore").setLevel(max(logging.INFO, root.level))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
