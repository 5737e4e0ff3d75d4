"""(being built) The console's contacts pages."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
