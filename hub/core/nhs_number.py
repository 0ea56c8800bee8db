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


def is_placeholder(raw: str) -> bool:
    """Ten digits all the same (0000000000, 3333333333, 9999999999...): what systems send for "not
    known" or in test data. Some pass the Modulus 11 check, but none is anyone's NHS number: taken as
    one, every person sent with it would become one person."""
    number = normalise(raw)
    return len(number) == 10 and number.isascii() and number.isdigit() and len(set(number)) == 1


def is_valid(raw: str) -> bool:
    """True for ten digits whose tenth is the Modulus 11 check digit of the first nine (not a placeholder)."""
    number = normalise(raw)
    if len(number) != 10 or not number.isascii() or not number.isdigit() or is_placeholder(number):
        return False
    return check_digit(number[:9]) == int(number[9])


def why_invalid(raw: str) -> str | None:
    """A sentence a person can act on, or None when the number is valid."""
    number = normalise(raw)
    if len(number) != 10 or not number.isascii() or not number.isdigit():
        return f"NHS number must be 10 digits, got {len(number)} characters"
    if is_placeholder(number):
        return f"{number} is a placeholder (all ten digits the same), not anyone's NHS number"
    expected = check_digit(number[:9])
    if expected is None:
        return "NHS number fails the Modulus 11 check (no check digit is possible for it)"
    if expected != int(number[9]):
        # (never which check digit would pass: a number "fixed" that way is most likely someone else's)
        return (
            "NHS number fails the Modulus 11 check (a digit is wrong or two are swapped: "
            "check it with the person's record)"
        )
    return None
