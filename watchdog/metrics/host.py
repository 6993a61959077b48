"""Which host the metrics are about: the EC2 instance id (IMDSv2) on EC2, else the host name.

IMDSv2 is asked with a short timeout so that a NAS or laptop, where 169.254.169.254 does
not answer, costs at most a second or two at start. ``AWS_EC2_METADATA_DISABLED=true``
skips it and ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` moves it, as in botocore.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import httpx
from loguru import logger

_log = logger.bind(component="metrics")
IMDS_DEFAULT = "http://169.254.169.254"


@dataclass(frozen=True)
class HostIdentity:
    host: str
    region: str | None = None  # the instance's region, when on EC2
    on_ec2: bool = False


def resolve_host(configured: str = "", *, timeout: float = 1.0) -> HostIdentity:
    """The Host dimension (blocking: call it in a thread)."""
    instance, region = _imds(timeout)
    if configured:
        return HostIdentity(configured, region, instance is not None)
    if instance is not None:
        return HostIdentity(instance, region, True)
    return HostIdentity(socket.gethostname(), None, False)


def _imds(timeout: float) -> tuple[str | None, str | None]:
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return None, None
    base = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS_DEFAULT).rstrip("/")
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            token = client.put(f"{base}/latest/api/token",
                               headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
            token.raise_for_status()
            headers = {"X-aws-ec2-metadata-token": token.text}
            instance = client.get(f"{base}/latest/meta-data/instance-id", headers=headers)
            instance.raise_for_status()
            region = client.get(f"{base}/latest/meta-data/placement/region", headers=headers)
            return instance.text.strip() or None, region.text.strip() if region.is_success else None
    except httpx.HTTPError as exc:
        _log.debug(f"not on EC2 (IMDSv2 did not answer: {type(exc).__name__}); using the host name")
        return None, None
