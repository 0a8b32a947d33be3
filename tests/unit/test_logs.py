"""Where log lines go (migrator.logs): the migrator's own to the terminal, libraries' chatter
only to `migrator.log`, JSON lines for log shippers, credentials redacted everywhere."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrator import credentials, logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    logging.captureWarnings(False)


def emit_all() -> None:
    logging.getLogger("migrator.pipeline").info("moved 3 runs")
    logging.getLogger("migrator.pipeline").debug("a detail")
    logging.getLogger("mlflow.store").info("Waiting up to 300 seconds for model version")
    logging.getLogger("botocore.credentials").warning("a warning that matters")
    # What `warnings.warn` calls (pytest records warnings itself before they get there).
    warnings.showwarning(FutureWarning("a library's warning"), FutureWarning, "lib.py", 1)


def test_terminal_gets_the_migrators_lines_and_the_file_everything(tmp_path: Path) -> None:
    out = io.StringIO()
    log_file = tmp_path / "migrator.log"
    logs.setup("info", "text", str(log_file), stream=out)
    emit_all()
    terminal = out.getvalue()
    assert "moved 3 runs" in terminal and "a warning that matters" in terminal
    assert "a detail" not in terminal
    assert "Waiting up to 300" not in terminal and "FutureWarning" not in terminal
    kept = log_file.read_text()
    for line in ("moved 3 runs", "a detail", "Waiting up to 300", "FutureWarning"):
        assert line in kept, line


def test_json_lines_for_log_shippers(tmp_path: Path) -> None:
    out = io.StringIO()
    logs.setup("debug", "json", str(tmp_path / "m.log"), stream=out)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("migrator.cli").exception("it failed")
    logging.getLogger("migrator.x").debug("a detail")
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["message"] for d in docs] == ["it failed", "a detail"]
    assert docs[0]["level"] == "error" and docs[0]["logger"] == "migrator.cli"
    assert "ValueError: boom" in docs[0]["exception"] and docs[0]["time"].endswith("Z")
    assert all(json.loads(line) for line in (tmp_path / "m.log").read_text().splitlines())


def test_no_file_when_asked_and_credentials_redacted_on_both_sides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    logs.setup("info", "text", "", stream=out)
    logging.getLogger("migrator.x").info("to http://alice:s3cret@host:5000/")
    assert "s3cret" not in out.getvalue() and credentials.redact("x") == "x"
    assert not list(tmp_path.iterdir())
    logs.setup("info", "text", str(tmp_path / "m.log"), stream=out)  # replaces, not adds
    logging.getLogger("migrator.x").info("to http://bob:t0ken@host/")
    assert "t0ken" not in (tmp_path / "m.log").read_text()
    assert out.getvalue().count("to http://") == 2
