"""Machine traffic in e-mail: the model file's ``machine_traffic`` section.

E-mail security gateways (Proofpoint, Mimecast, Barracuda, Microsoft Safe Links) fetch every link
of a message seconds after it is delivered, and Apple Mail Privacy Protection downloads every
image, the open pixel included, through Apple's proxy when the message reaches the device: both
look like opens and clicks. The section says how to tell them from a person and what they score::

    machine_traffic:
      points: 0                                  # a machine event earns its rule's points x this
      click_all_links: {links: 3, within: 10s}   # 3+ distinct links of one message within 10 s
      click_before_open: true                    # a click before the message's delivery or first open
      click_within: 5s                           # a click within 5 s of its delivery or first open
      proxy_opens: {user_agents: ["Mozilla/5.0*AppleWebKit*(KHTML, like Gecko)"]}   # within: unset = any
      patterns: [{field: user_agent, op: matches, value: "(?i)barracuda|mimecast|proofpoint"}]
      events: {delivered: [Email Delivered], opened: [Email Opened], clicked: [Email Link Clicked]}
      message_key: [email_id, campaign_id]       # the properties naming the message, first present

A signal set to ``null`` (or ``false``) is off. How a verdict is reached from a contact's e-mail
facts, in event time and whatever their arrival order, is :mod:`scorestream.machine`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import translate
from typing import Any

from scorestream.errors import ModelError
from scorestream.events import Event
from scorestream.rules.common import Predicate, parse_duration_ms, parse_number, str_set

KEYS = (
    "points",
    "events",
    "message_key",
    "click_all_links",
    "click_before_open",
    "click_within",
    "proxy_opens",
    "patterns",
)
DELIVERED, OPENED, CLICKED = "d", "o", "c"
PROXY, PATTERN = "p", "m"

DEFAULT_EVENTS = {
    "delivered": frozenset({"Email Delivered"}),
    "opened": frozenset({"Email Opened"}),
    "clicked": frozenset({"Email Link Clicked"}),
}


@dataclass(frozen=True, slots=True)
class MachineRules:
    """The parsed ``machine_traffic`` section (see the module docstring)."""

    factor: float = 0.0
    kinds: Mapping[str, str] | None = None  # event name -> DELIVERED, OPENED or CLICKED
    message_keys: tuple[str, ...] = ("email_id", "campaign_id")
    all_links: int | None = 3
    all_links_within_ms: int = 10_000
    before_open: bool = True
    click_within_ms: int | None = 5_000
    proxy_agents: re.Pattern[str] | None = None
    proxy_within_ms: int | None = None
    patterns: tuple[Predicate, ...] = ()

    @classmethod
    def parse(cls, raw: object) -> MachineRules | None:
        """The ``machine_traffic`` section, or None when the model has none."""
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise ModelError("'machine_traffic' must be a mapping such as {points: 0, click_within: 5s}")
        unknown = set(raw) - set(KEYS)
        if unknown:
            raise ModelError(f"machine_traffic: unknown key(s) {sorted(unknown)} (known: {list(KEYS)})")
        links, links_within = _all_links(raw.get("click_all_links", {"links": 3, "within": "10s"}))
        agents, agents_within = _proxy(raw.get("proxy_opens"))
        patterns = raw.get("patterns") or []
        if not isinstance(patterns, list):
            raise ModelError("machine_traffic.patterns: expected a list of predicates")
        within = raw.get("click_within", "5s")
        within_ms = None if within in (None, False) else parse_duration_ms(within, "machine_traffic.click_within")
        before = raw.get("click_before_open", True)
        if not isinstance(before, bool):
            raise ModelError(f"machine_traffic.click_before_open: expected true or false, got {before!r}")
        return cls(
            factor=parse_number(raw.get("points", 0), "machine_traffic.points", minimum=0.0),
            kinds=_kinds(raw.get("events")),
            message_keys=_message_keys(raw.get("message_key")),
            all_links=links,
            all_links_within_ms=links_within,
            before_open=before,
            click_within_ms=within_ms,
            proxy_agents=agents,
            proxy_within_ms=agents_within,
            patterns=tuple(Predicate.parse(p, f"machine_traffic.patterns[{i}]") for i, p in enumerate(patterns)),
        )

    def kind_of(self, event: Event) -> str | None:
        """DELIVERED, OPENED or CLICKED for an e-mail event of the section's names, else None."""
        if event.kind != "track" or event.event is None:
            return None
        kinds = self.kinds if self.kinds is not None else _DEFAULT_KINDS
        return kinds.get(event.event)

    def message_key(self, properties: Mapping[str, Any]) -> str:
        """The message the event is about: the first of ``message_key`` present ("" none)."""
        for name in self.message_keys:
            value = properties.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                return f"{name}:{value}"
        return ""

    def agent_of(self, event: Event, kind: str) -> str:
        """PATTERN when one of ``patterns`` holds for the event, PROXY for an open from a privacy
        proxy's user agent, else ""."""
        if self.patterns:
            source = {
                "user_agent": event.user_agent,
                "event": event.event,
                "channel": event.channel,
                "properties": event.properties,
            }
            if any(p.test(source) for p in self.patterns):
                return PATTERN
        agents = self.proxy_agents
        if kind == OPENED and agents is not None and event.user_agent and agents.match(event.user_agent):
            return PROXY
        return ""


_DEFAULT_KINDS = {
    name: kind
    for kind, key in ((DELIVERED, "delivered"), (OPENED, "opened"), (CLICKED, "clicked"))
    for name in DEFAULT_EVENTS[key]
}


def _kinds(raw: object) -> Mapping[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or set(raw) - set(DEFAULT_EVENTS):
        raise ModelError("machine_traffic.events: expected {delivered: [...], opened: [...], clicked: [...]}")
    out: dict[str, str] = {}
    for key, kind in (("delivered", DELIVERED), ("opened", OPENED), ("clicked", CLICKED)):
        names = str_set(raw.get(key), f"machine_traffic.events.{key}")
        for name in names if names is not None else DEFAULT_EVENTS[key]:
            if name in out:
                raise ModelError(f"machine_traffic.events: {name!r} is named twice")
            out[name] = kind
    return out


def _message_keys(raw: object) -> tuple[str, ...]:
    if raw is None:
        return ("email_id", "campaign_id")
    str_set(raw, "machine_traffic.message_key")  # a name or a list of names
    return (raw,) if isinstance(raw, str) else tuple(raw)  # type: ignore[arg-type]


def _all_links(raw: object) -> tuple[int | None, int]:
    if raw in (None, False):
        return None, 0
    if not isinstance(raw, Mapping) or set(raw) - {"links", "within"}:
        raise ModelError("machine_traffic.click_all_links: expected {links: 3, within: 10s} or null")
    links = raw.get("links", 3)
    if isinstance(links, bool) or not isinstance(links, int) or links < 2:
        raise ModelError(f"machine_traffic.click_all_links.links: an integer of at least 2, got {links!r}")
    return links, parse_duration_ms(raw.get("within", "10s"), "machine_traffic.click_all_links.within")


def _proxy(raw: object) -> tuple[re.Pattern[str] | None, int | None]:
    if raw in (None, False):
        return None, None
    if not isinstance(raw, Mapping) or set(raw) - {"user_agents", "within"}:
        raise ModelError("machine_traffic.proxy_opens: expected {user_agents: [globs], within: 2s} or null")
    globs = raw.get("user_agents")
    if not isinstance(globs, list) or not globs or not all(isinstance(g, str) and g for g in globs):
        raise ModelError("machine_traffic.proxy_opens.user_agents: expected a non-empty list of glob patterns")
    within = raw.get("within")
    within_ms = None if within is None else parse_duration_ms(within, "machine_traffic.proxy_opens.within")
    return re.compile("|".join(f"(?:{translate(g)})" for g in globs)), within_ms
