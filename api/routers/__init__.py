"""The API's routes, one module per resource, each with its ``router``; :data:`ROUTERS` in the
order the app includes them (a path two routers could match goes to the first)."""

from fastapi import APIRouter

from api.routers import (
    accounts,
    adjustments,
    collector,
    contacts,
    health,
    interests,
    metrics,
    models,
    overview,
    problems,
    quality,
    regulations,
    reports,
    webhooks,
)

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    metrics.router,
    contacts.router,
    interests.router,
    adjustments.router,
    models.router,
    accounts.router,
    collector.router,
    webhooks.router,
    regulations.router,
    reports.router,
    quality.router,
    overview.router,
    problems.router,
)
