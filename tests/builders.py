"""Test data builders: small, explicit HL7 v2 messages (`an_adt(trigger="A03", nhs_number=...)`)."""

from __future__ import annotations

import random

from hub.core.nhs_number import check_digit
from schemas.agreements import Agreement


def a_valid_nhs_number(rng: random.Random | None = None) -> str:
    """A Modulus-11-valid NHS number in the 999 test range (never issued to a real person)."""
    rng = rng or random.Random()
    while True:
        nine = "999" + "".join(str(rng.randrange(10)) for _ in range(6))
        digit = check_digit(nine)
        if digit is not None:
            return nine + str(digit)


def an_adt(
    *,
    trigger: str = "A03",
    nhs_number: str | None = "9434765919",
    mrn: str | None = "M100",
    control_id: str = "MSG0001",
    sender: str = "RXX",
    practice: str | None = "Y00001",
    visit: str | None = "V1",
    admit: str | None = "202611010930",
    discharge: str | None = "202611031100",
    event_time: str = "202611031105",
    family: str = "SMITH",
    given: str = "JANE",
    version: str = "2.4",
    charset: str = "UNICODE UTF-8",
    patient_class: str = "I",
    merged_mrn: str | None = None,
    seg_end: bytes = b"\r",
    extra_segments: tuple[str, ...] = (),
    encoding: str = "utf-8",
    died: str = "",
    death_indicator: str = "",
    reliability: str = "NSTS01",
    disposition: str = "19",
    discharged_to: str = "",
) -> bytes:
    """One ADT message; None leaves a field empty. A03 carries PV1-45, others do not. `died` and
    `death_indicator` are PID-29 and PID-30, `reliability` PID-32, `disposition` and `discharged_to`
    PV1-36 and PV1-37."""
    ids = [f"{nhs_number}^^^NHS^NH"] if nhs_number else []
    ids += [f"{mrn}^^^{sender}^MR"] if mrn else []
    structure = {"A40": "ADT_A39", "A03": "ADT_A03"}.get(trigger, "ADT_A01")
    segments = [
        f"MSH|^~\\&|PAS|{sender}|CAREHUB|CAREHUB|{event_time}||ADT^{trigger}^{structure}|{control_id}"
        f"|P|{version}|||AL|NE|GBR|{charset}|EN||iTKv1.0",
        f"EVN|{trigger}|{event_time}",
        f"PID|1||{'~'.join(ids)}||{family}^{given}^^^MRS||19400312|F|||1 HIGH STREET^^MALTON^^YO17 7AA"
        f"{'|' * 18}{died}|{death_indicator}||{reliability}",
    ]
    if practice:
        segments.append(f"PD1|||MALTON SURGERY^^{practice}|G1234567^DOC^A")
    if trigger == "A40":
        segments.append(f"MRG|{merged_mrn or 'OLD1'}^^^{sender}^MR")
    else:
        end = discharge if trigger == "A03" else ""
        segments.append(
            f"PV1|1|{patient_class}|WARD1^BAY2^BED3||||||||||||||||{visit or ''}|||||||||||||||||{disposition}"
            f"|{discharged_to}|||||||{admit or ''}|{end or ''}"
        )
    segments += list(extra_segments)
    return seg_end.join(s.encode(encoding) for s in segments) + seg_end


def an_agreement(
    *parties: str,
    id: str = "test-locality-sharing",
    version: int = 1,
    purposes: tuple[str, ...] = ("direct-care", "care-coordination"),
    categories: tuple[str, ...] = ("demographics", "encounters", "provenance", "consents"),
    sensitive: tuple[str, ...] = (),
    valid_from: str = "2026-01-01",
    valid_to: str | None = None,
) -> Agreement:
    """An information sharing agreement between `parties` (ODS codes)."""
    return Agreement.model_validate(
        {
            "id": id,
            "version": version,
            "title": "Test locality information sharing agreement",
            "parties": [{"code": p} for p in parties or ("RXX", "Y00001")],
            "purposes": purposes,
            "categories": categories,
            "sensitive": sensitive,
            "lawful_basis": {"article6": "6(1)(e) public task", "article9": "9(2)(h) health or social care"},
            "valid_from": valid_from,
            "valid_to": valid_to,
        }
    )


def an_objection(nhs_number: str, recipient: str, *, category: str | None = None) -> dict[str, object]:
    """A FHIR Consent in which the person objects to `recipient` (ODS) seeing their data (one category, or all)."""
    provision: dict[str, object] = {
        "type": "deny",
        "actor": [
            {
                "role": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]
                },
                "reference": {
                    "identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": recipient}
                },
            }
        ],
    }
    if category:
        provision["class"] = [{"system": "https://carehub.invalid/CodeSystem/data-category", "code": category}]
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number}},
        "provision": provision,
    }
