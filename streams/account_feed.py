"""The accounts stage: contacts report to their account, the account folds its members' reports.

contacts (after each write) --AccountFeed--> <app>.accounts  (key account id; one record per
partition per batch: a :class:`~schemas.accounts.MemberBatch`)
    accounts: table account id -> AccountState (core: accounts.apply_member_updates)
        └── account.stage_changed ──► triggers (JSON)

Updates are snapshots, so redelivery and replays are harmless: the account keeps each member's
latest one (:func:`scorestream.accounts.snapshot_key`), and a trigger's id is stable. An erased
contact (a regulation's erase order) sends an ``erased`` update to each of its accounts
(:meth:`AccountFeed.erase`): the account drops the member entirely and refuses its stale snapshots.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator
from typing import Any

import faust

from kafka_io.partitioner import partition_for
from schemas.accounts import decode_account, decode_members, encode, member_batch
from schemas.settings import Settings
from scorestream import ContactState, Model
from scorestream.accounts import AccountState, MemberUpdate, apply_member_updates, erased_updates, member_updates
from scorestream.triggers import make_trigger
from streams.app import Wiring
from streams.deadletter import batch_error, dead_letter
from streams.sends import BatchedSends
from streams.transport import MAX_RECORD_BYTES, TooLarge, encode_chunks, records_of
from telemetry import metrics

log = logging.getLogger(__name__)
SENT_MEMORY = 100_000
"""(contact, account) pairs whose last sent update the feed remembers (to skip repeats)."""


class AccountFeed:
    """Queues contacts' member updates; sends one record per partition per batch.

    ``add`` is called with every contact state the contacts stage writes; an update identical to
    the last one sent for that contact and account is skipped (most events of a B2B contact
    change its engagement, but identify calls, non-scoring events and contacts without an
    account send nothing).
    """

    def __init__(self, w: Wiring, model: Model, partitions: int, memory: int = SENT_MEMORY) -> None:
        self.w = w
        self.topic = w.accounts_topic
        self.model = model
        self.partitions = partitions
        self.partition_for = partition_for
        self.memory = memory
        self.sent: OrderedDict[tuple[str, str], MemberUpdate] = OrderedDict()
        self.pending: dict[int, dict[tuple[str, str], MemberUpdate]] = defaultdict(dict)

    def add(self, state: ContactState) -> None:
        if state.account_id is None and not state.groups:
            return
        if state.journey is not None and state.journey.deferred_since is not None:
            return  # its lifecycle walk was put off for a moment: the walk's step reports it
        for update in member_updates(state, self.model):
            key = (update.contact_id, update.account_id)
            last = self.sent.get(key)
            if last == update or (last is not None and not last.member and not update.member):
                continue  # unchanged, or already told it left
            self.sent[key] = update
            self.sent.move_to_end(key)
            if len(self.sent) > self.memory:
                self.sent.popitem(last=False)
            partition = self.partition_for(update.account_id.encode(), self.partitions)
            self.pending[partition][key] = update

    def erase(self, state: ContactState) -> None:
        """A regulation erased the contact ``state`` was: each of its accounts is told to drop it
        (queued with the batch's other updates; one for the same contact and account queued
        earlier in the batch is replaced), and the last updates sent for it are forgotten."""
        for update in erased_updates(state):
            key = (update.contact_id, update.account_id)
            self.sent.pop(key, None)
            partition = self.partition_for(update.account_id.encode(), self.partitions)
            self.pending[partition][key] = update

    def flush(self, source: Any = None) -> None:
        """Send what was queued: one record per partition (per 1000 updates). An update that cannot
        be written is dead-lettered alone, with the coordinates of ``source`` (the contacts record
        its batch was made from), and the others are sent."""
        from streams.agents import MAX_ITEMS_PER_RECORD

        def refuse(update: MemberUpdate, exc: Exception) -> None:
            if source is None:
                log.error("member update %s of account %s not sent: %s", update.contact_id, update.account_id, exc)
                return
            try:
                value = encode(member_batch([update]))
            except Exception:
                value = repr(update).encode(errors="replace")
            dead_letter(self.w, source, value, "unsendable", str(exc), exc, update.account_id.encode())

        sends = BatchedSends.for_topic(self.topic)  # with the batch's other records (streams.sends)
        for partition, queued in self.pending.items():
            items = sorted(queued.values(), key=lambda u: (u.account_id, u.contact_id))
            for chunk, value in encode_chunks(items, _encode_members, refuse, MAX_ITEMS_PER_RECORD):
                key = chunk[0].account_id.encode()
                if sends is not None:
                    sends.add(self.topic, key, value, partition=partition)
                else:
                    self.topic.send_soon(key=key, value=value, partition=partition)
        self.pending.clear()


def _encode_members(items: list[MemberUpdate]) -> bytes:
    return encode(member_batch(items))


def register_accounts(w: Wiring, settings: Settings, model: Model) -> AccountFeed:
    """Attach the ``accounts`` agent; return the feed the contacts stage reports through."""

    stage = metrics.Stage("accounts")

    @w.app.agent(w.accounts_topic, name="accounts")
    async def accounts(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for batch_event in stream.events():
            started = time.perf_counter()
            try:
                accounts_batch(batch_event)
            except Exception as exc:
                batch_error(w, "accounts", batch_event, exc)
            stage.batch(len(records_of(batch_event)), time.perf_counter() - started)
            yield None

    def accounts_batch(batch_event: Any) -> None:
        """One fetched batch: each account's updates folded at once, one account at a time; an
        account whose fold, encoding or writes fail has its updates dead-lettered (as a batch of
        them, replayable as is), and the others are applied."""
        table = w.accounts
        inbox: dict[str, list[MemberUpdate]] = defaultdict(list)
        source: dict[str, Any] = {}
        for record in records_of(batch_event):
            try:
                batch = decode_members(record.value or b"")
            except Exception as exc:
                dead_letter(w, record, None, "internal_decode", str(exc), exc)
                continue
            for update in batch.items:
                inbox[update.account_id].append(update)
                source.setdefault(update.account_id, record)
        for account_id, updates in inbox.items():
            try:
                raw = table.get(account_id)
                before: AccountState | None = decode_account(raw) if raw is not None else None
                state, changes = apply_member_updates(before, account_id, updates, model)
                encoded = encode(state)
                if len(encoded) + len(account_id) > MAX_RECORD_BYTES:
                    raise TooLarge(f"the account's state is {len(encoded)} bytes; a record holds {MAX_RECORD_BYTES}")
                triggers = [
                    make_trigger(
                        "account.stage_changed",
                        at_ms=change.at_ms,
                        model_version=model.version,
                        account_id=account_id,
                        before=change.before,
                        after=change.after,
                        rule=change.rule,
                    )
                    for change in changes
                ]
                for trigger in triggers:
                    w.send_trigger(account_id.encode(), trigger)
                if encoded != raw:  # a redelivered batch changes nothing: no changelog record
                    table[account_id] = encoded
            except Exception as exc:  # a bug or an unreadable state must not cost the batch
                log.exception("account %s: member updates parked on the dead-letter topic", account_id)
                try:
                    value = encode(member_batch(updates))
                except Exception:
                    value = None
                dead_letter(w, source[account_id], value, "processing_error", repr(exc), exc, account_id.encode())

    return AccountFeed(w, model, settings.partitions)
