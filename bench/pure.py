"""The pure-Python ceiling: decode + route + the core fold, batch by batch, with no Kafka at all.

It runs the same functions as the worker's agents, with the same codecs between stages and a dict
standing in for each table (encoded values, as RocksDB would hold them).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from bench.harness import worker_gc
from schemas.events import InvalidMessage, decode
from schemas.model_file import load_model
from schemas.state import (
    Envelope,
    Item,
    RawBatch,
    RawItem,
    decode_batch,
    decode_heads,
    decode_link,
    decode_state,
    encode,
    envelope_for,
    raw_item,
)
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
            identity_items: list[RawItem] = []
            contact_items: list[RawItem] = []
            for channel, raw in records[start : start + batch]:
                try:
                    event = decode(raw, channel, 0)
                except InvalidMessage:
                    continue
                where, key = routing_key(event)
                (identity_items if where == "identity" else contact_items).append(
                    raw_item(key, Envelope(kind="event", event=event))
                )
            for key, env, head in decode_heads(encode(RawBatch(items=identity_items))):
                raw_link = self.links.get(key)
                link = decode_link(raw_link) if raw_link is not None else None
                assert head.event is not None
                new, routed = resolve(link, key, head.event)
                if new is not link:
                    self.links[key] = encode(new)
                for r in routed:
                    contact_items.append(raw_item(r.key, env if r.merge is None else envelope_for(r.merge, 0)))
            pending: list[Item] = decode_batch(encode(RawBatch(items=contact_items))).items
            while pending:
                inbox: dict[str, list[Any]] = defaultdict(list)
                for item in pending:
                    envelope = item.env
                    inbox[item.key].append(envelope.event or envelope.merge or Absorb(envelope.state))  # type: ignore[arg-type]
                pending = []
                for key, messages in inbox.items():
                    raw_state = self.contacts.get(key)
                    state, out = step(decode_state(raw_state) if raw_state else None, key, messages, self.model)
                    if state is not None:
                        self.contacts[key] = encode(state)
                    pending.extend(Item(key=o.key, env=envelope_for(o.item, 1)) for o in out)


def measure(records: list[tuple[str, bytes]]) -> dict[str, float]:
    pipeline = PurePipeline(load_model())
    with worker_gc():
        started = time.perf_counter()
        pipeline.run(records)
        elapsed = time.perf_counter() - started
    return {"events": len(records), "seconds": round(elapsed, 2), "events_per_s": round(len(records) / elapsed)}
