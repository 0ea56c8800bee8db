"""NHS number Modulus 11, person keys and the error tree (hub/core)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.core import nhs_number
from hub.core.errors import (
    BrokerUnavailableError,
    ConsentDeniedError,
    DuplicateEventError,
    InfrastructureError,
    InvalidMessageError,
    StoreUnavailableError,
    UnknownPersonError,
    UnsupportedMessageError,
    operation_outcome,
)
from hub.core.identity import person_key, stable_id


@pytest.mark.parametrize("number", ["9434765919", "943 476 5919", "9990500002", "9912003888", "9000000009"])
def test_published_valid_nhs_numbers_pass(number: str) -> None:
    assert nhs_number.is_valid(number)
    assert nhs_number.why_invalid(number) is None


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        ("9912003890", "fails the Modulus 11 check (a digit is wrong"),
        ("3478526985", "fails the Modulus 11 check (a digit is wrong"),
        ("9135246570", "no check digit is possible"),
        ("123", "10 digits"),
        ("94347659１9", "10 digits"),
        ("abcdefghij", "10 digits"),
    ],
)
def test_invalid_nhs_numbers_are_explained_without_echoing_them(number: str, reason: str) -> None:
    assert not nhs_number.is_valid(number)
    why = nhs_number.why_invalid(number)
    assert why is not None and reason in why
    assert number not in why


@pytest.mark.parametrize("number", ["0000000000", "1111111111", "3333333333", "9999999999", "999 999 9999"])
def test_placeholders_pass_the_modulus_11_check_but_are_no_ones_nhs_number(number: str) -> None:
    digits = nhs_number.normalise(number)
    assert nhs_number.check_digit(digits[:9]) == int(digits[9])
    assert nhs_number.is_placeholder(number)
    assert not nhs_number.is_valid(number)
    assert "is a placeholder" in (nhs_number.why_invalid(number) or "")


@given(st.text(max_size=14))
def test_any_text_is_judged_without_raising(text: str) -> None:
    assert nhs_number.is_valid(text) == (nhs_number.why_invalid(text) is None)


@given(st.from_regex(r"[0-9]{9}", fullmatch=True))
def test_a_computed_check_digit_always_validates(nine: str) -> None:
    digit = nhs_number.check_digit(nine)
    if digit is None:
        assert all(not nhs_number.is_valid(nine + str(d)) for d in range(10))
    else:  # (unless the ten are all the same digit: a placeholder)
        assert nhs_number.is_valid(nine + str(digit)) == (not nhs_number.is_placeholder(nine + str(digit)))


def test_person_key_is_stable_non_identifying_and_secret_dependent() -> None:
    key = person_key(b"s1", "9434765919", None)
    assert key == person_key(b"s1", "9434765919", ("RXX", "M1"))
    assert "9434765919" not in key and len(key) == 32
    assert key != person_key(b"s2", "9434765919", None)
    assert person_key(b"s1", None, ("RXX", "M1")) != person_key(b"s1", None, ("RYY", "M1"))
    with pytest.raises(ValueError, match="needs an NHS number"):
        person_key(b"s1", None, None)


def test_stable_ids_are_deterministic() -> None:
    assert stable_id("a", "b") == stable_id("a", "b") != stable_id("a", "c")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidMessageError("x"), "invalid"),
        (UnsupportedMessageError("x"), "not-supported"),
        (UnknownPersonError("x"), "not-found"),
        (ConsentDeniedError("x"), "forbidden"),
        (DuplicateEventError("x"), "duplicate"),
        (StoreUnavailableError("x"), "transient"),
        (BrokerUnavailableError("x"), "transient"),
    ],
)
def test_each_error_carries_its_fhir_issue_type(error: Exception, code: str) -> None:
    assert error.code == code


def test_operation_outcome_names_the_place() -> None:
    error = InvalidMessageError("NHS number fails the Modulus 11 check", ("PID-3",))
    assert str(error) == "NHS number fails the Modulus 11 check [PID-3]"
    outcome = operation_outcome(error)
    assert outcome["issue"] == [
        {"severity": "error", "code": "invalid", "diagnostics": error.diagnostics, "expression": ["PID-3"]}
    ]
    assert "expression" not in operation_outcome(InfrastructureError("down"))["issue"][0]  # type: ignore[index]
