"""Where every command's log lines go: the migrator's own to the terminal, everything to a file.

- The terminal (stderr) gets the migrator's lines at `--log-level` (default `info`) and other
  libraries' only from WARNING up (MLflow's, boto3's, Ray's INFO lines are chatter to a user
  who ran a migration); Python's own warnings (`FutureWarning`, …) only go to the file.
- `migrator.log` in the working folder (`--log-file`; empty: none) keeps everything at DEBUG
  for the migrator and INFO for the libraries, warnings included: what to attach to a bug
  report.
- `--log-format json`: one JSON object per line on the terminal (`time`, `level`, `logger`,
  `message`, and `exception` when there is one), for log shippers; the file follows the same
  format.

Every line, on either side, has its credentials redacted.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO

from migrator.credentials import RedactingFilter

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
DEFAULT_FILE = "migrator.log"
#: Libraries whose INFO lines are chatter on a terminal (they stay in the file).
LIBRARIES = (
    "mlflow",
    "urllib3",
    "botocore",
    "boto3",
    "s3transfer",
    "alembic",
    "ray",
    "py.warnings",
)
_TEXT = "%(asctime)s %(levelname)-7s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class _Terminal(logging.Filter):
    """The migrator's lines at the chosen level; other libraries' from WARNING up."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "py.warnings":  # for developers: the file keeps them
            return False
        own = record.name == "migrator" or record.name.startswith("migrator.")
        return record.levelno >= (self.level if own else max(self.level, logging.WARNING))


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a line comes (a live progress display
    redirects it, to keep its lines above the display)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def setup(
    level: str = "info",
    fmt: str = "text",
    log_file: str = DEFAULT_FILE,
    stream: TextIO | None = None,
) -> None:
    """Configure the root logger for one command (replacing what an earlier call set)."""
    chosen = getattr(logging, level.upper())
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_migrator", False):
            root.removeHandler(h)
            h.close()
    root.setLevel(logging.DEBUG)
    formatter: logging.Formatter = (
        JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT, datefmt="%H:%M:%S")
    )
    terminal: logging.Handler = logging.StreamHandler(stream) if stream else _Stderr()
    terminal.setFormatter(formatter)
    terminal.addFilter(_Terminal(chosen))
    handlers: list[logging.Handler] = [terminal]
    if log_file:
        try:
            file = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as e:
            print(f"migrator: not logging to {log_file!r}: {e}", file=sys.stderr)
        else:
            file.setLevel(logging.DEBUG)
            file.setFormatter(
                JsonFormatter()
                if fmt == "json"
                else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
            )
            handlers.append(file)
    for h in handlers:
        h.addFilter(RedactingFilter())
        h._migrator = True  # type: ignore[attr-defined]
        root.addHandler(h)
    # MLflow writes its own lines to stderr through a handler of its own: it is told not to
    # (here, and in the workers, which get MLFLOW_* variables), and undone where it did.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    mlflow_log = logging.getLogger("mlflow")
    for h in list(mlflow_log.handlers):
        mlflow_log.removeHandler(h)
    mlflow_log.propagate = True
    for lib in LIBRARIES:  # kept in the file from INFO: their DEBUG is every request
        logging.getLogger(lib).setLevel(logging.INFO if level != "debug" else logging.DEBUG)
    # Its retries are logged once, by migrator.transport.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    logging.captureWarnings(False)  # (again: whoever replaced `showwarning` since)
    logging.captureWarnings(True)
