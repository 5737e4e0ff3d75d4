"""(being built) The console's admin pages."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
