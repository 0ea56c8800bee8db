"""Care coordination events: referrals, at-risk registers, case lists, contacts, episodes, tasks, clocks.

Every payload is a FHIR `collection` Bundle (or one resource) whose person resources point at
`Patient/{person key}`; the envelope subject is that person key. Shapes, by event:

referral.received   ServiceRequest (status active, intent order, category SNOMED 3457005 "Patient
                    referral", subject Patient/{key} with identifier NHS number, authoredOn, requester
                    {identifier ODS or local-authority code, display}, performer [{identifier: the
                    organisation the referral is addressed to}], reasonCode[].text, extension
                    SOURCE_EXTENSION valueCodeableConcept coded in REFERRAL_SOURCE_SYSTEM), plus a Patient
                    stub (id = key, NHS number, birthDate, generalPractitioner ODS) that the record only
                    keeps while it knows nothing better about the person.
referral.outcome    the same ServiceRequest, with extension OUTCOME_EXTENSION valueCode contacted | attended |
                    declined | accepted | withdrawn; declined sets status revoked, attended sets status
                    completed, withdrawn (its referrer took the referral back) sets status revoked, with the
                    referrer's reason, if given, in note[].text.
register.row        a GP practice's at-risk register row: Patient stub plus three Observations (code in
                    MEASURE_SYSTEM: non-elective-admissions-12m valueInteger, long-term-conditions
                    valueInteger, frailty valueCodeableConcept SNOMED eFI category), effectiveDateTime =
                    the register's extraction date, performer = the practice ODS.
caselist.added      Flag (code ELIGIBLE in FLAG_SYSTEM, status active, subject, author = practice ODS,
                    period.start, extension CRITERION_EXTENSION valueCode naming the rule that matched).
contact.recorded    Encounter from the coordination service (type coded in CONTACT_SYSTEM: first-contact,
                    face-to-face, follow-up, non-face-to-face; basedOn the ServiceRequest; status finished).
episode.opened      EpisodeOfCare (status active, careManager Practitioner identifier, referralRequest,
                    period.start, managingOrganization = the coordination service).
episode.closed      the same EpisodeOfCare with status finished and period.end, and the PIC summary
                    Composition (hub.core.pic_summary) the coordinator wrote on closing it.
caseload.long-stay  Flag (code LONG_STAY in FLAG_SYSTEM, extension EPISODE_EXTENSION naming the EpisodeOfCare)
                    when an episode has been open longer than the rules allow; the same Flag again, status
                    inactive with period.end, when that episode closes.
task.created / task.updated / task.overdue
                    Task (for Patient/{key}, code in TASK_SYSTEM, status per FHIR Task, owner, focus,
                    restriction.period.end = due, businessStatus overdue once the clock has run out).
clock.tick          Parameters {partition, time}: the hub's clock, written onto each partition of the events
                    topic so that deadlines run from the log and replay reproduces them.
pic-summary.sent / pic-summary.receipt
                    the PIC summary document Bundle for the GP (Composition, a Patient stub naming the
                    practice, the EpisodeOfCare), and the practice's receipt (Communication, status
                    completed, `about` the Composition), which closes the PIC-summary task.
huddle.agenda       List (per practice per week) of new referrals, newly eligible people, recent
                    discharges and overdue tasks; source = the practice ODS, date = the meeting. Published again
                    with extension ATTENDED_EXTENSION valueBoolean once the meeting has been held (the
                    commissioner's "huddles attended" measure), or CANCELLED_EXTENSION valueBoolean when it
                    did not take place (then it is not counted as held).
"""

from __future__ import annotations

from schemas.events.base import EventType
from schemas.events.document import DISCHARGE_SUMMARY_RECEIVED

REFERRAL_SOURCE_SYSTEM = "https://carehub.invalid/CodeSystem/referral-source"
REFERRAL_SOURCES = (
    "gp",
    "risk-stratification",
    "huddle",
    "rapid-response",
    "community-nursing",
    "adult-social-care",
    "mental-health",
    "icn-point-of-access",
    "voluntary-sector",
    "hospital",
    "care-coordination",  # an onward referral made by the coordination service itself
)
SOURCE_EXTENSION = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-SourceOfServiceRequest"
OUTCOME_EXTENSION = "https://carehub.invalid/StructureDefinition/referral-outcome"
OUTCOMES = ("contacted", "attended", "declined", "accepted", "withdrawn")
WITHDRAWN = "withdrawn"  # said only by the referral's own referrer (adapters/referrals, POST $withdraw)
ATTENDED_EXTENSION = "https://carehub.invalid/StructureDefinition/huddle-attended"
CANCELLED_EXTENSION = "https://carehub.invalid/StructureDefinition/huddle-cancelled"
MEASURE_SYSTEM = "https://carehub.invalid/CodeSystem/register-measure"
FLAG_SYSTEM = "https://carehub.invalid/CodeSystem/case-finding"
ELIGIBLE = "eligible-for-care-coordination"
LONG_STAY = "on-caseload-over-12-weeks"
CRITERION_EXTENSION = "https://carehub.invalid/StructureDefinition/case-finding-criterion"
EPISODE_EXTENSION = "https://carehub.invalid/StructureDefinition/episode-of-care"  # Flag.encounter is Encounter only
CONTACT_SYSTEM = "https://carehub.invalid/CodeSystem/coordination-contact"
CONTACT_KINDS = ("first-contact", "face-to-face", "follow-up", "non-face-to-face")
TASK_SYSTEM = "https://carehub.invalid/CodeSystem/coordination-task"
BUSINESS_STATUS_SYSTEM = "https://carehub.invalid/CodeSystem/task-business-status"
COORDINATOR_SYSTEM = "https://carehub.invalid/Id/coordinator"
SNOMED = "http://snomed.info/sct"
PATIENT_REFERRAL = "3457005"
FRAILTY = {"mild": "925791000000100", "moderate": "925831000000107", "severe": "925861000000102"}

REFERRAL_RECEIVED = EventType(
    "uk.nhs.carehub.referral.received.v1",
    "a referral to care coordination or social care, from any sector",
    ("ServiceRequest", "Patient", "Condition", "Observation"),
)
REFERRAL_OUTCOME = EventType(
    "uk.nhs.carehub.referral.outcome.v1",
    "what became of a referral: accepted, contacted, attended, declined, or withdrawn by its referrer",
    ("ServiceRequest",),
)
REGISTER_ROW = EventType(
    "uk.nhs.carehub.register.row.v1",
    "one row of a GP practice's at-risk register (risk stratification export)",
    ("Patient", "Observation"),
)
CASELIST_ADDED = EventType(
    "uk.nhs.carehub.caselist.added.v1", "a person newly meets the case-finding criteria", ("Flag",)
)
CONTACT_RECORDED = EventType(
    "uk.nhs.carehub.contact.recorded.v1", "a coordinator's contact or visit with a person", ("Encounter",)
)
EPISODE_OPENED = EventType(
    "uk.nhs.carehub.episode.opened.v1", "a referral accepted onto a coordinator's caseload", ("EpisodeOfCare",)
)
EPISODE_CLOSED = EventType(
    "uk.nhs.carehub.episode.closed.v1",
    "a person discharged from the coordination service, with the PIC summary; or, the EpisodeOfCare "
    "entered-in-error and no Composition, a duplicate stay a merge left open closed: no discharge",
    ("EpisodeOfCare", "Composition"),
)
TASK_CREATED = EventType("uk.nhs.carehub.task.created.v1", "a coordinator task with a deadline", ("Task",))
TASK_UPDATED = EventType("uk.nhs.carehub.task.updated.v1", "a coordinator task changed status", ("Task",))
TASK_OVERDUE = EventType(
    "uk.nhs.carehub.task.overdue.v1", "a task's deadline passed; escalated to the team lead", ("Task",)
)
CLOCK_TICK = EventType(
    "uk.nhs.carehub.clock.tick.v1", "the hub's clock, on every partition, so deadlines replay", ("Parameters",)
)
PIC_SUMMARY_SENT = EventType(
    "uk.nhs.carehub.pic-summary.sent.v1",
    "the PIC summary issued to the person's GP practice (a document Bundle; GP subscriptions deliver it)",
    ("Composition", "Patient", "EpisodeOfCare", "ServiceRequest"),
)
PIC_SUMMARY_RECEIPT = EventType(
    "uk.nhs.carehub.pic-summary.receipt.v1", "the GP practice received the PIC summary", ("Communication",)
)
CASELOAD_LONG_STAY = EventType(
    "uk.nhs.carehub.caseload.long-stay.v1",
    "a person has been on a coordinator's caseload longer than the rules allow (12 weeks)",
    ("Flag",),
)
HUDDLE_AGENDA = EventType("uk.nhs.carehub.huddle.agenda.v1", "a practice's weekly huddle / MDT agenda", ("List",))

# (a hospital's discharge summary names the person; what its ADT or the practice says of them stands)
PATIENT_STUB_EVENTS = frozenset(
    {REFERRAL_RECEIVED.type, REGISTER_ROW.type, PIC_SUMMARY_SENT.type, DISCHARGE_SUMMARY_RECEIVED.type}
)
NOT_RECORDED = frozenset({CLOCK_TICK.type})
ALL = (
    REFERRAL_RECEIVED,
    REFERRAL_OUTCOME,
    REGISTER_ROW,
    CASELIST_ADDED,
    CONTACT_RECORDED,
    EPISODE_OPENED,
    EPISODE_CLOSED,
    TASK_CREATED,
    TASK_UPDATED,
    TASK_OVERDUE,
    CASELOAD_LONG_STAY,
    CLOCK_TICK,
    PIC_SUMMARY_SENT,
    PIC_SUMMARY_RECEIPT,
    HUDDLE_AGENDA,
)
