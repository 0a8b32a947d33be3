"""`migrator demo`: what it leaves behind."""

from __future__ import annotations

from pathlib import Path


def test_the_demo_keeps_its_manifests(tmp_path: Path) -> None:
    """The demo's S3 store is gone when it ends: its manifests are copied out first."""
    from migrator.demo import keep_manifests
    from migrator.staging import LocalStaging

    staging = LocalStaging(str(tmp_path / "staging"))
    for key in ("manifests/runs.parquet", "manifests/verify.parquet",
                "manifests/_journal/runs/1.parquet", "manifests/_lease.json", "runs/r/run.json"):
        staging.write_bytes(key, b"x")
    kept = keep_manifests(staging, tmp_path / "out" / "manifests")
    assert sorted(p.name for p in kept.iterdir()) == ["runs.parquet", "verify.parquet"]


def test_the_demos_working_folder_goes_when_it_succeeds_and_stays_when_not(
    tmp_path: Path,
) -> None:
    from migrator.demo import finish

    ok, failed = tmp_path / "ok", tmp_path / "failed"
    for d in (ok, failed):
        d.mkdir()
        (d / "source.log").write_text("log")
    finish(ok, 0)
    finish(failed, 1)
    assert not ok.exists() and (failed / "source.log").exists()
