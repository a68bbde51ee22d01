"""Structured logs: one JSON object per line, with the event's fields at the top level.

log = logging.getLogger("zenfed.coordinator")
log.info("upload", extra={"fields": {"round": 3, "participant": pid, "bytes": n}})
configure_json_logging()   # what `zenfed serve` does: JSON lines on stderr
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line: time, level, logger, event, and its fields."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON."""
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_json_logging(level: int = logging.INFO) -> None:
    """Send zenfed's logs to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("zenfed")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
