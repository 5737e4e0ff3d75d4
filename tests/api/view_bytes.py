"""What the worker sends to ``<app>.views`` for a contact state (``streams/views.py``): the API
tests feed their replicas with it, or take a ready replica of a few contacts' events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from api.replica import Replica, WorkerStatus
from kafka_io.clients import KafkaConnection
from schemas.view import encode_view
from scorestream import ContactState, Event, Model, apply_events
from scorestream.view import view_of


def view_bytes(state: ContactState, model: Model) -> bytes:
    """The view record of ``state`` as the worker running ``model`` sends it."""
    return encode_view(view_of(state, model))


def ready_replica(model: Model, contacts: Mapping[str, Sequence[Event]], at_ms: int) -> Replica:
    """A contacts replica (no broker) that has read the views of ``contacts`` (contact id -> its
    events) and caught up, with a worker of ``model`` ready since ``at_ms``: the API answers."""
    r = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    for contact_id, events in contacts.items():
        r.apply(contact_id.encode(), view_bytes(apply_events(None, contact_id, list(events), model), model))
    r.caught_up.set()
    r.workers["w1"] = WorkerStatus(state="ready", model=model.version, at_ms=at_ms)
    return r
