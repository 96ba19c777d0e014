from __future__ import annotations

import inspect

import pytest

from shared import errors
from shared.errors import ERROR_CLASSES, FedsegError, error_for_code

ALL_CODES = [(cls, code) for cls in ERROR_CLASSES for code in cls.codes]


@pytest.mark.parametrize(("cls", "code"), ALL_CODES, ids=[code for _, code in ALL_CODES])
def test_error_for_code_rebuilds_the_class(cls: type[FedsegError], code: str) -> None:
    error = error_for_code(code, "detail")
    assert type(error) is cls
    assert error.code == code
    assert error.message == "detail"
    assert str(error) == f"{code}: detail"


def test_unknown_code_becomes_the_base_class_and_keeps_its_code() -> None:
    error = error_for_code("some_future_code", "detail")
    assert type(error) is FedsegError
    assert error.code == "some_future_code"
    assert error.http_status == 500


def test_codes_are_unique_across_classes() -> None:
    codes = [code for _, code in ALL_CODES]
    assert len(codes) == len(set(codes))
    assert "internal" not in codes


def test_every_error_class_is_registered_with_its_default_code() -> None:
    defined = {
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, FedsegError) and obj is not FedsegError
    }
    assert defined == set(ERROR_CLASSES)
    for cls in ERROR_CLASSES:
        assert cls.default_code in cls.codes
        assert cls(message="x").code == cls.default_code


def test_statuses_and_hierarchy() -> None:
    assert issubclass(errors.Forbidden, errors.AuthError)
    assert errors.Forbidden.http_status == 403
    assert errors.AuthError.http_status == 401
    assert errors.Conflict.http_status == 409
    assert errors.PayloadTooLarge.http_status == 413
    assert errors.Unavailable.http_status == 503
    assert errors.IntegrityError("x", code="truncated").code == "truncated"
