"""A real CloudWatch API stand-in: moto's server on loopback, one per test module.

``moto_server`` answers the same wire protocol as CloudWatch (PutMetricData, GetMetricData,
ListMetrics, dashboards, alarms), so boto3 talks to it exactly as to AWS with
``endpoint_url``. The fixture sets dummy credentials and a region for the test process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.infra.system import free_port
from tests.support import unavailable, wait_for

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass
class MotoServer:
    url: str
    proc: subprocess.Popen[bytes]

    def client(self, service: str = "cloudwatch"):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def reset(self) -> None:
        """Forget every metric, dashboard and alarm (moto's reset API)."""
        httpx.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()


def _moto_command() -> str | None:
    beside = Path(sys.executable).parent / "moto_server"
    return str(beside) if beside.exists() else shutil.which("moto_server")


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    command = _moto_command()
    if command is None:
        unavailable("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([command, "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=dict(os.environ, **AWS_ENV))
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    try:
        try:
            wait_for(lambda: proc.poll() is None and httpx.get(f"{url}/moto-api/", timeout=2).status_code < 500,
                     60, "moto_server to answer")
        except AssertionError as exc:
            proc.kill()
            unavailable(f"moto_server did not start: {exc}; {log.read_text(errors='replace')[-1000:]}")
        yield MotoServer(url, proc)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
