"""An in-memory, single-process run of the worker's topology through the same core functions.

The end-to-end tests compare what the real worker serves over HTTP with what this reference
computes from the same events: identity routing (``resolve``) then the per-contact fold
(``step``), with messages queued FIFO as a single Kafka partition would keep them.
"""

from __future__ import annotations

from collections import deque

from scorestream import ContactState, Event, IdentityLink, Model
from scorestream.fold import Outgoing, step
from scorestream.identity import resolve, routing_key


class Reference:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.links: dict[str, IdentityLink | None] = {}
        self.contacts: dict[str, ContactState | None] = {}

    def feed(self, events: list[Event]) -> None:
        queue: deque[Outgoing] = deque()
        for event in events:
            where, key = routing_key(event)
            if where == "identity":
                link, routed = resolve(self.links.get(key), key, event)
                self.links[key] = link
                queue.extend(Outgoing(r.key, r.item) for r in routed)
            else:
                queue.append(Outgoing(key, event))
            self._drain(queue)

    def _drain(self, queue: deque[Outgoing]) -> None:
        while queue:
            message = queue.popleft()
            state, out, *_ = step(self.contacts.get(message.key), message.key, [message.item], self.model)
            self.contacts[message.key] = state
            queue.extend(out)

    def live(self) -> dict[str, ContactState]:
        """Contacts that were not merged away."""
        return {k: s for k, s in self.contacts.items() if s is not None and s.merged_into is None}
