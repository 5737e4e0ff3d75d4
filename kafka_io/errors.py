"""The Kafka home's exceptions: the root every exception class ``kafka_io`` defines derives from.

``kafka_io`` defines one, :class:`kafka_io.clients.KafkaUnavailable` (the start-up preflight's verdict);
otherwise it lets aiokafka's and Faust's own errors through, and a follower
that cannot apply a record counts, logs and skips it (:func:`kafka_io.reader.apply_or_skip`; the
table in :mod:`streams.deadletter`). A new exception class here derives from :class:`KafkaIoError`
(tests/test_layers.py checks it).
"""

from __future__ import annotations


class KafkaIoError(Exception):
    """The root of every exception the Kafka home defines."""
