"""`migrator report`: the page is built from the manifests and the last verify, and a real
headless browser (Debian's chromium) shows what it should."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from migrator import cli, manifest, report
from migrator.staging import LocalStaging

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
T0 = 1_764_000_000_000


@pytest.fixture
def staging(tmp_path: Path) -> LocalStaging:
    st = LocalStaging(str(tmp_path / "staging"))
    exps = manifest.experiments_table(st)
    exps.append([
        {"source_experiment_id": "1", "name": "team/churn", "state": "tagged"},
        {"source_experiment_id": "2", "name": "team/<ranking>", "state": "tagged"},
    ])
    exps.compact()
    runs = manifest.runs_table(st)
    rows = []
    for i in range(30):
        failed = i in (4, 17)
        rows.append({
            "source_run_id": f"r{i:02d}", "source_experiment_id": "1" if i < 20 else "2",
            "state": "failed" if failed else "tagged",
            "failed_stage": "import" if failed else None,
            "error": "TransientError: HTTP 503 <from the target>" if failed else None,
            "artifact_bytes": 0 if failed else 1_000_000,
            "updated_at": T0 + i * 20_000,  # 3 runs a minute
        })
    runs.append(rows)
    runs.compact()
    manifest.write_verify(st, [
        {"object_type": "run", "source_id": f"r{i:02d}", "outcome": "match"} for i in range(27)
    ] + [{"object_type": "run", "source_id": "r04", "outcome": "missing_on_target"}])
    return st


def test_the_page_from_the_manifests(staging: LocalStaging, tmp_path: Path) -> None:
    page = report.build(staging.uri)
    assert "Migration report" in page and "team/&lt;ranking&gt;" in page  # escaped
    assert "HTTP 503 &lt;from the target&gt;" in page
    assert page.count("<svg") == 2 and "<script" not in page and "http://" not in page
    assert "28.0 MB" in page  # 28 runs × 1 MB


def test_report_command(staging: LocalStaging, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    assert cli.main(["report", "--staging", staging.uri, "--out", str(out), "--log-file", ""]) == 0
    assert out.read_text().startswith("<!doctype html>")


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("MIGRATOR_REQUIRE_CHROMIUM"),
    reason="Debian's chromium is not installed (CI installs it: .ci/run)",
)
def test_a_real_browser_shows_it(staging: LocalStaging, tmp_path: Path) -> None:
    assert CHROMIUM, "chromium is required here (MIGRATOR_REQUIRE_CHROMIUM) and missing"
    out = report.write(staging.uri, str(tmp_path / "report.html"))
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [str(CHROMIUM), *flags, "--dump-dom", out.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    assert "<title>Migration report" in text
    assert 'id="card-failed">failed<b>2</b>' in text
    assert 'id="card-verified">verified<b>27 / 28 match</b>' in text
    assert text.count("<tr>") >= 2 + 2 + 3  # states, verify, failures
    assert "missing_on_target" in text and "team/&lt;ranking&gt;" in text
    # 2 experiments; a run every 20 s over 580 s, in 10 s columns
    assert text.count("<rect") == 2 + 59 and "per 10 s (UTC)" in text
    shot = tmp_path / "report.png"
    done = subprocess.run(
        [str(CHROMIUM), *flags, f"--screenshot={shot}", "--window-size=1200,1400", out.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]


def test_a_report_mid_migration_counts_the_newest_rows_and_writes_nothing(
    staging: LocalStaging,
) -> None:
    runs = manifest.runs_table(staging)
    runs.append([  # r04 retried and moved; r30 new: both in the journal only (a driver at work)
        {"source_run_id": "r04", "source_experiment_id": "1", "state": "tagged",
         "artifact_bytes": 1_000_000, "updated_at": T0 + 700_000},
        {"source_run_id": "r30", "source_experiment_id": "2", "state": "exported",
         "updated_at": T0 + 720_000},
    ])
    runs.flush()
    journal = sorted(staging.list_keys(runs.journal_prefix))
    page = report.build(staging.uri)
    assert "29.0 MB" in page  # r04 now moved its megabyte too
    assert "HTTP 503" in page and page.count("TransientError") == 1  # only r17 still failed
    assert sorted(staging.list_keys(runs.journal_prefix)) == journal  # nothing folded


def test_throughput_buckets_hold_every_run() -> None:
    from collections import Counter

    seconds = Counter({T0 // 1000 + 20 * i: 1 for i in range(30)})
    seconds[T0 // 1000] += 4
    unit, items = report._throughput(seconds)
    assert unit == "10 s" and len(items) == 59
    assert sum(n for _, n in items) == 34 and items[0][1] == 5
