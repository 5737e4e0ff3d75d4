"""The Segment-compatible HTTP collector: validates events at the door and publishes them to Kafka.

It runs inside the API process (mounted by ``api``) but is its own package: nothing in it imports
the API.
"""
