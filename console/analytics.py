"""(being built) The console's analytics pages."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
