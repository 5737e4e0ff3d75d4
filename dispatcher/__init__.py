"""The webhook dispatcher process: reads triggers, delivers them to subscribers (Standard Webhooks).

``service`` is the process (Kafka in and out), ``schedule`` its I/O-free bookkeeping (lanes, order,
bounded memory), ``sender`` the HTTP/1.1 client that refuses private addresses.
"""
