"""Where alerts go: Slack, webhooks, e-mail, Apprise. Each sink sends one alert or raises.

A sink knows its secrets (resolved when it is built, after every reload) and
never lets them out: errors are worded by us ("HTTP 503", "connection
refused", "SMTP 535 authentication failed") and passed through a redactor that
knows the sink's own secrets, and a sink is named by its ``name``, never by its
URL. :class:`DeliveryError` says whether trying again may help and when.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import json
import logging
import math
import smtplib
import socket
import ssl
import time
from email.message import EmailMessage
from typing import Any, Protocol

import httpx

from watchdog import __version__
from watchdog.config.model import AppriseAlert, EmailAlert, SlackAlert, WebhookAlert
from watchdog.config.secrets import SecretError
from watchdog.notify.alert import Alert
from watchdog.notify.compose import alert_key
from watchdog.notify.render import (
    discord_message,
    email_html,
    email_subject,
    email_text,
    ntfy_message,
    pagerduty_event,
    slack_message,
)
from watchdog.redact import Redactor

USER_AGENT = f"inference-watchdog/{__version__}"
MAX_RETRY_AFTER_S = 3600.0
#: The header every HTTP sink sends the idempotency key in (Stripe's and the IETF draft's name).
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_HEADER = "X-Watchdog-Signature"
TIMESTAMP_HEADER = "X-Watchdog-Timestamp"

# slack_sdk logs request URLs (which hold the webhook's secret) at INFO/DEBUG: keep it silent.
_SILENT = logging.getLogger("watchdog.notify.slack_sdk")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False
_SILENT.setLevel(logging.CRITICAL + 10)


class DeliveryError(Exception):
    """A delivery that did not happen. ``temporary``: retrying may help; ``retry_after``: not before."""

    def __init__(self, message: str, *, temporary: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.temporary = temporary
        self.retry_after = retry_after


class Sink(Protocol):
    name: str
    kind: str

    async def send(self, alert: Alert) -> None: ...

    async def aclose(self) -> None: ...


def build_sink(settings: Any, redactor: Redactor, environ: dict[str, str] | None = None) -> Sink:
    """The sink for one ``[[alerts]]`` entry. Raises SecretError when a secret cannot be read now."""
    if isinstance(settings, SlackAlert):
        return SlackSink(settings, environ)
    if isinstance(settings, WebhookAlert):
        return WebhookSink(settings, environ)
    if isinstance(settings, EmailAlert):
        return EmailSink(settings, environ)
    if isinstance(settings, AppriseAlert):
        return AppriseSink(settings, environ)
    raise ValueError(f"unknown alert sink kind {getattr(settings, 'kind', '?')!r}")


class _Base:
    def __init__(self, settings: Any, secrets: list[str]) -> None:
        self.settings = settings
        self.name: str = settings.name
        self.kind: str = settings.kind
        self._redact = Redactor(secrets)

    def safe(self, text: str) -> str:
        return self._redact.text(text)

    async def aclose(self) -> None:
        return None


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), capped; None when absent or garbage."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def http_error(status: int, headers: Any, body: str = "") -> DeliveryError:
    """How an HTTP answer that is not 2xx is treated: 429, 408 and 5xx retried; bad requests not.

    401/403/404 are retried too (until the alert expires): a revoked webhook or a
    wrong token is fixed in the config and reloaded, and what waited is then delivered.
    """
    hint = f" ({body.strip()[:80]})" if body.strip() and len(body.strip()) <= 80 else ""
    if status == 429:
        after = retry_after(headers.get("Retry-After") if headers is not None else None)
        return DeliveryError(f"HTTP 429 rate limited{hint}", temporary=True, retry_after=after)
    if status in (400, 413, 422):
        return DeliveryError(f"HTTP {status} the receiver refused this message{hint}", temporary=False)
    after = retry_after(headers.get("Retry-After") if headers is not None else None) if status == 503 else None
    return DeliveryError(f"HTTP {status}{hint}", temporary=True, retry_after=after)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it (httpx and aiohttp wrap the OSError that says what happened)."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or any(item is s for s in seen) or len(seen) > 10:
            continue
        seen.append(item)
        todo.extend([item.__cause__, item.__context__, getattr(item, "os_error", None)])
    return seen


def _connection_error(exc: BaseException) -> DeliveryError:
    chain = _chain(exc)
    text = " ".join(str(e) for e in chain).lower()
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "refused" in text:
        return DeliveryError("connection refused", temporary=True)
    if any(isinstance(e, (httpx.TimeoutException, TimeoutError, socket.timeout)) for e in chain):
        return DeliveryError("timed out", temporary=True)
    if "name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
        return DeliveryError("host name does not resolve", temporary=True)
    if "certificate" in text or isinstance(exc, ssl.SSLError):
        return DeliveryError(f"TLS error: {type(exc).__name__}", temporary=True)
    return DeliveryError(f"connection failed: {type(exc).__name__}", temporary=True)


# --- Slack ------------------------------------------------------------------------------------


class SlackSink(_Base):
    """Slack incoming webhook through slack_sdk (its 429 Retry-After and connection retry handlers)."""

    def __init__(self, settings: SlackAlert, environ: dict[str, str] | None = None) -> None:
        url = settings.webhook_url.resolve(environ).reveal()
        super().__init__(settings, [url])
        from slack_sdk.http_retry.builtin_async_handlers import (
            AsyncConnectionErrorRetryHandler,
            AsyncRateLimitErrorRetryHandler,
        )
        from slack_sdk.webhook.async_client import AsyncWebhookClient

        self._client = AsyncWebhookClient(
            url,
            timeout=max(1, int(settings.timeout)),
            logger=_SILENT,
            user_agent_prefix=USER_AGENT,
            retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1),
                            AsyncConnectionErrorRetryHandler(max_retry_count=1)],
        )

    async def send(self, alert: Alert) -> None:
        body = slack_message(alert)
        try:
            response = await asyncio.wait_for(
                self._client.send_dict(body, headers={IDEMPOTENCY_HEADER: alert.id}),
                timeout=self.settings.timeout * 3 + MAX_RETRY_SLEEP_S,
            )
        except TimeoutError:
            raise DeliveryError("timed out", temporary=True) from None
        except Exception as exc:  # noqa: BLE001 - aiohttp's errors, worded by us
            raise _connection_error(exc) from None
        if 200 <= response.status_code < 300:
            return
        raise http_error(response.status_code, _Headers(response.headers), self.safe(str(response.body or "")))


#: slack_sdk sleeps a 429's Retry-After itself once; allow for it in the overall deadline.
MAX_RETRY_SLEEP_S = 65.0


class _Headers:
    """slack_sdk gives headers as {name: [values]}: case-insensitive first values."""

    def __init__(self, headers: dict[str, Any] | None) -> None:
        self._h = {str(k).lower(): v for k, v in (headers or {}).items()}

    def get(self, name: str) -> str | None:
        value = self._h.get(name.lower())
        if isinstance(value, (list, tuple)):
            return str(value[0]) if value else None
        return None if value is None else str(value)


# --- Webhook ------------------------------------------------------------------------------------


class WebhookSink(_Base):
    """POST JSON (or ntfy text) with the idempotency key and an optional HMAC-SHA256 signature."""

    def __init__(self, settings: WebhookAlert, environ: dict[str, str] | None = None) -> None:
        self.url = settings.url.resolve(environ).reveal()
        self.headers = {k: v.resolve(environ).reveal() for k, v in settings.headers.items()}
        self.signing = settings.signing_secret.resolve(environ).reveal() if settings.signing_secret else None
        self.routing_key = settings.routing_key.resolve(environ).reveal() if settings.routing_key else None
        secrets = [self.url, *self.headers.values(), self.signing or "", self.routing_key or ""]
        super().__init__(settings, secrets)
        self._client = httpx.AsyncClient(timeout=settings.timeout, follow_redirects=False,
                                         headers={"User-Agent": USER_AGENT})

    def request(self, alert: Alert, now: float | None = None) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one delivery (signature included)."""
        fmt = self.settings.format
        extra: dict[str, str] = {}
        if fmt == "ntfy":
            text, extra = ntfy_message(alert)
            body = text.encode("utf-8")
            content_type = "text/plain; charset=utf-8"
        else:
            if fmt == "discord":
                data: dict[str, Any] = discord_message(alert)
            elif fmt == "pagerduty":
                data = pagerduty_event(alert, self.routing_key or "")
            else:
                data = alert.payload()
            body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            content_type = "application/json"
        headers = {
            **self.headers,
            **extra,
            "Content-Type": content_type,
            IDEMPOTENCY_HEADER: alert.id,
            "X-Watchdog-Event": alert.event,
            "X-Watchdog-Schema": str(alert.schema_version),
        }
        if self.signing:
            stamp = str(int(now if now is not None else time.time()))
            headers[TIMESTAMP_HEADER] = stamp
            headers[SIGNATURE_HEADER] = "sha256=" + sign(self.signing, stamp, body)
        return body, headers

    async def send(self, alert: Alert) -> None:
        body, headers = self.request(alert)
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise _connection_error(exc) from None
        if 200 <= response.status_code < 300:
            return
        raise http_error(response.status_code, response.headers, self.safe(response.text[:200]))

    async def aclose(self) -> None:
        await self._client.aclose()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """HMAC-SHA256 over ``timestamp + "." + body``, hex: what a receiver recomputes to verify."""
    return hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


# --- E-mail -------------------------------------------------------------------------------------


class EmailSink(_Base):
    """SMTP with STARTTLS, implicit TLS or none, optional AUTH; one thread per incident."""

    def __init__(self, settings: EmailAlert, environ: dict[str, str] | None = None) -> None:
        self.password = settings.password.resolve(environ).reveal() if settings.password else None
        super().__init__(settings, [self.password or ""])
        self.domain = settings.sender.rsplit("@", 1)[-1].strip() or "localhost"

    def message_id(self, key: str) -> str:
        """A Message-ID made from the idempotency key: a resend has the same one, so it can be deduped."""
        local = "".join(c if c.isalnum() or c in "-._" else "." for c in key)
        return f"<{local}@{self.domain}>"

    def message(self, alert: Alert) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = ("Re: " if alert.event not in ("opened", "test") else "") + email_subject(alert)
        msg["From"] = self.settings.sender
        msg["To"] = ", ".join(self.settings.recipients)
        msg["Date"] = email.utils.format_datetime(alert.at)
        msg["Message-ID"] = self.message_id(alert.id)
        if alert.incident_id is not None and alert.event != "opened":
            root = self.message_id(alert_key(alert.host, alert.incident_id, "opened"))
            msg["In-Reply-To"] = root
            msg["References"] = root
        msg["X-Watchdog-Event"] = alert.event
        msg["X-Watchdog-Severity"] = alert.severity
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(email_text(alert))
        msg.add_alternative(email_html(alert), subtype="html")
        return msg

    async def send(self, alert: Alert) -> None:
        message = self.message(alert)
        await asyncio.to_thread(self._send, message)

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.settings.ca_file or None)

    def _send(self, message: EmailMessage) -> None:
        s = self.settings
        try:
            if s.security == "tls":
                client: smtplib.SMTP = smtplib.SMTP_SSL(s.smtp_host, s.smtp_port, timeout=s.timeout,
                                                        context=self._context())
            else:
                client = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.timeout)
            with client:
                client.ehlo()
                if s.security == "starttls":
                    client.starttls(context=self._context())
                    client.ehlo()
                if s.username and self.password is not None:
                    client.login(s.username, self.password)
                client.send_message(message)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"SMTP {exc.smtp_code} authentication failed for user {s.username}",
                                temporary=True) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise DeliveryError(f"SMTP server does not support it: {self.safe(str(exc))[:120]}",
                                temporary=True) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            temporary = all(400 <= c < 500 for c in codes)
            raise DeliveryError(f"SMTP recipients refused ({', '.join(map(str, codes))})",
                                temporary=temporary) from None
        except smtplib.SMTPResponseException as exc:
            temporary = 400 <= exc.smtp_code < 500
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            raise DeliveryError(f"SMTP {exc.smtp_code} {self.safe(text)[:120]}", temporary=temporary) from None
        except smtplib.SMTPServerDisconnected:
            raise DeliveryError("SMTP server disconnected", temporary=True) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise _connection_error(exc) from None


# --- Apprise ------------------------------------------------------------------------------------


class AppriseSink(_Base):
    """The long tail of services through Apprise (optional extra); its URLs hold tokens."""

    def __init__(self, settings: AppriseAlert, environ: dict[str, str] | None = None) -> None:
        self.urls = [u.resolve(environ).reveal() for u in settings.urls]
        super().__init__(settings, self.urls)

    async def send(self, alert: Alert) -> None:
        try:
            import apprise

            # Apprise logs service URLs (which hold the tokens) at its debug/info levels: silence it.
            quiet = logging.getLogger("apprise")
            quiet.setLevel(logging.CRITICAL + 10)
            quiet.propagate = False
        except ImportError:
            raise DeliveryError("the apprise sink needs the [apprise] extra (pip install apprise)",
                                temporary=True) from None
        from watchdog.notify.compose import lines

        body = "\n".join(f"{k}: {v}" for k, v in lines(alert))
        kind = {"critical": apprise.NotifyType.FAILURE, "warning": apprise.NotifyType.WARNING}.get(
            alert.severity, apprise.NotifyType.INFO)
        if alert.event == "resolved":
            kind = apprise.NotifyType.SUCCESS

        def send() -> bool:
            sender = apprise.Apprise()
            for url in self.urls:
                if not sender.add(url):
                    raise DeliveryError("an apprise URL is not understood by apprise", temporary=False)
            return bool(sender.notify(body=body, title=alert.headline, notify_type=kind))

        if not await asyncio.to_thread(send):
            raise DeliveryError("apprise reported a failed delivery", temporary=True)


__all__ = ["DeliveryError", "SecretError", "Sink", "build_sink", "retry_after", "sign"]
