"""The pure-Python ceiling: decode + route + the core fold, batch by batch, with no Kafka at all.

It runs the same functions as the worker's agents, with the same codecs between stages and a dict
standing in for each table (encoded values, as RocksDB would hold them).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from schemas.events import InvalidMessage, decode
from schemas.model_file import load_model
from schemas.state import Batch, Envelope, Item, decode_batch, decode_link, decode_state, encode, envelope_for
from scorestream import Model
from scorestream.contact import Absorb, step
from scorestream.identity import resolve, routing_key


class PurePipeline:
    def __init__(self, model: Model) -> None:
        self.model = model
        self.links: dict[str, bytes] = {}
        self.contacts: dict[str, bytes] = {}

    def run(self, records: list[tuple[str, bytes]], batch: int = 5000) -> None:
        for start in range(0, len(records), batch):
            identity_items: list[Item] = []
            contact_items: list[Item] = []
            for channel, raw in records[start : start + batch]:
                try:
                    event = decode(raw, channel, 0)
                except InvalidMessage:
                    continue
                where, key = routing_key(event)
                (identity_items if where == "identity" else contact_items).append(
                    Item(key=key, env=Envelope(kind="event", event=event))
                )
            for item in decode_batch(encode(Batch(items=identity_items))).items:
                raw_link = self.links.get(item.key)
                link = decode_link(raw_link) if raw_link is not None else None
                assert item.env.event is not None
                new, routed = resolve(link, item.key, item.env.event)
                if new is not link:
                    self.links[item.key] = encode(new)
                for r in routed:
                    contact_items.append(Item(key=r.key, env=envelope_for(r.merge or r.event, 0)))  # type: ignore[arg-type]
            pending = decode_batch(encode(Batch(items=contact_items))).items
            while pending:
                inbox: dict[str, list[Any]] = defaultdict(list)
                for item in pending:
                    env = item.env
                    inbox[item.key].append(env.event or env.merge or Absorb(env.state))  # type: ignore[arg-type]
                pending = []
                for key, messages in inbox.items():
                    raw_state = self.contacts.get(key)
                    state, out = step(decode_state(raw_state) if raw_state else None, key, messages, self.model)
                    if state is not None:
                        self.contacts[key] = encode(state)
                    pending.extend(Item(key=o.key, env=envelope_for(o.item, 1)) for o in out)


def measure(records: list[tuple[str, bytes]]) -> dict[str, float]:
    pipeline = PurePipeline(load_model())
    started = time.perf_counter()
    pipeline.run(records)
    elapsed = time.perf_counter() - started
    return {"events": len(records), "seconds": round(elapsed, 2), "events_per_s": round(len(records) / elapsed)}
