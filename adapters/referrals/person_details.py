"""A referral's optional person details, referring worker and case reference, read from an ASC or VCSE
row (checked by fields.py, each problem naming the row and the field) and said as FHIR R4 / UK Core.

The person's name, home address, phone and a carer or next of kin go on the referral's stub Patient
(name, address, telecom, contact), which the record keeps only while no hospital or practice has said
who the person is (hub.core.record, "stubs"). The worker who made the referral is a PractitionerRole
contained in the ServiceRequest: its requester refers to it and keeps the organisation's identifier and
display, which the KPIs, a withdrawal's authority and the huddle read. The referrer's own case reference
is a ServiceRequest identifier whose system names the referrer, as the referral_id's does.

A malformed phone number, postcode or email address is left out, not the referral: the row is taken
without it and says so in a warning naming the row and the field (never the value), which the intake
reports as the row's outcome. A carer relationship whose only way to reach the carer was such a phone
is left out with it. Every other problem (a required field, a name that is not text) refuses the row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adapters.referrals.fields import RowFields
from hub.core.errors import InvalidMessageError

Json = dict[str, Any]
CASE_REFERENCE_SYSTEM = "https://carehub.invalid/Id/case-reference"  # + "/<referrer>"
WORKER = "referring-worker"  # the contained PractitionerRole's id
MAX_CASE_REFERENCE = 64
LEFT_OUT = "left out: the referral was accepted without it"  # (after a warning's reason)
ADDRESS_LINES = ("address_line_1", "address_line_2", "address_line_3", "address_line_4")
FIELDS = (  # read by the asc-csv, asc-json and vcse-json layouts (README), all optional
    "given_name", "family_name", *ADDRESS_LINES, "postcode", "phone",
    "carer_name", "carer_relationship", "carer_phone",
    "worker_name", "worker_phone", "worker_email", "case_reference",
)  # fmt: skip


@dataclass(frozen=True)
class PersonDetails:
    """What a row said of the person (Patient elements), of its worker (PractitionerRole elements) and
    the case reference; each empty when the row said nothing of it."""

    patient: Json = field(default_factory=dict)
    worker: Json = field(default_factory=dict)
    case_reference: str | None = None
    warnings: tuple[str, ...] = ()  # the details left out, each naming row and field (not part of the event)

    def said(self) -> list[Any]:
        """For the event id: nothing when nothing was said, so a row without these fields keeps the id
        it had before they were read (the same file sent again is the same event)."""
        if not (self.patient or self.worker or self.case_reference):
            return []
        return [{"patient": self.patient, "worker": self.worker, "case_reference": self.case_reference}]


class _Lenient:
    """A row's phone numbers, postcode and email address, each left out with a warning when malformed."""

    def __init__(self, f: RowFields) -> None:
        self.f = f
        self.warnings: list[str] = []

    def read(self, check: Callable[[str], str | None], name: str) -> str | None:
        try:
            return check(name)
        except InvalidMessageError as error:  # (its reason names the row and field, never the value)
            self.warnings.append(f"{error.diagnostics}; {LEFT_OUT}")
            return None

    def phone(self, name: str) -> str | None:
        return self.read(self.f.phone, name)

    def left_out(self, name: str) -> bool:
        return any(w.startswith(f"row {self.f.number}, field {name}:") for w in self.warnings)


def read_details(f: RowFields) -> PersonDetails:
    """The row's person details, worker and case reference, a malformed phone, postcode or email left out
    with a warning; InvalidMessageError naming the field for any other problem."""
    said = _Lenient(f)
    patient: Json = {}
    name = _name(f)
    if name:
        patient["name"] = [name]
    address = _address(said)
    if address:
        patient["address"] = [address]
    phone = said.phone("phone")
    if phone:
        patient["telecom"] = [_phone(phone, "home")]
    contact = _contact(said)
    if contact:
        patient["contact"] = [contact]
    worker, case_reference = _worker(said), _case_reference(f)
    return PersonDetails(patient, worker, case_reference, tuple(said.warnings))


def on_patient(patient: Json, details: PersonDetails) -> Json:
    """The stub Patient with what the referrer said of the person."""
    return patient | details.patient


def on_request(request: Json, details: PersonDetails, referrer_system: str, referrer: str) -> None:
    """The worker (contained, and referred to by the requester) and the case reference, on the request."""
    if details.case_reference:
        case = {"system": f"{CASE_REFERENCE_SYSTEM}/{referrer}", "value": details.case_reference}
        request["identifier"] = [*request.get("identifier", []), case]  # (after referral_id's: clashes.py)
    if details.worker:
        organization = {"identifier": {"system": referrer_system, "value": referrer}}
        if request["requester"].get("display"):
            organization["display"] = request["requester"]["display"]
        role = {"resourceType": "PractitionerRole", "id": WORKER, **details.worker, "organization": organization}
        request["contained"] = [role]
        request["requester"] = {"reference": f"#{WORKER}", **request["requester"]}


def _name(f: RowFields) -> Json:
    given, family = f.text("given_name", required=False), f.text("family_name", required=False)
    name: Json = {"family": family} if family else {}
    return name | {"given": [given]} if given else name


def _address(said: _Lenient) -> Json:
    f = said.f
    lines = [line for name in ADDRESS_LINES if (line := f.text(name, required=False))]
    postcode = said.read(f.postcode, "postcode")
    if not (lines or postcode):
        return {}
    address: Json = {"use": "home"}
    if lines:
        address["line"] = lines
    return address | {"postalCode": postcode} if postcode else address


def _contact(said: _Lenient) -> Json:
    f = said.f
    name = f.text("carer_name", required=False)
    relationship = f.text("carer_relationship", required=False)
    phone = said.phone("carer_phone")
    if relationship and not name and said.left_out("carer_phone"):
        return {}  # (a relationship alone names no one to call: left out with the phone)
    if relationship and not (name or phone):
        raise f.fail(
            "carer_name",
            "is required when carer_relationship is given: give the carer's name, carer_phone or both",
            "required",
        )
    contact: Json = {"relationship": [{"text": relationship}]} if relationship else {}
    if name:
        contact["name"] = {"text": name}
    return contact | {"telecom": [_phone(phone, "home")]} if phone else contact


def _worker(said: _Lenient) -> Json:
    name = said.f.text("worker_name", required=False)
    phone, email = said.phone("worker_phone"), said.read(said.f.email, "worker_email")
    worker: Json = {"practitioner": {"display": name}} if name else {}
    telecom = [*([_phone(phone, "work")] if phone else []), *([_email(email)] if email else [])]
    return worker | {"telecom": telecom} if telecom else worker


def _case_reference(f: RowFields) -> str | None:
    reference = f.text("case_reference", required=False)
    if reference is not None and len(reference) > MAX_CASE_REFERENCE:
        raise f.fail("case_reference", f"is longer than {MAX_CASE_REFERENCE} characters")
    return reference


def _phone(number: str, use: str) -> Json:
    compact = number.replace(" ", "").replace("(0)", "")
    mobile = use != "work" and compact.startswith(("07", "+447", "00447"))
    return {"system": "phone", "value": number, "use": "mobile" if mobile else use}


def _email(address: str) -> Json:
    return {"system": "email", "value": address, "use": "work"}
