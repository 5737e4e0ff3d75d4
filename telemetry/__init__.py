"""What every process tells its operators: metrics (Prometheus) and structured logs.

Shared by the worker, the API, the collector, the dispatcher and the sink, like :mod:`kafka_io`;
it imports none of them."""
