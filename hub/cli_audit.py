"""The auditor's and the commissioner's commands: the disclosure ledger, policy time travel, the
log export and the KPIs (registered on hub.cli's app; replay and the record's hash are in
hub.cli_record)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from hub.cli_audit_reports import (
    UNVERIFIED,
    came_to,
    chain_verdict,
    disclosures_csv,
    disclosures_summary,
    private_file,
    refuse_dash,
    refuse_unknown,
    selected_rows,
    time_travel_csv,
    trusted_ledger,
)
from hub.cli_base import (
    NO_LOG,
    WHEN,
    DataDir,
    HeldDir,
    app,
    audit_app,
    cells,
    console,
    counted,
    fail,
    make_settings,
    open_existing,
    refuse_backwards,
)
from hub.instants import UK, from_, up_to
from hub.terminal import listing


@audit_app.command("verify")
def audit_verify(
    head: Annotated[
        str | None,
        typer.Option(
            help="SEQ:HASH of a head kept earlier (verify prints it, an export signs it): proves that no entry "
            "up to it was changed or cut"
        ),
    ] = None,
    data_dir: HeldDir = None,
) -> None:
    """Recompute the ledger's hash chain; name the first entry altered, removed or reordered. Only
    against a head kept outside the hub (--head) does it prove nothing was changed."""
    from hub.core.ledger import verify
    from hub.store.ledger import SqlLedger

    anchor = None
    if head is not None:
        seq, _, digest = head.strip().partition(":")
        digest = digest.lower()  # (a head copied through a letter or a spreadsheet may change case)
        if (
            not (seq.isascii() and seq.isdigit())
            or int(seq) < 1
            or len(digest) != 64
            or not set(digest) <= set("0123456789abcdef")
        ):
            console.print("[red]--head: give SEQ:HASH as `carehub audit verify` printed it (HASH: 64 hex digits)[/red]")
            raise typer.Exit(2)
        anchor = (int(seq), digest)
    entries = list(SqlLedger(open_existing(data_dir).engine).entries())
    checked, broken = verify(entries, anchor)
    if broken:
        read = counted(checked, "entry", "entries")
        console.print(f"[red]ledger broken at entry {broken.seq}: {broken.problem}[/red] ({read} read)")
        raise typer.Exit(1)
    today = f"{entries[-1].seq}:{entries[-1].hash}" if entries else None
    console.print(chain_verdict(checked, anchor, today), soft_wrap=True)
    if today is not None:
        console.print(
            f"head {today} (keep it outside the hub, with the auditor or in a signed export: a later "
            f"`carehub audit verify --head {today}` proves nothing up to it was changed or cut)",
            soft_wrap=True,
        )


@audit_app.command("disclosures")
def audit_disclosures(
    nhs_number: Annotated[str, typer.Option("--nhs-number", help="The person's NHS number")],
    csv_out: Annotated[
        Path | None,
        typer.Option("--csv", help="Also write the decisions to this CSV file (every column in full)"),
    ] = None,
    unverified: UNVERIFIED = False,
    data_dir: HeldDir = None,
) -> None:
    """Subject-access request: who was given what about this person, when, and on what basis (and
    who was refused: a denial is recorded too, though nothing was disclosed). A webhook or mailbox
    delivery is an attempt: it says whether it was disclosed, possibly disclosed or not sent at all."""
    from hub.core import nhs_number as nhs
    from hub.core.identity import identities, person_key
    from hub.core.ledger import results
    from hub.store.ledger import SqlLedger
    from hub.store.sql import SqlRecordReader

    refuse_dash("--csv", csv_out)
    problem = nhs.why_invalid(nhs_number)
    if problem:
        console.print(f"[red]--nhs-number: {problem}[/red]")
        raise typer.Exit(2)
    state = open_existing(data_dir, person_keys=True)
    trust = trusted_ledger(state.engine, unverified=unverified)
    key = person_key(state.key, nhs.normalise(nhs_number), None)
    table = listing("#", "when", "to (org / user)", "how", "decision", "disclosed", "resources", "basis")
    entries = SqlLedger(state.engine).about(*identities(SqlRecordReader(state.engine), key))
    refuse_unknown(state.engine, key, entries, nhs_number)
    came = results(entries)  # (a result entry is not a decision: it is said on its attempt's row)
    decisions = [entry for entry in entries if entry.seq in came]
    for entry in decisions:
        body = entry.body
        who = f"{body['recipient_org']} / {body['recipient_user']}"
        resources = "\n".join(r.split("#")[0] for r in body["resources"])
        said = (body["channel"], body["decision"], came_to(came[entry.seq]), resources, "; ".join(body["reasons"]))
        table.add_row(*cells(entry.seq, body["at"], who, *said))
    console.print(table)
    if csv_out is not None:
        disclosures_csv(decisions, came, csv_out, trust)
        console.print(escape(f"wrote {counted(len(decisions), 'decision')} to {csv_out}"), soft_wrap=True)
    console.print(disclosures_summary([(entry.body["decision"], came[entry.seq]) for entry in decisions]))


@audit_app.command("time-travel")
def audit_time_travel(
    nhs_number: Annotated[str | None, typer.Option("--nhs-number", help="One person (else everyone)")] = None,
    since: Annotated[
        datetime | None, typer.Option(parser=from_, help=f"Decisions from this time ({WHEN}: its start)")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option(parser=up_to, help=f"Decisions up to this time ({WHEN}: its end)")
    ] = None,
    changed: Annotated[
        bool, typer.Option("--changed", help="Only what today's policy would decide differently")
    ] = False,
    cannot_tell: Annotated[
        bool,
        typer.Option(
            "--cannot-tell",
            help="Only the rows whose today is 'cannot tell' (which --changed counts but does not list): each "
            "decided again on other content than was disclosed, the reason in its last column; with --changed, "
            "these rows and the changed ones",
        ),
    ] = False,
    csv_out: Annotated[
        Path | None,
        typer.Option("--csv", help="Also write the rows to this CSV file (every column in full, for a spreadsheet)"),
    ] = None,
    unverified: UNVERIFIED = False,
    data_dir: HeldDir = None,
) -> None:
    """What was disclosed then, under which agreement and consent versions, and what today's policy would decide.

    On content other than was disclosed today may say "cannot tell": --cannot-tell lists those rows."""
    from hub.core import nhs_number as nhs
    from hub.core.identity import identities, person_key
    from hub.core.ledger import DISCLOSED, REFUSED, results
    from hub.core.timetravel import CANNOT_TELL, in_period, people_of, reconsider, with_origins
    from hub.store.agreements import PolicySource, SqlAgreements
    from hub.store.ledger import SqlLedger
    from hub.store.sql import SqlRecordReader

    refuse_dash("--csv", csv_out)
    refuse_backwards(since, until)
    problem = nhs.why_invalid(nhs_number) if nhs_number is not None else None
    if problem:
        fail(f"--nhs-number: {problem}")
    state = open_existing(data_dir, person_keys=nhs_number is not None)
    trust = trusted_ledger(state.engine, unverified=unverified)
    ledger, reader = SqlLedger(state.engine), SqlRecordReader(state.engine)
    if nhs_number is not None:
        key = person_key(state.key, nhs.normalise(nhs_number), None)
        entries = ledger.about(*identities(reader, key))
        refuse_unknown(state.engine, key, entries, nhs_number)
    else:
        entries = list(ledger.entries())
    came = results(entries)  # (before the period: an attempt's result may be recorded after it ends)
    entries = in_period([e for e in entries if e.seq in came], since, until)
    stored = SqlAgreements(state.engine)
    policy = PolicySource(stored, reader)
    refs = {"/".join(str(r).split("#")[0].split("/")[:2]) for e in entries for r in e.body.get("resources") or []}
    resources = {ref: reader.read(*ref.split("/", 1)) for ref in refs if "/" in ref}
    # (a Task is bounded by its referral even where the referral itself was never disclosed)
    resources = with_origins(resources, lambda ref: reader.read(*ref.split("/", 1)))
    consents = [rule for person in sorted(people_of(entries, resources)) for rule in policy.consents(person)]
    rows = reconsider(entries, resources, policy.agreements(), consents, datetime.now(UTC), history=stored.history())
    table = listing("#", "when", "to", "how", "resource", "then", "on", "today", "on", title="Policy time travel")
    shown = selected_rows(rows, changed=changed, cannot_tell=cannot_tell)
    for r in shown:
        today = f"[bold yellow]{escape(r.now)}[/bold yellow]" if r.changed else escape(r.now)
        sent = came[r.seq].outcome
        then = r.then if sent in (DISCLOSED, REFUSED) else f"{r.then} ({sent})"  # (an attempt: see disclosures)
        table.add_row(
            *cells(r.seq, r.at, r.recipient, r.channel, r.resource, then, r.then_basis), today, escape(r.now_basis)
        )
    console.print(table)
    if csv_out is not None:
        time_travel_csv(shown, csv_out, trust, came)
        console.print(escape(f"wrote {counted(len(shown), 'row')} to {csv_out}"), soft_wrap=True)
    differ = sum(r.changed for r in rows)
    about = counted(len(entries), "ledger entry", "ledger entries")
    unsure = sum(r.now == CANNOT_TELL for r in rows)
    console.print(
        f"{len(rows)} decision(s) about {about}; today's policy differs on {differ:,}"
        + (f"; {unsure:,} cannot tell (decided again on other content than was disclosed)" if unsure else "")
    )


@audit_app.command("export")
def audit_export(
    out: Annotated[Path, typer.Option(help="The NDJSON file to write (its public key goes beside it, .pub.pem)")],
    payloads: Annotated[
        bool, typer.Option(help="Include payloads the auditor's agreements permit (else hashes only)")
    ] = False,
    org: Annotated[str, typer.Option(help="The auditor's organisation (ODS code), for --payloads")] = "",
    user: Annotated[str, typer.Option(help="The auditor, as the ledger should name them")] = "auditor",
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Lines between signed checkpoints")] = 10_000,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out and its .pub.pem if they exist")] = False,
    data_dir: DataDir = None,
) -> None:
    """Export the event log for auditors: NDJSON with payload hashes and Ed25519-signed checkpoints,
    verifiable without the hub (python hub/export_verify.py FILE FILE.pub.pem); prints the public
    key's fingerprint for the auditor to confirm through another channel."""
    from hub.bootstrap import build
    from hub.core.policy import Asker, covers_audit, decide, person_of
    from hub.export import export, public_pem, signing_key
    from hub.export_verify import fingerprint
    from hub.store.agreements import PolicySource

    refuse_dash("--out", out)
    settings = make_settings(data_dir)
    from hub.embedded import shared_kafka

    bootstrap = shared_kafka(settings)
    if not bootstrap:
        console.print(f"[red]carehub audit export {NO_LOG}[/red]")
        raise typer.Exit(2)
    org = org.strip()
    if payloads and not org:
        console.print("[red]--payloads needs --org: payloads follow the auditor's own agreements[/red]")
        raise typer.Exit(2)
    if org and not payloads:  # (it would be ignored: hashes only, decided for nobody)
        fail(
            "--org is used only with --payloads (payloads follow the auditor's own agreements): "
            "add --payloads, or leave out --org for hashes only"
        )
    key_file = _refuse_out(out, force=force)
    state = open_existing(data_dir)  # (a mistyped --data-dir: said, and nothing made there)
    services = build(state.settings, engine=state.engine)
    key = signing_key(settings.data_dir)
    judge = None
    if payloads:
        policy = services.policy or PolicySource(services.agreements, services.reader)
        agreements, asker = policy.agreements(), Asker(org.strip().upper(), "auditor", datetime.now(UTC))
        if not covers_audit(agreements, asker):
            # every payload but the auditor's own would be withheld, each refusal a ledger entry
            fail(
                f"--org {asker.org}: no sharing agreement in force today names {asker.org} as a party for audit, "
                "so every payload it did not supply itself would be withheld: check --org (carehub agreements "
                "list), or leave out --payloads for hashes only"
            )

        def judge(resource: dict[str, Any]) -> Any:
            person = person_of(resource)
            return decide(asker, resource, agreements, policy.consents(person) if person else [])

    with private_file(out, "wb") as target:  # (names and NHS numbers, with --payloads)
        summary = asyncio.run(
            export(
                bootstrap,
                target,
                key,
                payloads=judge,
                ledger=services.ledger,
                auditor=(org.strip().upper() or "none", user),
                every=checkpoint_every,
            )
        )
    public = key_file
    public.write_bytes(public_pem(key))
    console.print(
        f"{counted(summary.events, 'event')}, {counted(summary.checkpoints, 'signed checkpoint')}"
        + (f", {counted(summary.payloads, 'payload')} included, {summary.withheld:,} withheld" if payloads else "")
        + f"; written to {out}, public key {public}"
    )
    # the key travels with the file: the auditor confirms this through another channel
    console.print(f"public key fingerprint (SHA-256 of its DER): {fingerprint(public_pem(key))}", soft_wrap=True)
    if summary.ledger_head is not None:
        console.print(
            f"disclosure ledger head {summary.ledger_head} signed in the final checkpoint: with the export kept, "
            f"`carehub audit verify --head {summary.ledger_head}` later proves no entry up to it was changed or cut",
            soft_wrap=True,
        )


def _refuse_out(out: Path, *, force: bool) -> Path:
    """Exit 2, before anything is read or written, unless --out and the public key beside it (which
    it returns) can be written: neither a folder, neither overwritten unasked, in a folder that is."""
    if out.is_dir():
        fail(f"--out {out} is a folder: give the file to write, e.g. {out / 'log.ndjson'}")
    key_file = out.with_name(out.name + ".pub.pem")
    if key_file.is_dir():  # (--force overwrites a file, never a folder: found only after the export)
        fail(f"--out {out}: {key_file}, where its public key goes, is a folder: move it, or give another --out")
    for existing in (out, key_file):
        if existing.exists() and not force:
            fail(f"--out: {existing} exists: give a new file, or add --force to overwrite it")
    if not out.parent.is_dir():
        fail(f"--out {out}: there is no folder {out.parent}: make it first, or give a file in an existing folder")
    return key_file


@app.command()
def kpi(
    month: Annotated[str, typer.Option(help="The month, YYYY-MM")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for kpi-YYYY-MM.csv, kpi-YYYY-MM-trend.csv and kpi-YYYY-MM.html",
            show_default="the data folder's kpi/",
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """The commissioner's KPIs for a month, computed from the event log: CSV and an HTML report with charts."""
    from hub.kpi_report import COMPLETE, checked_month, fold_log, months_counted, skipped_note, write_report
    from hub.rules import load_rules

    try:
        month = checked_month(month, datetime.now(UTC).astimezone(UK).date())
    except ValueError as exc:
        fail(f"--month {exc}")
    settings = make_settings(data_dir)
    out = out if out is not None else settings.data_dir / "kpi"  # (beside the hub's data, wherever it is run from)
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file: give a folder for kpi-{month}.csv and kpi-{month}.html")
    from hub.embedded import shared_kafka

    bootstrap = shared_kafka(settings)
    if not bootstrap:
        console.print(f"[red]carehub kpi {NO_LOG}[/red]")
        raise typer.Exit(2)
    rules = load_rules(settings.coordination.rules)
    fold, read = asyncio.run(fold_log(bootstrap, rules.service.ods))
    rows, said = write_report(fold, month, out, title=rules.service.name, now=datetime.now(UTC))
    table = listing("KPI", "breakdown", "value", "target")
    for row in rows:  # practice, source and coordinator codes come from payloads: text, never markup
        value = "n/a" if row.value is None else f"{row.value:g}"
        table.add_row(escape(row.kpi), escape(row.breakdown), value, escape(row.target))
    console.print(table)
    if fold.skipped:
        console.print(f"[yellow]{escape(skipped_note(fold.skipped))}[/yellow]")
    held = months_counted(fold)
    if month not in held:  # (a mistyped month reads as a quiet one)
        console.print(f"[yellow]{escape(_no_events_note(month, held, read))}[/yellow]", soft_wrap=True)
    colour = "green" if said.status == COMPLETE else "yellow"
    console.print(f"[{colour}]{month}: {escape(said.status)}[/{colour}]", soft_wrap=True)
    console.print(escape(f"{read:,} events read; wrote {out / f'kpi-{month}.csv'} and {out / f'kpi-{month}.html'}"))


def _no_events_note(month: str, held: set[str], read: int) -> str:
    if not held:
        return (
            f"warning: of the {counted(read, 'event')} on the log, none is one the KPIs count: every figure is 0 or n/a"
        )
    span = min(held) if len(held) == 1 else f"{min(held)} to {max(held)}"
    return (
        f"warning: the log holds no events in {month} that the KPIs count (they fall in {span}): "
        f"the report for {month} was written all the same; check --month"
    )
