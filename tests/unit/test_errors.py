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


def test_an_unknown_code_takes_the_class_of_its_status() -> None:
    error = errors.error_for_code("code_of_a_newer_server", "detail", status=422)
    assert type(error) is errors.InvalidInput and error.code == "code_of_a_newer_server"
    assert type(errors.error_for_code("new_conflict", "d", status=409)) is errors.Conflict


def test_a_409_without_a_problem_body_is_a_conflict() -> None:
    error = errors.error_from_answer(409, None, "Conflict")
    assert type(error) is errors.Conflict and error.code == "conflict"
    assert error.message == "Conflict"


def test_a_problem_body_wins_over_the_status() -> None:
    body = {"code": "round_closed", "detail": "round 1 of r is closed", "status": 409}
    error = errors.error_from_answer(409, body, "Conflict")
    assert type(error) is errors.Conflict and error.code == "round_closed"
    assert error.message == "round 1 of r is closed"


@pytest.mark.parametrize("status", [*errors.CODE_FOR_STATUS, 418, 599])
def test_every_status_maps_to_a_known_code_of_the_same_status_class(status: int) -> None:
    code = errors.code_for_status(status)
    error = errors.error_from_answer(status, "not a problem", "reason")
    assert error.code == code
    if code in ("internal", "unavailable"):
        assert error.http_status >= 500
    else:
        assert 400 <= error.http_status < 500


@pytest.mark.parametrize("status", [*errors.CODE_FOR_STATUS, 418])
def test_server_transport_and_admin_client_share_one_table(status: int) -> None:
    """The three edges agree: the code the server would send is the one both clients read."""
    import httpx

    from client.transport import problem_error
    from fedseg.admin_client import error_from_response

    bare = httpx.Response(status, text="<html>proxy</html>")
    site_side, admin_side = problem_error(bare), error_from_response(bare)
    assert type(site_side) is type(admin_side)
    assert site_side.code == admin_side.code == errors.code_for_status(status)
