"""The `migrator` command: subcommands and flags only; the work is in `pipeline`."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone

from migrator import logs
from migrator.config import Options
from migrator.credentials import redact
from migrator.errors import ConfigError, Interrupted, MigratorError
from migrator.progress import MODES

log = logging.getLogger("migrator")
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 3
DEFAULTS = Options()
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_time_ms(text: str) -> int:
    """Epoch milliseconds, or an ISO date/time (UTC unless it says otherwise)."""
    if text.isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not epoch ms or an ISO date/time: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // timedelta(milliseconds=1)  # exact: no float rounding


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _add_seconds(p: argparse.ArgumentParser, flag: str, field: str, text: str) -> None:
    """An option in seconds, defaulting to its `Options` field."""
    default = getattr(DEFAULTS, field)
    p.add_argument(
        flag,
        dest=field,
        type=float,
        default=default,
        metavar="SECONDS",
        help=f"{text} (default {default:.0f})",
    )


def _add_common(p: argparse.ArgumentParser, *, source: bool, target: bool, staging: bool) -> None:
    if source:
        p.add_argument("--source", required=True, help="source tracking URI")
    if target:
        p.add_argument("--target", required=True, help="target tracking URI")
    if staging:
        p.add_argument(
            "--staging",
            default=DEFAULTS.staging,
            help="s3://bucket/prefix or a local folder; the same URI resumes "
            f"(default: ./{DEFAULTS.staging})",
        )
    p.add_argument(
        "--experiments",
        type=_csv,
        default=(),
        help="names, ids or globs (comma-separated; default all)",
    )
    p.add_argument("--models", type=_csv, default=(), help="registered model names or globs")
    p.add_argument(
        "--include-deleted", action="store_true", help="also migrate deleted experiments and runs"
    )
    p.add_argument(
        "--run-start-time",
        type=parse_time_ms,
        default=None,
        help="only runs started at or after this time (epoch ms or ISO date)",
    )
    p.add_argument(
        "--no-import-source-tags",
        dest="import_source_tags",
        action="store_false",
        help="do not keep original system attributes as mlflow_exim.* tags",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster address (default: a local Ray; 'none' runs inline)",
    )
    p.add_argument("--dry-run", action="store_true", help="show what would move; write nothing")
    _add_seconds(
        p,
        "--server-grace",
        "server_grace_s",
        "how long a server may stop answering before the command stops with exit 3",
    )
    _add_seconds(
        p,
        "--lease-ttl",
        "lease_ttl_s",
        "a driver holding the staging store whose heartbeat is this old is taken to be gone",
    )
    p.add_argument(
        "--concurrency", type=int, default=DEFAULTS.concurrency, help="tasks in flight at once"
    )
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, help="runs per task")
    p.add_argument(
        "--progress",
        choices=MODES,
        default=DEFAULTS.progress,
        help="a live display on a terminal, log lines otherwise (auto), or either, or none",
    )
    _add_logging(p)


def _add_artifacts_destinations(p: argparse.ArgumentParser, *, source: bool, target: bool) -> None:
    """The servers' `--artifacts-destination`, where each side's proxied files are read or
    written directly (`migrator.artifact_store`)."""
    for side, used in (("source", source), ("target", target)):
        if used:
            p.add_argument(
                f"--{side}-artifacts-destination",
                default="",
                metavar="URI",
                help=f"the {side} server's --artifacts-destination (s3://bucket/prefix, a folder): "
                "its proxied artifacts are "
                + ("read from" if side == "source" else "written to")
                + " there directly, not through the server (S3 on the staging's endpoint: "
                "server-side copies)",
            )


def _add_artifacts_depth(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--artifacts",
        dest="verify_artifacts",
        choices=("hash", "size", "none"),
        default=DEFAULTS.verify_artifacts,
        help="verify artifacts by SHA-256 of every file (hash, default), by size, or not at all",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migrator",
        description="Move a whole MLflow tracking server, with lineage.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    migrate = sub.add_parser("migrate", help="export + import + source tags (+ --verify)")
    migrate.add_argument("--verify", action="store_true", help="verify every object at the end")
    _add_artifacts_depth(migrate)
    _add_common(
        migrate,
        source=True,
        target=True,
        staging=True,
    )
    _add_artifacts_destinations(migrate, source=True, target=True)
    export = sub.add_parser("export", help="source -> staging")
    _add_common(export, source=True, target=False, staging=True)
    _add_artifacts_destinations(export, source=True, target=False)
    import_ = sub.add_parser("import", help="staging -> target")
    _add_common(import_, source=False, target=True, staging=True)
    import_.add_argument(
        "--from-export-import",
        metavar="DIR",
        help="first bring in a directory written by mlflow-export-import (export-experiments "
        "or export-all) as staged runs",
    )
    _add_artifacts_destinations(import_, source=False, target=True)
    verify = sub.add_parser("verify", help="compare every migrated object with its source")
    _add_common(verify, source=True, target=True, staging=True)
    _add_artifacts_depth(verify)
    audit = sub.add_parser("audit", help="lineage questions answered from the manifests")
    audit.add_argument("--staging", default=DEFAULTS.staging, help="the migration's staging URI")
    which = audit.add_mutually_exclusive_group()  # none: the summary
    which.add_argument("--source-run-id", help="where did this source run go, and what was it?")
    which.add_argument("--target-run-id", help="where did this target run come from?")
    which.add_argument("--model", help="a registered model by name: its row and its versions")
    which.add_argument("--prompt", help="a prompt by name: its row and its versions")
    which.add_argument("--source-model-id", help="where did this (logged) model go?")
    which.add_argument("--target-model-id", help="where did this target logged model come from?")
    which.add_argument("--source-trace-id", help="where did this source trace go?")
    which.add_argument("--target-trace-id", help="where did this target trace come from?")
    which.add_argument(
        "--summary", action="store_true", help="counts by object type and state (the default)"
    )
    audit.add_argument("--version", type=int, help="with --model or --prompt: just this version")
    audit.add_argument("--format", choices=("table", "json", "csv"), default="table")
    _add_logging(audit)
    plan = sub.add_parser("plan", help="what would move; writes nothing")
    _add_common(plan, source=True, target=False, staging=True)
    plan.add_argument("--target", default="", help="target tracking URI (shows what exists there)")
    report = sub.add_parser("report", help="one HTML page from the manifests and the last verify")
    report.add_argument("--staging", default=DEFAULTS.staging, help="staging URI")
    report.add_argument("--out", default="report.html", help="the HTML file (default report.html)")
    _add_logging(report)
    demo = sub.add_parser(
        "demo", help="embedded end-to-end demo: seeded source, target, S3, local Ray"
    )
    demo.add_argument("--runs", type=int, default=40, help="runs to seed on the source")
    demo.add_argument("--keep", action="store_true", help="keep servers up until Ctrl-C")
    _add_logging(demo)
    return parser


def options_from_args(args: argparse.Namespace) -> Options:
    fields = {f for f in Options.__dataclass_fields__}
    opts = Options(**{k: v for k, v in vars(args).items() if k in fields})
    if getattr(args, "log_format", "text") == "json" and opts.progress == "auto":
        opts = opts.replace(progress="log")  # a log shipper reads lines, not a display
    return opts


def _add_logging(p: argparse.ArgumentParser) -> None:
    """The log options of every command (`migrator.logs`)."""
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (--log-level debug)")
    p.add_argument("--log-level", choices=logs.LEVELS, default="info", help="terminal log level")
    p.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="text",
        help="json: one JSON object per line (for log shippers)",
    )
    p.add_argument(
        "--log-file",
        default=logs.DEFAULT_FILE,
        help=f"every line, libraries' too (default ./{logs.DEFAULT_FILE}; '' for none)",
    )


def setup_logging(args: argparse.Namespace) -> None:
    level = "debug" if getattr(args, "verbose", False) else getattr(args, "log_level", "info")
    logs.setup(
        level,
        getattr(args, "log_format", "text"),
        getattr(args, "log_file", logs.DEFAULT_FILE),
    )


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (`ray job stop`, a scheduler, `kill`) ends a command as Ctrl-C does: what was
    done is recorded, and the exit code says interrupted."""
    import signal
    import threading

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. Exit codes, the same for every command and `jobs/migrate.py`:
    0 done (all match), 1 objects failed or differ, 2 bad usage or preflight failure,
    3 interrupted (a server gone part way, Ctrl-C, SIGTERM): the same command resumes."""
    args = build_parser().parse_args(argv)
    setup_logging(args)
    with _stop_on_sigterm():
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        if args.command == "demo":
            from migrator.demo import run_demo

            return run_demo(n_runs=args.runs, keep=args.keep)
        if args.command == "audit":
            from migrator.audit import run_audit

            return run_audit(
                args.staging,
                source_run_id=args.source_run_id,
                target_run_id=args.target_run_id,
                model=args.model,
                prompt=args.prompt,
                version=args.version,
                source_model_id=args.source_model_id,
                target_model_id=args.target_model_id,
                source_trace_id=args.source_trace_id,
                target_trace_id=args.target_trace_id,
                fmt=args.format,
            )
        if args.command == "report":
            from migrator import report as report_page

            path = report_page.write(args.staging, args.out)
            print(f"migrator: report written to {path}")
            return EXIT_OK
        opts = options_from_args(args)
        if args.command == "plan" or opts.dry_run:
            from migrator.plan import run_plan

            print(run_plan(opts, args.command).render())
            return EXIT_OK
        from migrator.fanout import make_executor
        from migrator.pipeline import run_command

        if getattr(args, "from_export_import", None):
            from migrator.from_exim import stage_directory

            staged, failed = stage_directory(args.from_export_import, opts)
            log.info(
                "staged %d runs from %s (%d could not be read: named in the summary)",
                staged,
                args.from_export_import,
                failed,
            )

        summary = run_command(args.command, opts, make_executor)
        print(redact(summary.render()))
        return EXIT_OK if summary.ok else EXIT_FAILED
    except ConfigError as e:
        print(f"migrator: error: {redact(str(e))}", file=sys.stderr)
        return EXIT_CONFIG
    except Interrupted as e:
        print(f"migrator: interrupted: {redact(str(e))}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(
            "migrator: interrupted: stopped by the user or a signal; what was done is "
            "recorded, the same command resumes",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except MigratorError as e:
        print(f"migrator: failed: {redact(str(e))}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # a bug, or an answer nobody foresaw: one line, never a traceback
        log.debug("unexpected error", exc_info=True)
        print(
            f"migrator: failed: unexpected {type(e).__name__}: {redact(str(e))} "
            "(-v shows the traceback; what was done is recorded, the same command resumes)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
