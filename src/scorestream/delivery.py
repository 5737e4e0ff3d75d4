"""Webhook delivery rules: what a subscriber is sent, how it is signed, when it is retried.

Pure: the dispatcher (``dispatcher/service.py``) does the I/O and the API (``api/webhooks.py``) the
bookkeeping; both take their decisions here.

- Payloads and signatures follow the Standard Webhooks specification
  (https://www.standardwebhooks.com): body ``{"type", "timestamp", "data"}``, headers
  ``webhook-id`` (the delivery id, the same on every attempt: receivers deduplicate on it),
  ``webhook-timestamp`` (seconds, the attempt's time) and ``webhook-signature``
  (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``, space-separated when several secrets
  sign during a rotation).
- A subscription wants a trigger when its type is in the subscription's ``events`` (``*``: every
  type) and every filter it sets holds (see :func:`wants`).
- A failed attempt is retried after the schedule's next delay (or the receiver's ``Retry-After``),
  with jitter; after the last one the delivery is dead-lettered. HTTP 410 means the receiver is
  gone: the subscription is disabled.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from scorestream.triggers import TYPES

# The Standard Webhooks example schedule: the delays after the first attempt, in seconds
# (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h): ten attempts over some three days.
DEFAULT_SCHEDULE_S: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
JITTER = 0.1  # each delay is drawn from [0.9, 1.1] x the scheduled one
MAX_RETRY_AFTER_S = 86400.0
TEST_TYPE = "webhook.test"
SECRET_PREFIX = "whsec_"  # noqa: S105 (the prefix, not a secret)

RETRY_AFTER_STATUSES = (429, 503)  # answers whose Retry-After header is honoured

Outcome = Literal["success", "retry", "gone"]


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a signing secret starts with 'whsec_'")
    return base64.b64decode(secret[len(SECRET_PREFIX) :])


def new_secret(random_bytes: bytes) -> str:
    """A ``whsec_`` secret from 24-64 random bytes (the caller draws them)."""
    if not 24 <= len(random_bytes) <= 64:
        raise ValueError("a signing secret needs 24 to 64 random bytes")
    return SECRET_PREFIX + base64.b64encode(random_bytes).decode()


def sign(secret: str, msg_id: str, timestamp_s: int, body: bytes) -> str:
    """``v1,<signature>`` of one attempt: HMAC-SHA256 over ``id.timestamp.body``, base64."""
    signed = f"{msg_id}.{timestamp_s}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: Iterable[str], msg_id: str, timestamp_s: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one signature per active secret, space-separated."""
    return " ".join(sign(s, msg_id, timestamp_s, body) for s in secrets)


def headers(secrets: Sequence[str], msg_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    """Every header an attempt carries besides the transport's own."""
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": signature_header(secrets, msg_id, timestamp_s, body),
    }


def delivery_id(trigger_id: str, subscription_id: str) -> str:
    """The ``webhook-id`` of a trigger's delivery to a subscription: stable across retries,
    redeliveries of the trigger and restarts of the dispatcher."""
    return "msg_" + hashlib.sha256(f"{trigger_id}\x00{subscription_id}".encode()).hexdigest()[:24]


def iso(ms: int) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-23T10:00:00.000Z``."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def payload(kind: str, at_ms: int, data: Mapping[str, Any]) -> bytes:
    """The body of a delivery: ``{"type", "timestamp", "data"}``; the timestamp is when the change
    happened (event time), the same on every attempt."""
    return json.dumps({"type": kind, "timestamp": iso(at_ms), "data": data}, separators=(",", ":")).encode()


def trigger_payload(trigger: Mapping[str, Any]) -> bytes:
    return payload(str(trigger["type"]), int(trigger["at_ms"]), trigger)


def trigger_stage(trigger: Mapping[str, Any]) -> str | None:
    """The stage a trigger leaves its subject in: ``after`` of a stage change, ``after.stage`` of a
    disqualification or a timer; None for scores and segments."""
    after = trigger.get("after")
    if trigger.get("type") in ("stage.changed", "account.stage_changed"):
        return after if isinstance(after, str) else None
    if isinstance(after, Mapping) and isinstance(after.get("stage"), str):
        return str(after["stage"])
    return None


def trigger_segment(trigger: Mapping[str, Any]) -> str | None:
    """The RFM segment a ``rfm.segment_changed`` moves to; None for other types."""
    after = trigger.get("after")
    return after if trigger.get("type") == "rfm.segment_changed" and isinstance(after, str) else None


def trigger_group(trigger: Mapping[str, Any]) -> str | None:
    """The score group a trigger is of: the ``group`` a group's ``score.threshold_crossed`` carries;
    None for the overall score's and for other types."""
    group = trigger.get("group")
    return group if isinstance(group, str) and group else None


def known_events(events: Iterable[str]) -> list[str]:
    """The subscribed event types, sorted and once each; every one a trigger type or ``*``."""
    unknown = sorted(set(events) - {*TYPES, "*"})
    if unknown:
        raise ValueError(f"unknown event types {unknown}; use '*' or any of {', '.join(TYPES)}")
    return sorted(set(events))


@dataclass(frozen=True, slots=True)
class Filter:
    """What a subscription wants. ``events``: trigger types (``*`` for all). ``stages``,
    ``segments``, ``models``, ``groups``: when set, a trigger must carry that field and its value
    must be listed (a stage filter lets through only triggers that leave a contact or account in
    one of those stages; a model is matched by name or by full ``name@hash`` version; a group
    filter only the threshold crossings of those score groups)."""

    events: frozenset[str]
    stages: frozenset[str] | None = None
    segments: frozenset[str] | None = None
    models: frozenset[str] | None = None
    groups: frozenset[str] | None = None

    @classmethod
    def of(
        cls,
        events: Iterable[str],
        stages: Iterable[str] | None = None,
        segments: Iterable[str] | None = None,
        models: Iterable[str] | None = None,
        groups: Iterable[str] | None = None,
    ) -> Filter:
        events = known_events(events)

        def opt(values: Iterable[str] | None) -> frozenset[str] | None:
            return None if values is None else frozenset(values)

        return cls(frozenset(events), opt(stages), opt(segments), opt(models), opt(groups))


def wants(flt: Filter, trigger: Mapping[str, Any]) -> bool:
    """Whether a subscription with this filter is sent this trigger."""
    if "*" not in flt.events and trigger.get("type") not in flt.events:
        return False
    if flt.stages is not None and trigger_stage(trigger) not in flt.stages:
        return False
    if flt.segments is not None and trigger_segment(trigger) not in flt.segments:
        return False
    if flt.groups is not None and trigger_group(trigger) not in flt.groups:
        return False
    if flt.models is not None:
        version = str(trigger.get("model_version", ""))
        if version not in flt.models and version.split("@", 1)[0] not in flt.models:
            return False
    return True


def outcome(status_code: int) -> Outcome:
    """What an HTTP answer means: 2xx delivered, 410 the receiver is gone (disable), anything else
    retried. Retried on purpose beyond 429 and 5xx: a 401/404 is usually a receiver's deploy
    mistake, fixed within the retry window, and dropping would lose the notification."""
    if 200 <= status_code < 300:
        return "success"
    return "gone" if status_code == 410 else "retry"


def retry_delay_s(
    schedule: Sequence[float], attempts_made: int, draw: float, retry_after_s: float | None = None
) -> float | None:
    """Seconds until the next attempt after ``attempts_made`` failed ones, or None when the schedule
    is spent (dead-letter). ``draw`` is a uniform number in [0, 1) for the jitter (the caller draws
    it); a receiver's ``Retry-After`` replaces the scheduled delay (capped at a day)."""
    if attempts_made < 1:
        raise ValueError("attempts_made counts the failed attempts so far (>= 1)")
    if attempts_made > len(schedule):
        return None
    if retry_after_s is not None and retry_after_s >= 0:
        return min(retry_after_s, MAX_RETRY_AFTER_S)
    return float(schedule[attempts_made - 1]) * (1.0 - JITTER + 2.0 * JITTER * draw)


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait: delta-seconds or an HTTP date (None when
    absent or unreadable; a date in the past is 0)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_s)


def should_disable(failing_since_ms: int | None, now_ms: int, disable_after_ms: int) -> bool:
    """An endpoint failing without a single success for ``disable_after_ms`` is disabled."""
    return failing_since_ms is not None and now_ms - failing_since_ms >= disable_after_ms


# IPv6 prefixes that wrap an IPv4 address at a known place: a connection to one reaches that IPv4
# address (through the dual-stack socket, a NAT64 gateway or a 6to4 relay), judged as such.
_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # RFC 4291: ::ffff:a.b.c.d
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix: 64:ff9b::a.b.c.d
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")  # RFC 3056: 2002:aabb:ccdd::/48 is a.b.c.d's
# IPv6 prefixes refused outright: deprecated, or translating/tunnelling to an IPv4 address that
# cannot be read from the address alone.
_REFUSED_V6 = (
    (ipaddress.IPv6Network("::/96"), "IPv4-compatible, deprecated"),  # RFC 4291: ::a.b.c.d
    (ipaddress.IPv6Network("::ffff:0:0:0/96"), "SIIT IPv4-translated"),  # RFC 2765: ::ffff:0:a.b.c.d
    (ipaddress.IPv6Network("64:ff9b:1::/48"), "local-use NAT64"),  # RFC 8215: the network's own embedding
    (ipaddress.IPv6Network("2001::/32"), "Teredo"),  # RFC 4380: tunnels to an obfuscated IPv4 client
    (ipaddress.IPv6Network("fec0::/10"), "site-local, deprecated"),  # RFC 3879: deprecated, still routed internally
)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, well-known-prefix NAT64 or 6to4 address reaches."""
    if ip in _IPV4_MAPPED or ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
    return None


def address_refusal(address: str) -> str | None:
    """Why a webhook may not connect to this IP address (None: it may). Anything not globally
    routable is refused: loopback, private (RFC 1918, fc00::/7), link-local (the cloud metadata
    address 169.254.169.254 is one), shared (100.64/10), multicast, reserved, unspecified.

    IPv6 addresses that wrap an IPv4 address at a known place (IPv4-mapped ``::ffff:0:0/96``,
    NAT64's well-known ``64:ff9b::/96``, 6to4 ``2002::/16``) are judged by that IPv4 address, which
    is where a connection goes. Refused outright, whatever they embed: IPv4-compatible
    ``::/96``, SIIT ``::ffff:0:0:0/96``, local-use NAT64 ``64:ff9b:1::/48``, Teredo ``2001::/32``
    and site-local ``fec0::/10``."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner = address_refusal(str(embedded))
            return None if inner is None else f"{inner} (embedded in {ip})"
        if not (ip.is_loopback or ip.is_unspecified):
            for network, name in _REFUSED_V6:
                if ip in network:
                    return f"{ip} is in {network} ({name})"
    if ip.is_global and not ip.is_multicast:
        return None
    kind = next(
        (
            name
            for name, hit in (
                ("loopback", ip.is_loopback),
                ("link-local", ip.is_link_local),
                ("private", ip.is_private),
                ("multicast", ip.is_multicast),
                ("unspecified", ip.is_unspecified),
            )
            if hit
        ),
        "non-public",
    )
    return f"{ip} is a {kind} address"
