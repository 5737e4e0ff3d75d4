"""(being built) The console's overview pages."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
