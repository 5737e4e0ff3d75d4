"""The HTTP API: a thin FastAPI adapter over a read replica of the contacts table."""
