"""The atheris (libFuzzer) target for the HL7 v2 adapter: run as a script, not collected by pytest.

    .venv/bin/python tests/fuzz/hl7_target.py CORPUS_DIR -max_total_time=60

Each input goes through what the MLLP listener does with a frame: split a batch, parse, map to FHIR
events, and build the ACK from the header. The only exception allowed out is hub.core.errors.HubError
(answered AE/AR); anything else is a crash, which libFuzzer reports and saves as crash-<sha1>.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

import atheris

with atheris.instrument_imports(include=["adapters", "hl7", "hub.core"]):
    from adapters.hl7v2.message import parse, read_header, split_batch
    from adapters.hl7v2.replies import ack
    from adapters.hl7v2.to_fhir import map_message

from hub.core.errors import HubError

NOW = datetime(2026, 11, 25, tzinfo=UTC)
CANARY = os.environ.get("CAREHUB_ATHERIS_CANARY", "").encode()  # self-test: this input must be a crash


def one_input(raw: bytes) -> None:
    if CANARY and CANARY in raw:
        raise ValueError("canary: the harness reports what is not a HubError")
    adapter(raw)


def adapter(raw: bytes) -> None:
    error: HubError | None = None
    try:
        parse(raw)
    except HubError:
        pass
    try:
        for message in split_batch(raw) or [raw]:
            for event in map_message(message, key_secret=b"atheris"):
                if event.payload.get("resourceType") != "Bundle" or event.event_time.tzinfo is None:
                    raise AssertionError(f"mapped event is not a timed FHIR Bundle: {event.event_id}")
    except HubError as exc:
        error = exc
    reply = ack(read_header(raw), error, control_id="F1", now=NOW)
    if not reply.startswith(b"MSH") or reply.count(b"\r") != (2 if error is None else 3):
        raise AssertionError(f"the ACK is malformed: {reply!r}")


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
