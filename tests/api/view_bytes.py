"""What the worker sends to ``<app>.views`` for a contact state (``streams/views.py``): the API
tests feed their replicas with it."""

from __future__ import annotations

from schemas.view import encode_view
from scorestream import ContactState, Model
from scorestream.view import view_of


def view_bytes(state: ContactState, model: Model) -> bytes:
    """The view record of ``state`` as the worker running ``model`` sends it."""
    return encode_view(view_of(state, model))
