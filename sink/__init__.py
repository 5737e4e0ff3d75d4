"""The analytics sink process: archives events, scores, transitions, triggers and deliveries into
ClickHouse (``analytics`` holds the schema, the client and the reports it writes for).
"""
