"""Unit-test fixtures: a moto S3 server in this process (boto3 talks to it over HTTP)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from migrator.services import free_port


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    """moto's S3 on a free port with buckets `src`, `stage` and `tgt`; the AWS_* variables
    point at it while it runs."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in _ENV}
    url = f"http://127.0.0.1:{port}"
    os.environ.update({**_ENV, "AWS_ENDPOINT_URL": url, "MLFLOW_S3_ENDPOINT_URL": url})
    import boto3

    c = boto3.client("s3", endpoint_url=url)
    for b in ("src", "stage", "tgt"):
        c.create_bucket(Bucket=b)
    try:
        yield url
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ENDPOINT_URL": "",
    "MLFLOW_S3_ENDPOINT_URL": "",
}
