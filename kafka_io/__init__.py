"""Kafka plumbing: every Kafka client in scorestream is built here.

The adapters (the worker, the webhook dispatcher, the API, the collector, the analytics sink, the
CLI and the bench) talk to Kafka only through this package, so what a connection needs (the
bootstrap servers, TLS and SASL) is said once, in :func:`kafka_io.clients.connection`.

- :mod:`kafka_io.clients`: :class:`~kafka_io.clients.KafkaConnection` and the aiokafka consumer,
  producer and admin client built from it; the Faust app's broker options (its credentials); the
  start-up preflight :func:`~kafka_io.clients.check`.
- :mod:`kafka_io.partitioner`: the one CRC32 partitioner (state is partitioned by it: never change
  the numbers it gives).
- :mod:`kafka_io.reader`: reading topics from the beginning, to their end or for ever, with the
  per-record policy: a record the reader's ``apply`` fails on is logged with its coordinates,
  counted and skipped; it never stops the reader.
- :mod:`kafka_io.topics`: the topics scorestream uses, their creation, their offsets.
- :mod:`kafka_io.registry`: the models registry topic, read and written (``schemas/registry.py``
  holds what its records mean).

This package imports the standard library, aiokafka, ``schemas`` and (for the Faust app's
credentials only) ``faust.auth``; nothing here imports an adapter (``tests/test_layers.py``).
"""
