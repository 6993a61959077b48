"""CloudWatch: PutMetricData of each snapshot, through a bounded buffer, with backoff.

Every ``interval`` the snapshot's samples (counters as deltas since the last one) join a
buffer of at most ``buffer`` datapoints; the buffer is then sent in batches within the API's
per-call limits (1000 metrics, 1 MB). While CloudWatch is unreachable or throttling, the
buffer keeps the newest datapoints (the oldest are dropped, counted, and logged once per
outage) and sends are retried with exponential backoff; botocore's standard retry mode
retries each call a few times first. boto3 is imported here only, when CloudWatch is
enabled; credentials come from its standard chain (environment, profile, instance role).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from loguru import logger

from watchdog.config.model import CloudWatchSettings
from watchdog.metrics.snapshot import Deltas, MetricsSnapshot, Sample

_log = logger.bind(component="metrics")
MAX_METRICS_PER_CALL = 1000
MAX_BYTES_PER_CALL = 1_000_000
#: A datum's size on the wire is larger than its JSON (the query protocol spells out every key path).
_WIRE_FACTOR = 3
#: Error codes worth retrying: throttling, the service having trouble, credentials not there yet.
RETRYABLE = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded", "TooManyRequestsException",
    "ServiceUnavailable", "InternalFailure", "InternalServiceError", "InternalServiceFault", "RequestTimeout",
    "ExpiredToken", "ExpiredTokenException", "RequestExpired",
})

Datum = dict[str, Any]


def to_datum(sample: Sample, host: str, at: datetime, high_resolution: bool) -> Datum:
    datum: Datum = {
        "MetricName": sample.metric.name,
        "Dimensions": [{"Name": k, "Value": v} for k, v in sample.dimensions(host).items()],
        "Timestamp": at,
        "Value": sample.value,
        "Unit": sample.metric.unit,
    }
    if high_resolution:
        datum["StorageResolution"] = 1
    return datum


def batches(datums: Iterable[Datum], max_count: int = MAX_METRICS_PER_CALL,
            max_bytes: int = MAX_BYTES_PER_CALL) -> list[list[Datum]]:
    """Split datapoints into PutMetricData calls within the per-call limits (in order)."""
    out: list[list[Datum]] = []
    current: list[Datum] = []
    size = 0
    for datum in datums:
        cost = len(json.dumps(datum, default=str)) * _WIRE_FACTOR
        if current and (len(current) >= max_count or size + cost > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(datum)
        size += cost
    if current:
        out.append(current)
    return out


class CloudWatchExporter:
    """Puts the snapshot every ``interval``; survives outages and throttling with bounded memory."""

    def __init__(
        self,
        settings: CloudWatchSettings,
        host: str,
        snapshot: Callable[[], Awaitable[MetricsSnapshot]],
        *,
        region: str | None = None,
        client: Any = None,
        max_backoff: float = 300.0,
    ) -> None:
        self.settings = settings
        self.host = host
        self.region = settings.region or region
        self._snapshot = snapshot
        self._client = client
        self.buffer: deque[Datum] = deque(maxlen=settings.buffer)
        self.dropped = 0  # datapoints dropped since start: the buffer was full
        self.rejected = 0  # datapoints CloudWatch refused (bad request): never retried
        self.sent = 0
        self.calls = 0
        self._deltas = Deltas()
        self._failing: str | None = None  # why sends fail now (logged once per outage)
        self._dropping = False
        self._backoff = 0.0
        self._next_try = 0.0
        self._max_backoff = max(max_backoff, settings.interval)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = await asyncio.to_thread(self._make_client)
        self._task = asyncio.ensure_future(self._run())
        self._task.set_name("metrics:cloudwatch")
        where = self.settings.endpoint_url or f"region {self._client.meta.region_name}"
        _log.info(f"cloudwatch: putting metrics every {self.settings.interval:g} s to {where}, "
                  f"namespace {self.settings.namespace}, host {self.host}")

    async def stop(self, flush_timeout: float = 5.0) -> None:
        """Stop; one last send of what is buffered, bounded in time."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.buffer:
            self._next_try = 0.0
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.flush(), flush_timeout)

    def _make_client(self) -> Any:
        import boto3  # the [cloudwatch] extra; imported only when enabled
        from botocore.config import Config as BotoConfig

        return boto3.session.Session().client(
            "cloudwatch",
            region_name=self.region or None,
            endpoint_url=self.settings.endpoint_url or None,
            config=BotoConfig(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=3,
                              read_timeout=10, user_agent_extra="inference-watchdog"),
        )

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.collect()
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - metrics never stop the daemon
                _log.opt(exception=exc).error(f"cloudwatch: exporter failed: {exc!r}")
            await asyncio.sleep(max(0.0, self.settings.interval - (time.monotonic() - started)))

    # --- the work ------------------------------------------------------------------------------

    async def collect(self) -> None:
        """Take one snapshot into the buffer (the oldest datapoints go when it is full)."""
        snapshot = await self._snapshot()
        datums = [to_datum(s, self.host, snapshot.at, self.settings.high_resolution)
                  for s in self._deltas.apply(snapshot)]
        self.add(datums)

    def add(self, datums: list[Datum]) -> None:
        overflow = len(self.buffer) + len(datums) - (self.buffer.maxlen or 0)
        if overflow > 0:
            self.dropped += overflow
            if not self._dropping:
                self._dropping = True
                _log.warning(f"cloudwatch: buffer full ({self.buffer.maxlen} datapoints); dropping the oldest "
                             "(counted) until CloudWatch takes them again")
        self.buffer.extend(datums)

    async def flush(self) -> None:
        """Send what is buffered, oldest first; on a retryable failure keep it and back off."""
        async with self._lock:
            if time.monotonic() < self._next_try:
                return
            while self.buffer:
                batch = batches(list(self.buffer)[:MAX_METRICS_PER_CALL])[0]
                outcome = await self._put(batch)
                if outcome == "retry":
                    self._backoff = min(self._max_backoff, max(self.settings.interval, self._backoff * 2 or 1.0))
                    self._next_try = time.monotonic() + self._backoff
                    return
                for _ in batch:
                    self.buffer.popleft()
                if outcome == "sent":
                    self.sent += len(batch)
                else:
                    self.rejected += len(batch)
            self._backoff = 0.0
            self._next_try = 0.0
            if self._dropping:
                self._dropping = False
                _log.warning(f"cloudwatch: buffer drained; {self.dropped} datapoint(s) dropped since start")

    async def _put(self, batch: list[Datum]) -> str:
        """"sent", "retry" (keep it) or "rejected" (a bad request: drop it)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            await asyncio.to_thread(self._client.put_metric_data, Namespace=self.settings.namespace,
                                    MetricData=batch)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "?"))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in RETRYABLE or status >= 500 or status == 429:
                self._failing_now(f"{code} (HTTP {status})")
                return "retry"
            _log.error(f"cloudwatch: {len(batch)} datapoint(s) refused ({code}: {error.get('Message', '')}); "
                       "dropped, not retried")
            return "rejected"
        except (BotoCoreError, OSError) as exc:  # unreachable endpoint, no credentials yet, timeouts
            self._failing_now(f"{type(exc).__name__}: {exc}")
            return "retry"
        except Exception as exc:  # noqa: BLE001 - a garbled answer (a proxy's error page): keep and retry
            self._failing_now(f"{type(exc).__name__}: {exc}")
            return "retry"
        self.calls += 1
        if self._failing is not None:
            _log.info(f"cloudwatch: sending again (was failing: {self._failing})")
            self._failing = None
        return "sent"

    def _failing_now(self, why: str) -> None:
        if self._failing is None:
            _log.warning(f"cloudwatch: PutMetricData failed ({why}); keeping up to {self.buffer.maxlen} "
                         "datapoints and retrying with backoff")
        self._failing = why
