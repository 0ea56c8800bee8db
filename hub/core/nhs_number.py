"""NHS number: 10 digits, the last a Modulus 11 check digit (NHS Data Dictionary, "NHS NUMBER")."""

from __future__ import annotations

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)


def normalise(raw: str) -> str:
    """Strip the spaces and dashes of the 3-3-4 display form."""
    return raw.replace(" ", "").replace("-", "")


def check_digit(first_nine: str) -> int | None:
    """The check digit for nine digits, or None where the remainder gives 10 (never issued)."""
    total = sum(int(d) * w for d, w in zip(first_nine, _WEIGHTS, strict=True))
    digit = 11 - total % 11
    if digit == 11:
        return 0
    return None if digit == 10 else digit


def is_valid(raw: str) -> bool:
    """True for ten digits whose tenth is the Modulus 11 check digit of the first nine."""
    number = normalise(raw)
    if len(number) != 10 or not number.isascii() or not number.isdigit():
        return False
    return check_digit(number[:9]) == int(number[9])


def why_invalid(raw: str) -> str | None:
    """A sentence a person can act on, or None when the number is valid."""
    number = normalise(raw)
    if len(number) != 10 or not number.isascii() or not number.isdigit():
        return f"NHS number must be 10 digits, got {len(number)} characters"
    expected = check_digit(number[:9])
    if expected is None:
        return "NHS number fails the Modulus 11 check (no check digit is possible for it)"
    if expected != int(number[9]):
        return f"NHS number fails the Modulus 11 check (check digit should be {expected})"
    return None
