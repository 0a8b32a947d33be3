"""The benchmark's request counter (`bench/server_requests.py`) reads the servers' access logs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "bench" / "server_requests.py"
_spec = importlib.util.spec_from_file_location("bench_server_requests", _PATH)
assert _spec is not None and _spec.loader is not None
server_requests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(server_requests)

_MOTO_LOG = (
    b'127.0.0.1 - - [06/Dec/2026 09:17:44] "PUT /bench-staging/runs/a/run.json HTTP/1.1" 200 -\n'
    # werkzeug colours every answer but a 200: a presigned range GET (206), a miss (404)
    b'127.0.0.1 - - [06/Dec/2026 09:17:44] "\x1b[35m\x1b[1mGET /bench-artifacts/source/7/'
    b"r/artifacts/model.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00 "
    b'HTTP/1.1\x1b[0m" 206 -\n'
    b'127.0.0.1 - - [06/Dec/2026 09:17:45] "\x1b[33mHEAD /bench-staging/x HTTP/1.1\x1b[0m" 404 -\n'
)


def test_coloured_access_lines_are_counted(tmp_path: Path) -> None:
    log = tmp_path / "s3.log"
    log.write_bytes(_MOTO_LOG)
    by_endpoint, by_status = server_requests.read_requests(log, 0, len(_MOTO_LOG), s3=True)
    assert by_endpoint == {
        "PUT /bench-staging/*": 1,
        "GET /bench-artifacts/*?X-Amz-Algorithm,X-Amz-Signature": 1,
        "HEAD /bench-staging/*": 1,
    }
    assert by_status == {"2xx": 2, "4xx": 1}


def test_mlflow_access_lines_group_ids(tmp_path: Path) -> None:
    line = b'INFO: 127.0.0.1:5 - "GET /api/2.0/mlflow/experiments/get/12 HTTP/1.1" 200 OK\n'
    log = tmp_path / "source.log"
    log.write_bytes(line * 2)
    by_endpoint, by_status = server_requests.read_requests(log, 0, 2 * len(line))
    assert by_endpoint == {"GET /api/2.0/mlflow/experiments/get/{id}": 2}
    assert by_status == {"2xx": 2}
