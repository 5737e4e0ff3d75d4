"""One exception root for the core: every exception class it defines derives from ScorestreamError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import scorestream
from scorestream import Model, ModelError, ScorestreamError


def core_exception_classes() -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for info in pkgutil.walk_packages(scorestream.__path__, "scorestream."):
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found.append(value)
    return found


def test_every_exception_class_of_the_core_derives_from_the_root() -> None:
    classes = core_exception_classes()
    assert ModelError in classes and ScorestreamError in classes
    for cls in classes:
        assert issubclass(cls, ScorestreamError), f"{cls.__module__}.{cls.__qualname__} is not a ScorestreamError"


def test_an_invalid_model_raises_a_model_error_callers_catch_as_a_value_error() -> None:
    with pytest.raises(ValueError, match="non-empty 'name'") as caught:
        Model.from_dict({"name": ""})
    assert isinstance(caught.value, ModelError) and isinstance(caught.value, ScorestreamError)
