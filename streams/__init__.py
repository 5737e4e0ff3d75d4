"""The Faust worker: a thin adapter that feeds Kafka batches to the pure core."""
