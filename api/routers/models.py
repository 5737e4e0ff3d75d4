"""Models: the scoring model a namespace runs, every live namespace (active and shadows), and the
CLV model fitted on the customer population."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.bodies import LimitedRoute
from api.deps import AuthorisedReaders, NamespacesDep, ReadScope, SettingsDep
from api.errors import ApiError
from schemas.api import ModelOut, ModelsOut, Problem, model_out
from schemas.value import ClvModelOut

router = APIRouter(tags=["model"], route_class=LimitedRoute)


@router.get("/v1/model", response_model=ModelOut, responses={404: {"model": Problem}})
async def get_model(readers: AuthorisedReaders) -> ModelOut:
    """The active scoring model (or the one of ``model``) and its version id."""
    return model_out(readers.model)


@router.get("/v1/models", response_model=ModelsOut, dependencies=ReadScope)
async def list_models(namespaces: NamespacesDep) -> ModelsOut:
    """Every live model namespace: the active one (what the API answers with by default and the
    public triggers carry) and the shadows (``?model=<namespace>``), with their model version,
    when they were registered and promoted, and how far this API has read their state."""
    return namespaces.models_out()


@router.get(
    "/v1/models/clv",
    response_model=ClvModelOut,
    responses={404: {"model": Problem}, 503: {"model": Problem}},
)
async def get_clv_model(readers: AuthorisedReaders, settings: SettingsDep) -> Any:
    """The CLV model fitted on the customer population (BG/NBD, Gamma-Gamma) and the RFM quintile
    boundaries. 503 ``not_fitted`` until the first successful fit."""
    population = readers.population
    body = population.clv_model_body()
    if body is None:
        current = population.model
        seen = "no population model yet" if current is None else f"{current.customers} customers so far"
        reason = "" if current is None or current.fit_error is None else f" ({current.fit_error})"
        raise ApiError(
            503,
            "not_fitted",
            f"no CLV model has been fitted yet: {seen}{reason}; the population is refreshed every "
            f"{settings.population_interval_s:g} s",
            headers={"Retry-After": str(max(1, round(settings.population_interval_s)))},
        )
    return body
