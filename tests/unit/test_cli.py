"""The command line (migrator.cli): time parsing, flags, options, exit codes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from migrator import cli
from migrator.cli import build_parser, main, options_from_args, parse_time_ms
from migrator.config import Options


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1670836055960", 1670836055960),
        ("2024-01-01", 1704067200000),
        ("2024-01-01T00:00:00", 1704067200000),
        ("2024-01-01T00:00:00Z", 1704067200000),
        ("2024-01-01T00:00:00+00:00", 1704067200000),
        ("2024-01-01T01:00:00+01:00", 1704067200000),
        ("2024-01-01T00:00:00.250Z", 1704067200250),
        ("2022-12-08T04:45:37.597Z", 1670474737597),
    ],
)
def test_parse_time_ms(text: str, expected: int) -> None:
    assert parse_time_ms(text) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2024-13-01", "12.5", "-5", "1e12",
                                  "2024/01/01"])
def test_parse_time_ms_refuses_bad_values(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not epoch ms or an ISO"):
        parse_time_ms(text)


def test_parse_time_ms_is_exact_to_the_millisecond() -> None:
    assert parse_time_ms("2004-03-15T07:55:47.472Z") == 1079337347472


MIGRATE = ["migrate", "--source", "X", "--target", "Y", "--staging", "Z",
           "--experiments", "a,b", "--include-deleted", "--no-import-source-tags",
           "--run-start-time", "2024-01-01"]


def test_migrate_flags_to_options() -> None:
    args = build_parser().parse_args(MIGRATE)
    assert args.command == "migrate"
    opts = options_from_args(args)
    assert opts == Options(
        source="X",
        target="Y",
        staging="Z",
        experiments=("a", "b"),
        include_deleted=True,
        import_source_tags=False,
        run_start_time=1704067200000,
    )
    # what was not given stays at the defaults of Options
    assert opts.models == ()
    assert opts.ray_address is None
    assert opts.dry_run is False
    assert opts.concurrency == Options().concurrency


def test_defaults_of_migrate() -> None:
    opts = options_from_args(build_parser().parse_args(
        ["migrate", "--source", "X", "--target", "Y"]))
    assert opts == Options(source="X", target="Y")
    assert opts.import_source_tags is True
    assert opts.include_deleted is False
    assert opts.experiments == ()
    assert opts.staging == Options().staging


def test_csv_lists_strip_blanks() -> None:
    args = build_parser().parse_args(
        ["export", "--source", "X", "--experiments", " a , ,b,", "--models", "m*",
         "--ray-address", "none", "--concurrency", "3", "--batch-size", "2", "--dry-run"])
    opts = options_from_args(args)
    assert opts.experiments == ("a", "b")
    assert opts.models == ("m*",)
    assert opts.ray_address == "none"
    assert (opts.concurrency, opts.batch_size, opts.dry_run) == (3, 2, True)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["migrate", "--target", "Y"],          # --source required
        ["migrate", "--source", "X"],          # --target required
        ["export", "--source", "X", "--target", "Y"],  # export has no target
        ["import", "--source", "X", "--target", "Y"],  # import has no source
        ["migrate", "--source", "X", "--target", "Y", "--run-start-time", "soon"],
        ["frobnicate"],
    ],
)
def test_parser_refuses(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        build_parser().parse_args(argv)
    assert ei.value.code == 2
    assert "error" in capsys.readouterr().err


def test_main_bad_source_scheme_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["migrate", "--source", "ftp://x", "--target", "http://127.0.0.1:1",
                 "--staging", str(tmp_path)])
    assert code == cli.EXIT_CONFIG == 2
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("migrator: error: ")
    assert "ftp://x" in lines[0]
    assert "Traceback" not in err
    assert out == ""
    assert list(tmp_path.iterdir()) == []  # failed before any work: nothing staged


def test_main_unreachable_target_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `import` checks only the target: nothing listens on port 1, refused at once
    code = main(["import", "--target", "http://127.0.0.1:1", "--staging", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("migrator: error: ")
    assert "not reachable" in lines[0]


def test_both_servers_unreachable_names_the_source_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the two sides are checked side by side; the error is the source's, as it was in turn
    code = main(["migrate", "--source", "http://127.0.0.1:1", "--target", "http://127.0.0.1:2",
                 "--staging", str(tmp_path)])
    assert code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "source server http://127.0.0.1:1 is not reachable" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["migrate", "plan"])
def test_an_unforeseen_error_is_one_line_never_a_traceback(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from migrator import pipeline, plan

    def boom(*args: object, **kwargs: object) -> None:
        raise KeyError("an answer nobody foresaw")

    monkeypatch.setattr(pipeline, "run_command", boom)
    monkeypatch.setattr(plan, "run_plan", boom)
    code = main([command, "--source", "http://s", "--target", "http://t", "--staging",
                 str(tmp_path)])
    assert code == cli.EXIT_FAILED == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("migrator: failed: unexpected KeyError: 'an answer nobody foresaw'")
    assert "Traceback" not in err


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_command_exits_3_with_one_line(
    how: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C, or SIGTERM (`ray job stop`, a scheduler): exit 3, one line, no traceback."""
    import os
    import signal

    from migrator import pipeline

    def interrupted(command: str, opts: object, factory: object) -> None:
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_command", interrupted)
    before = signal.getsignal(signal.SIGTERM)
    code = cli.main(["migrate", "--source", "http://s", "--target", "http://t"])
    err = capsys.readouterr().err
    assert code == 3
    assert err.startswith("migrator: interrupted:") and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) == before  # given back


def test_audit_without_a_question_gives_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DESIGN.md's `audit --staging URI [--source-run-id ID | … | --summary]`."""
    from migrator.manifest import runs_table
    from migrator.staging import LocalStaging

    staging = LocalStaging(str(tmp_path / "staging"))
    runs = runs_table(staging)
    runs.append([{"source_run_id": "s1", "state": "tagged", "artifact_bytes": 7}])
    runs.compact()
    assert main(["audit", "--staging", staging.uri, "--format", "json"]) == 0
    asked = capsys.readouterr().out
    assert json.loads(asked)["runs"] == {"tagged": 1}
    assert main(["audit", "--staging", staging.uri, "--format", "json", "--summary"]) == 0
    assert capsys.readouterr().out == asked
