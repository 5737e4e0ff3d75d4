"""The accounts stage: contacts report to their account, the account folds its members' reports.

contacts (after each write) --AccountFeed--> <app>.accounts  (key account id; one record per
partition per batch: a :class:`~schemas.accounts.MemberBatch`)
    accounts: table account id -> AccountState (core: accounts.apply_member_updates)
        └── account.stage_changed ──► triggers (JSON)

Updates are snapshots, so redelivery and replays are harmless: the account keeps each member's
latest one (:func:`scorestream.accounts.snapshot_key`), and a trigger's id is stable.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator
from typing import Any

import faust

from schemas.accounts import MemberBatch, decode_account, decode_members, encode
from schemas.events import deadletter_headers
from schemas.settings import Settings
from scorestream import ContactState, Model
from scorestream.accounts import AccountState, MemberUpdate, apply_member_updates, member_updates
from scorestream.triggers import make_trigger
from streams.app import Wiring
from streams.transport import record_ms, records_of

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
        from streams.agents import partition_for  # agents imports this module

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

    def flush(self) -> None:
        from streams.agents import MAX_ITEMS_PER_RECORD

        for partition, queued in self.pending.items():
            items = sorted(queued.values(), key=lambda u: (u.account_id, u.contact_id))
            for start in range(0, len(items), MAX_ITEMS_PER_RECORD):
                chunk = items[start : start + MAX_ITEMS_PER_RECORD]
                self.topic.send_soon(
                    key=chunk[0].account_id.encode(), value=encode(MemberBatch(items=chunk)), partition=partition
                )
        self.pending.clear()


def register_accounts(w: Wiring, settings: Settings, model: Model) -> AccountFeed:
    """Attach the ``accounts`` agent; return the feed the contacts stage reports through."""

    def dead(record: Any, reason: str, detail: str) -> None:
        log.warning("dead-letter %s[%s] %s: %s: %s", record.topic, record.partition, record.offset, reason, detail)
        headers = deadletter_headers(reason, detail, record.topic, record.partition, record.offset)
        w.send_dead(record.key, record.value or b"", headers, record_ms(record))

    @w.app.agent(w.accounts_topic, name="accounts")
    async def accounts(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        table = w.accounts
        async for batch_event in stream.events():
            inbox: dict[str, list[MemberUpdate]] = defaultdict(list)
            for record in records_of(batch_event):
                try:
                    batch = decode_members(record.value or b"")
                except ValueError as exc:
                    dead(record, "internal_decode", str(exc))
                    continue
                for update in batch.items:
                    inbox[update.account_id].append(update)
            for account_id, updates in inbox.items():
                try:
                    raw = table.get(account_id)
                    before: AccountState | None = decode_account(raw) if raw is not None else None
                    state, changes = apply_member_updates(before, account_id, updates, model)
                except Exception as exc:  # a bug or an unreadable state must not cost the batch
                    log.exception("account %s: member updates parked on the dead-letter topic", account_id)
                    message = batch_event.message
                    headers = deadletter_headers(
                        "processing_error", repr(exc), message.topic, message.partition, message.offset
                    )
                    w.send_dead(account_id.encode(), encode(MemberBatch(items=updates)), headers, record_ms(message))
                    continue
                encoded = encode(state)
                if encoded != raw:  # a redelivered batch changes nothing: no changelog record
                    table[account_id] = encoded
                for change in changes:
                    trigger = make_trigger(
                        "account.stage_changed",
                        at_ms=change.at_ms,
                        model_version=model.version,
                        account_id=account_id,
                        before=change.before,
                        after=change.after,
                        rule=change.rule,
                    )
                    w.send_trigger(account_id.encode(), trigger)
            yield None

    return AccountFeed(w, model, settings.partitions)
