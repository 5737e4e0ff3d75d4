"""Where an API process keeps the contact views it serves: on disk, shared by the processes of a host.

A :class:`ViewStore` holds key -> bytes (a contact's record as its topic carries it), two indexes
(anonymous id -> contact id, email -> contact id), a few named values (the writer's marker, the
workers' statuses) and the offsets of the topics it was filled from. Each index entry is also
listed under the contact it names (the ``owned`` family), so :meth:`ViewStore.forget` removes a
contact with every index entry still pointing to it (anonymous ids it no longer lists, an email
it changed), not only its view: an erased person leaves no id or email in the store. :class:`ViewStore` itself
keeps them in dicts (tests, tools); :class:`RocksViewStore` keeps them in RocksDB (rocksdict) under
``<data_dir>/api/<namespace>/``, so an API process's memory no longer grows with contacts: a
bounded block cache (``SCORESTREAM_API_CACHE_MB``) and memtables, whatever the count.

One writer per host and namespace, the others readers:

- the process that holds the ``flock`` on ``writer.lock`` is the **writer**: it follows the topics
  and applies each fetched batch of records as one RocksDB write batch, together with the offsets
  the batch reaches (:meth:`ViewStore.commit`), so a restarted writer resumes from its offsets
  instead of reading the topics from the beginning, and what it stored is never ahead of or behind
  those offsets (SIGKILL between two batches loses nothing: the next writer reads again from the
  stored offsets);
- every other process opens the directory as a RocksDB **secondary** and replays the writer's new
  writes (:meth:`RocksViewStore.catch_up`, a few tens of microseconds when nothing changed) every
  ``SCORESTREAM_API_CATCH_UP_MS``; it tries the lock once a second and, when the writer is gone
  (the kernel drops a dead process's ``flock``), reopens the directory as the writer and resumes
  from the stored offsets (:meth:`RocksViewStore.take_over`);
- the writer writes its token to the lock file and a marker under ``writer`` in the store
  (``caught_up`` false when it opens, true once it has read to the end offsets the topics had when
  it started): a reader is caught up when the marker of the writer that holds the lock says so.

Reads see only committed batches: the writer's follower applies a fetch without awaiting and
commits before it awaits again, so a request never sees half a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    ColumnFamily,
    DBCompressionType,
    Options,
    Rdict,
    WriteBatch,
)

from api.errors import ApiError
from kafka_io.clients import KafkaConnection
from kafka_io.reader import follow

log = logging.getLogger(__name__)

Role = Literal["memory", "writer", "secondary"]
ANONYMOUS, EMAIL, META = "anonymous", "email", "meta"  # column families besides the views' default one
# owner + NUL + family initial + indexed value -> b"": the index entries written for each contact
OWNED = "owned"
_FAMILY_MARK = {ANONYMOUS: "a", EMAIL: "e"}
_MARK_FAMILY = {mark: family for family, mark in _FAMILY_MARK.items()}
Entry = tuple[str, str]  # (index family, indexed value): one index entry
_OFFSET = "offset/"  # meta: offset/<topic>/<partition> -> the next offset to read
_COUNT = "count"  # meta: how many views the store holds
WRITER = "writer"  # meta: the writer's marker {token, caught_up, at_ms}
WRITE_BUFFERS_MB = 32  # every memtable of the writer together (flushed to SST files beyond)
TAKE_OVER_EVERY_S = 1.0


class StoreError(ApiError, RuntimeError):
    """The store cannot be opened, read or written as asked (a reader asked to write, a directory
    not yet created by its writer, a closed store): 503 ``not_ready`` if a request meets it."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "not_ready", message)


class ViewStore:
    """Views, indexes, named values and offsets in dicts: the interface, for one process.

    Writes (:meth:`put`, :meth:`delete`, :meth:`forget`, :meth:`link_anonymous`, :meth:`link_email`,
    :meth:`put_meta`, :meth:`advance`) are visible at once here; :class:`RocksViewStore` shows them
    at :meth:`commit`, all at once.
    """

    role: Role = "memory"

    def __init__(self) -> None:
        self._views: dict[str, bytes] = {}
        self._anonymous: dict[str, str] = {}
        self._email: dict[str, str] = {}
        self._owned: dict[str, set[Entry]] = {}
        self._meta: dict[str, bytes] = {}
        self._offsets: dict[tuple[str, int], int] = {}

    # -- reading ---------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        return self._views.get(key)

    def previous(self, key: str) -> bytes | None:
        """The view ``key`` as the writer last wrote it (writes not yet committed included)."""
        return self.get(key)

    def anonymous_owner(self, anonymous_id: str) -> str | None:
        """The contact an anonymous id was last seen on (a merged contact's ids: the survivor)."""
        return self._anonymous.get(anonymous_id)

    def email_owner(self, email: str) -> str | None:
        """The contact that last carried ``email`` (casefolded by the caller)."""
        return self._email.get(email)

    def owned(self, owner: str) -> set[Entry]:
        """The index entries written naming ``owner`` (each ``(family, value)``; some may have
        been given to another contact since), the writes not yet committed included."""
        return set(self._owned.get(owner, ()))

    def meta(self, name: str) -> bytes | None:
        return self._meta.get(name)

    def meta_items(self, prefix: str) -> list[tuple[str, bytes]]:
        return sorted((k, v) for k, v in self._meta.items() if k.startswith(prefix))

    def offsets(self) -> dict[tuple[str, int], int]:
        """``(topic, partition)`` -> the next offset to read, as of the last commit."""
        return dict(self._offsets)

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._views))

    def __getitem__(self, key: str) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: bytes) -> None:
        """Put ``value`` and commit (tests, tools; a follower commits once per fetch)."""
        self.put(key, value)
        self.commit()

    # -- writing (the writer) ----------------------------------------------------------------------
    def put(self, key: str, value: bytes) -> None:
        self._views[key] = value

    def delete(self, key: str) -> None:
        self._views.pop(key, None)

    def link_anonymous(self, anonymous_id: str, owner: str, *, replace: bool = True) -> None:
        """Index ``anonymous_id`` to ``owner`` (``replace=False``: only if it has no owner yet)."""
        if replace or anonymous_id not in self._anonymous:
            self._anonymous[anonymous_id] = owner
            self._owned.setdefault(owner, set()).add((ANONYMOUS, anonymous_id))

    def link_email(self, email: str, owner: str) -> None:
        self._email[email] = owner
        self._owned.setdefault(owner, set()).add((EMAIL, email))

    def _index(self, family: str) -> dict[str, str]:
        return self._anonymous if family == ANONYMOUS else self._email

    def forget(self, key: str, also: Iterable[Entry] = ()) -> int:
        """Delete the view ``key`` and every index entry that still points to it (those it wrote,
        and ``also``: entries of a store written before the ``owned`` family, read from the view
        that goes); an entry given to another contact since stays. Returns the entries removed."""
        self.delete(key)
        removed = 0
        for family, value in self.owned(key) | set(also):
            index = self._index(family)
            if index.get(value) == key:
                del index[value]
                removed += 1
        self._owned.pop(key, None)
        return removed

    def put_meta(self, name: str, value: bytes) -> None:
        self._meta[name] = value

    def advance(self, topic: str, partition: int, next_offset: int) -> None:
        """The records of ``topic[partition]`` before ``next_offset`` are applied."""
        self._offsets[(topic, partition)] = next_offset

    def pending(self) -> bool:
        """Whether writes wait for :meth:`commit`."""
        return False

    def commit(self) -> None:
        """Make the writes since the last commit visible and durable, with the offsets they reach."""

    def discard(self) -> None:
        """Drop the writes since the last commit (a follower restarting from the stored offsets)."""

    # -- sharing (RocksViewStore) -----------------------------------------------------------------
    def catch_up(self) -> None:
        """A reader: see what the writer committed since (nothing to do for the writer)."""

    def take_over(self) -> bool:
        """A reader: become the writer if the writer is gone; True when this store is the writer."""
        return self.role != "secondary"

    def mark_caught_up(self, caught_up: bool) -> None:
        """The writer: record whether it has read to the end its topics had when it started."""
        self.put_meta(WRITER, orjson.dumps({"token": "", "caught_up": caught_up, "at_ms": int(time.time() * 1000)}))
        self.commit()

    def writer_caught_up(self) -> bool:
        """Whether the current writer has said it caught up."""
        raw = self.meta(WRITER)
        return raw is not None and bool(orjson.loads(raw).get("caught_up"))

    def close(self) -> None:
        """Release what the store holds (RocksDB handles, the lock, a reader's directory)."""


@dataclass(frozen=True)
class StoreOptions:
    """How a :class:`RocksViewStore` is opened (from the settings)."""

    cache_mb: int = 64  # the block cache (data, index and filter blocks) of the process, all families


def _options(cache: Cache, *, secondary: bool) -> tuple[Options, dict[str, Options]]:
    """RocksDB options: one bounded block cache for every family (index and filter blocks in it,
    so their memory is bounded too), bloom filters (lookups that miss, as the index probes do,
    touch no data block), LZ4, bounded write buffers; a reader keeps its table files open (the
    writer's compactions may delete a file a reader still reads) and opens them on one thread (the
    default spawned 16 threads at every catch-up: 2 ms instead of 20 us)."""

    def family(write_buffer_mb: int) -> Options:
        opts = Options(raw_mode=True)
        table = BlockBasedOptions()
        table.set_block_cache(cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        table.set_bloom_filter(10, False)
        opts.set_block_based_table_factory(table)
        opts.set_compression_type(DBCompressionType.lz4())
        opts.set_write_buffer_size(write_buffer_mb << 20)
        opts.set_max_write_buffer_number(2)
        return opts

    db = family(16)
    db.create_if_missing(True)
    db.create_missing_column_families(True)
    db.set_db_write_buffer_size(WRITE_BUFFERS_MB << 20)
    db.set_max_background_jobs(2)
    db.set_keep_log_file_num(2)
    db.set_max_log_file_size(1 << 20)
    db.set_max_file_opening_threads(1)
    db.set_max_open_files(-1 if secondary else 1000)
    return db, {ANONYMOUS: family(4), EMAIL: family(4), META: family(1), OWNED: family(4)}


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)`` (nothing elsewhere): hands the heap's free pages back to the
    system. Writing millions of views leaves tens of MB free but held in malloc's arenas (RocksDB's
    flush and compaction threads, the batches): 34 MB after 300k views here."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None

    def release() -> None:
        trim(0)

    return release


release_free_memory = _malloc_trim()
TRIM_EVERY_S = 60.0  # the writer hands free memory back at most this often, and only after writing


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RocksViewStore(ViewStore):
    """The store in RocksDB under ``directory``: the writer if this process takes the lock, else a
    secondary (see the module docstring). :meth:`open` is the constructor."""

    def __init__(self, directory: Path, options: StoreOptions) -> None:
        super().__init__()
        self.directory = directory
        self.options = options
        self.role = "secondary"
        self._cache = Cache(options.cache_mb << 20)
        self._lock_fd: int | None = None
        self._token = ""
        self._db: Rdict | None = None
        self._families: dict[str, Rdict] = {}
        self._handles: dict[str, ColumnFamily] = {}
        self._count = 0
        self._pending: dict[str, bytes | None] = {}
        self._pending_index: dict[tuple[str, str], str | None] = {}  # None: delete the entry
        self._pending_owned: dict[str, dict[Entry, bool]] = {}  # owner -> entry -> listed (False: unlist)
        self._pending_meta: dict[str, bytes] = {}
        self._pending_offsets: dict[tuple[str, int], int] = {}
        self.caught_up_at = time.monotonic()

    @property
    def db_path(self) -> Path:
        return self.directory / "db"

    @property
    def secondary_path(self) -> Path:
        return self.directory / "secondaries" / str(os.getpid())

    @classmethod
    def open(cls, directory: Path, options: StoreOptions | None = None) -> RocksViewStore:
        """The store in ``directory``: the writer if the lock is free, else a reader of the writer's
        store (:class:`StoreError` while the writer has not created it yet: try again)."""
        store = cls(directory, options or StoreOptions())
        directory.mkdir(parents=True, exist_ok=True)
        if store._lock():
            store._open_writer()
        else:
            store._open_secondary()
        return store

    # -- the lock and the two roles --------------------------------------------------------------
    def _lock(self) -> bool:
        fd = os.open(self.directory / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._token = f"{os.getpid()}-{time.time_ns()}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, self._token.encode(), 0)
        self._lock_fd = fd
        return True

    def _open_db(self, secondary: bool) -> Rdict:
        db_opts, families = _options(self._cache, secondary=secondary)
        if secondary:
            access = AccessType.secondary(str(self.secondary_path))
            return Rdict(str(self.db_path), db_opts, column_families=families, access_type=access)
        return Rdict(str(self.db_path), db_opts, column_families=families)

    def _bind(self, db: Rdict) -> None:
        self._db = db
        self._families = {name: db.get_column_family(name) for name in (ANONYMOUS, EMAIL, META, OWNED)}
        self._handles = {name: db.get_column_family_handle(name) for name in (ANONYMOUS, EMAIL, META, OWNED)}

    def _open_writer(self) -> None:
        self._bind(self._open_db(secondary=False))
        self.role = "writer"
        raw = self._families[META].get(_COUNT.encode())
        self._count = 0 if raw is None else int(raw)
        self._pending_meta[WRITER] = self._marker(caught_up=False)
        self.commit()
        log.info("view store %s: this process (%s) writes it (%d views)", self.directory, os.getpid(), self._count)

    def _open_secondary(self) -> None:
        if not (self.db_path / "CURRENT").exists():
            raise StoreError(f"view store {self.db_path} not created yet by its writer")
        self._sweep_secondaries()
        self.secondary_path.mkdir(parents=True, exist_ok=True)
        self._bind(self._open_db(secondary=True))
        self.role = "secondary"
        self.caught_up_at = time.monotonic()
        log.info("view store %s: this process (%s) reads the writer's", self.directory, os.getpid())

    def _sweep_secondaries(self) -> None:
        """Remove the directories of readers that died without closing."""
        root = self.directory / "secondaries"
        if not root.is_dir():
            return
        for entry in root.iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid() and not _alive(int(entry.name)):
                shutil.rmtree(entry, ignore_errors=True)

    def take_over(self) -> bool:
        if self.role == "writer":
            return True
        if not self._lock():
            return False
        log.warning("view store %s: its writer is gone; this process (%s) takes over", self.directory, os.getpid())
        self._close_db()
        shutil.rmtree(self.secondary_path, ignore_errors=True)
        self._open_writer()
        return True

    def catch_up(self) -> None:
        if self.role == "secondary" and self._db is not None:
            self._db.try_catch_up_with_primary()
            self.caught_up_at = time.monotonic()

    def _marker(self, caught_up: bool) -> bytes:
        return orjson.dumps({"token": self._token, "caught_up": caught_up, "at_ms": int(time.time() * 1000)})

    def mark_caught_up(self, caught_up: bool) -> None:
        self._writable()
        self._pending_meta[WRITER] = self._marker(caught_up)
        self.commit()

    def writer_caught_up(self) -> bool:
        """Whether the writer that holds the lock now said it caught up (a marker left by an earlier
        writer does not count: its token differs from the one in the lock file)."""
        raw = self.meta(WRITER)
        if raw is None:
            return False
        marker = orjson.loads(raw)
        token = self._token if self.role == "writer" else (self.directory / "writer.lock").read_text()
        return bool(marker.get("caught_up")) and marker.get("token") == token

    # -- reading ---------------------------------------------------------------------------------
    def _read(self) -> Rdict:
        if self._db is None:
            raise StoreError(f"view store {self.directory} is closed")
        return self._db

    def get(self, key: str) -> bytes | None:
        value: bytes | None = self._read().get(key.encode())
        return value

    def previous(self, key: str) -> bytes | None:
        if key in self._pending:
            return self._pending[key]
        return self.get(key)

    def anonymous_owner(self, anonymous_id: str) -> str | None:
        raw = self._families[ANONYMOUS].get(anonymous_id.encode())
        return None if raw is None else bytes(raw).decode()

    def email_owner(self, email: str) -> str | None:
        raw = self._families[EMAIL].get(email.encode())
        return None if raw is None else bytes(raw).decode()

    def owned(self, owner: str) -> set[Entry]:
        self._read()
        prefix = owner.encode() + b"\0"
        found: set[Entry] = set()
        for key in self._families[OWNED].keys(from_key=prefix):
            raw = bytes(key)
            if not raw.startswith(prefix):
                break
            rest = raw[len(prefix) :].decode()
            found.add((_MARK_FAMILY[rest[0]], rest[1:]))
        for entry, listed in self._pending_owned.get(owner, {}).items():
            if listed:
                found.add(entry)
            else:
                found.discard(entry)
        return found

    def _owner_now(self, family: str, value: str) -> str | None:
        """The owner of an index entry, the writes not yet committed included (the writer)."""
        if (family, value) in self._pending_index:
            return self._pending_index[(family, value)]
        return self.anonymous_owner(value) if family == ANONYMOUS else self.email_owner(value)

    def meta(self, name: str) -> bytes | None:
        self._read()
        raw: bytes | None = self._families[META].get(name.encode())
        return raw

    def meta_items(self, prefix: str) -> list[tuple[str, bytes]]:
        self._read()
        out = []
        for key, value in self._families[META].items(from_key=prefix.encode()):
            name = bytes(key).decode()
            if not name.startswith(prefix):
                break
            out.append((name, bytes(value)))
        return out

    def offsets(self) -> dict[tuple[str, int], int]:
        out = {}
        for name, value in self.meta_items(_OFFSET):
            topic, _, partition = name[len(_OFFSET) :].rpartition("/")
            out[(topic, int(partition))] = int(value)
        return out

    def __len__(self) -> int:
        if self.role == "writer":
            return self._count
        raw = self.meta(_COUNT)
        return 0 if raw is None else int(raw)

    def __iter__(self) -> Iterator[str]:
        for key in self._read().keys():  # noqa: SIM118 (an Rdict, not a dict)
            yield bytes(key).decode()

    # -- writing ---------------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.role != "writer":
            raise StoreError(f"view store {self.directory}: this process reads it, another one writes it")

    def _exists(self, key: str) -> bool:
        if key in self._pending:
            return self._pending[key] is not None
        raw = key.encode()
        db = self._read()
        # the bloom filter answers most new keys without reading a block
        return bool(db.key_may_exist(raw)) and db.get(raw) is not None

    def put(self, key: str, value: bytes) -> None:
        self._writable()
        if not self._exists(key):
            self._count += 1
        self._pending[key] = value

    def delete(self, key: str) -> None:
        self._writable()
        if self._exists(key):
            self._count -= 1
            self._pending[key] = None

    def link_anonymous(self, anonymous_id: str, owner: str, *, replace: bool = True) -> None:
        self._writable()
        if not replace and self._owner_now(ANONYMOUS, anonymous_id) is not None:
            return
        self._link(ANONYMOUS, anonymous_id, owner)

    def link_email(self, email: str, owner: str) -> None:
        self._writable()
        self._link(EMAIL, email, owner)

    def _link(self, family: str, value: str, owner: str) -> None:
        self._pending_index[(family, value)] = owner
        self._pending_owned.setdefault(owner, {})[(family, value)] = True

    def forget(self, key: str, also: Iterable[Entry] = ()) -> int:
        self._writable()
        self.delete(key)
        removed = 0
        unlisted = self._pending_owned.setdefault(key, {})
        for family, value in self.owned(key) | set(also):
            if self._owner_now(family, value) == key:
                self._pending_index[(family, value)] = None
                removed += 1
            unlisted[(family, value)] = False
        return removed

    def put_meta(self, name: str, value: bytes) -> None:
        self._writable()
        self._pending_meta[name] = value

    def advance(self, topic: str, partition: int, next_offset: int) -> None:
        self._writable()
        self._pending_offsets[(topic, partition)] = next_offset

    def pending(self) -> bool:
        return bool(
            self._pending or self._pending_index or self._pending_owned or self._pending_meta or self._pending_offsets
        )

    def commit(self) -> None:
        """One write batch: the views, the index entries, the named values, the count and the
        offsets written since the last commit (each key once, its last value)."""
        if not self.pending():
            return
        self._writable()
        batch = WriteBatch(raw_mode=True)
        for key, value in self._pending.items():
            if value is None:
                batch.delete(key.encode())
            else:
                batch.put(key.encode(), value)
        for (family, name), owner in self._pending_index.items():
            if owner is None:
                batch.delete(name.encode(), self._handles[family])
            else:
                batch.put(name.encode(), owner.encode(), self._handles[family])
        owned = self._handles[OWNED]
        for owner, entries in self._pending_owned.items():
            for (family, name), listed in entries.items():
                listing = f"{owner}\0{_FAMILY_MARK[family]}{name}".encode()
                if listed:
                    batch.put(listing, b"", owned)
                else:
                    batch.delete(listing, owned)
        meta = self._handles[META]
        for name, raw in self._pending_meta.items():
            batch.put(name.encode(), raw, meta)
        for (topic, partition), offset in self._pending_offsets.items():
            batch.put(f"{_OFFSET}{topic}/{partition}".encode(), str(offset).encode(), meta)
        if self._pending:
            batch.put(_COUNT.encode(), str(self._count).encode(), meta)
        self._read().write(batch)
        self._clear()

    def discard(self) -> None:
        if self._pending and self.role == "writer":
            raw = self._families[META].get(_COUNT.encode())
            self._count = 0 if raw is None else int(raw)
        self._clear()

    def _clear(self) -> None:
        self._pending = {}
        self._pending_index = {}
        self._pending_owned = {}
        self._pending_meta = {}
        self._pending_offsets = {}

    # -- closing ---------------------------------------------------------------------------------
    def _close_db(self) -> None:
        if self._db is not None:
            # every handle of the database goes before it closes (a family or a handle left
            # behind keeps RocksDB's own lock held in this process)
            self._families, self._handles = {}, {}
            self._db.close()
            self._db = None

    def cache_usage(self) -> int:
        """Bytes in the block cache (data, index and filter blocks of every family)."""
        return int(self._cache.get_usage())

    def memtable_bytes(self) -> int:
        """Bytes in the memtables of every family (written, not yet flushed to table files)."""
        families = [self._read(), *self._families.values()]
        return sum(f.property_int_value("rocksdb.size-all-mem-tables") or 0 for f in families)

    def close(self) -> None:
        """Close it (writes not committed are dropped, as a killed process's would be)."""
        self._clear()
        self._close_db()
        if self.role == "secondary":
            shutil.rmtree(self.secondary_path, ignore_errors=True)
        if self._lock_fd is not None:
            os.ftruncate(self._lock_fd, 0)  # its marker no longer names a live writer
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


# -- following topics into a store -----------------------------------------------------------------


class StoreFollower(Protocol):
    """What :func:`follow_into_store` reports to and reads through (the contacts replica)."""

    store: ViewStore
    error: str | None
    caught_up: asyncio.Event

    def load_from_store(self) -> None:
        """Reload what the follower derives from the store's named values (worker statuses)."""


class _Progress:
    """What :func:`kafka_io.reader.follow` reports to while this process writes: errors go to the
    follower; ``caught_up`` is this writer's own (a reader that became the writer was caught up
    already, its new reading is not)."""

    def __init__(self, follower: StoreFollower) -> None:
        self.follower = follower
        self.caught_up = asyncio.Event()

    @property
    def error(self) -> str | None:
        return self.follower.error

    @error.setter
    def error(self, value: str | None) -> None:
        self.follower.error = value


async def open_store(directory: Path, options: StoreOptions, follower: StoreFollower) -> RocksViewStore:
    """:meth:`RocksViewStore.open`, again every 0.1 s while the writer has not created the store
    (or is creating it: RocksDB refuses a reader the column families it has not made yet)."""
    while True:
        try:
            return RocksViewStore.open(directory, options)
        except Exception as exc:  # StoreError, or RocksDB's plain Exception for a store half made
            follower.error = f"view store: {exc}"
            await asyncio.sleep(0.1)


async def follow_into_store(
    follower: StoreFollower,
    kafka: KafkaConnection,
    topics: Sequence[str],
    apply: Callable[[Any], None],
    label: str,
    fetch_max_wait_ms: int,
    catch_up_s: float,
) -> None:
    """Keep ``follower.store`` current for ever, in the role its store has.

    A reader catches up with the writer every ``catch_up_s`` and tries to take over once a second;
    the writer (or a store in memory) follows ``topics`` from the offsets the store holds (the
    beginning for an empty one) with :func:`kafka_io.reader.follow`, ``apply(record)`` per record
    and one :meth:`ViewStore.commit` per fetch, and marks the store caught up once it has read to
    the end offsets the topics had when it started."""
    store = follower.store
    if store.role == "secondary":
        await _read_behind(follower, store, catch_up_s, label)
    follower.load_from_store()
    progress = _Progress(follower)

    def apply_and_advance(record: Any) -> None:
        apply(record)
        store.advance(record.topic, record.partition, record.offset + 1)

    def positions() -> dict[tuple[str, int], int]:
        store.discard()  # a restart reads again from what was committed
        return store.offsets()

    async def mark() -> None:
        await progress.caught_up.wait()
        store.mark_caught_up(True)
        follower.caught_up.set()
        release_free_memory()  # what reading the whole topic left in malloc's arenas

    trimmed_at = time.monotonic()

    def commit() -> None:
        nonlocal trimmed_at
        wrote = store.pending()
        store.commit()
        if wrote and time.monotonic() - trimmed_at >= TRIM_EVERY_S:
            trimmed_at = time.monotonic()
            release_free_memory()

    marker = asyncio.create_task(mark(), name=f"{label} caught up")
    try:
        await follow(
            progress,
            kafka,
            topics,
            apply_and_advance,
            label,
            fetch_max_wait_ms,
            positions=positions,
            after_fetch=commit,
        )
    finally:
        marker.cancel()


async def _read_behind(follower: StoreFollower, store: ViewStore, catch_up_s: float, label: str) -> None:
    """A reader's loop: catch up with the writer every ``catch_up_s``, reload the named values once
    a second, turn ready when the writer says it caught up; return once this process took over."""
    next_take_over = next_reload = 0.0
    while True:
        now = time.monotonic()
        try:
            if now >= next_take_over:
                if store.take_over():
                    log.info("%s: this process follows the topics now", label)
                    return
                next_take_over = now + TAKE_OVER_EVERY_S
            store.catch_up()
            if now >= next_reload:
                follower.load_from_store()
                next_reload = now + 1.0
            if not follower.caught_up.is_set() and store.writer_caught_up():
                follower.caught_up.set()
                log.info("%s: the writer of the store is caught up; so is this process", label)
            follower.error = None
        except Exception as exc:  # RocksDB reports I/O trouble as plain exceptions: say it, try again
            follower.error = f"view store: {type(exc).__name__}: {exc}"
            log.warning("%s: %s", label, follower.error)
            await asyncio.sleep(1.0)
        await asyncio.sleep(catch_up_s)
