"""The `carehub` command: parse options, call a service, print, exit code. Nothing else.

Running the hub, feeding it files, topics, tokens and huddles are here; the auditor's and
commissioner's commands are in hub.cli_audit, the information-sharing ones in hub.cli_sharing, the
dead letters in hub.cli_deadletters."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hub.cli_base import (
    DataDir,
    HttpPort,
    MllpPort,
    app,
    console,
    counted,
    fail,
    ingest_app,
    make_settings,
    open_existing,
    refuse_local_record_on_shared_kafka,
    topics_app,
)
from hub.settings import Settings
from hub.terminal import listing, on_signal, where_table


@app.command()
def up(data_dir: DataDir = None, mllp_port: MllpPort = None, http_port: HttpPort = None) -> None:
    """Run broker (embedded unless KAFKA_BOOTSTRAP_SERVERS), consumers, MLLP and HTTP until Ctrl-C."""
    from hub.bootstrap import running

    settings = make_settings(data_dir, mllp_port, http_port)
    refuse_local_record_on_shared_kafka(settings)

    async def main() -> None:
        # (taken before it starts: a stop sent while the consumers join their groups waits for them to
        # have joined, then leaves cleanly, where Python's default killed the hub outright mid-join)
        stop = on_signal(at_once_again=bool(settings.bootstrap_servers()))  # (embedded: drain first)
        async with running(settings, advertise=True, migrate=True) as run:
            console.print(where_table(run))
            console.print("Press Ctrl-C to stop.")
            await stop.wait()

    asyncio.run(main())


@app.command()
def worker(data_dir: DataDir = None) -> None:
    """Run the consumers only; several workers share the partitions as one consumer group."""
    from hub.bootstrap import running

    settings = make_settings(data_dir)
    if not settings.bootstrap_servers():
        console.print("[red]carehub worker needs KAFKA_BOOTSTRAP_SERVERS (a shared Kafka)[/red]")
        raise typer.Exit(2)
    refuse_local_record_on_shared_kafka(settings)

    async def main() -> None:
        stop = on_signal()  # (before the 20-35 s group join: a stop sent then is a clean one, as in `up`)
        async with running(settings, mllp=False, http=False, migrate=True) as run:
            console.print(f"worker consuming from {run.bootstrap}")
            await stop.wait()

    asyncio.run(main())


@app.command()
def demo(
    data_dir: DataDir = None,
    mllp_port: MllpPort = None,
    http_port: HttpPort = None,
    people: Annotated[int, typer.Option(help="People in the synthetic locality")] = 500,
    days: Annotated[int, typer.Option(help="Days of ADT traffic")] = 30,
    seed: Annotated[int, typer.Option(help="Random seed (the same seed, the same locality)")] = 1,
    serve: Annotated[bool, typer.Option(help="Keep running after the demo")] = False,
) -> None:
    """Run the hub, feed a synthetic locality's month of ADT through MLLP, show the record."""
    from hub.demo import run_demo

    settings = make_settings(data_dir, mllp_port, http_port)
    refuse_local_record_on_shared_kafka(settings)
    code = asyncio.run(run_demo(settings, console, people=people, days=days, seed=seed, serve=serve))
    raise typer.Exit(code)


@ingest_app.command("hl7")
def ingest_hl7(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders of HL7 v2 messages")],
    data_dir: DataDir = None,
) -> None:
    """Send HL7 v2 files (single messages, several, or FHS/BHS batches) through the hospital adapter."""
    from hub.ingest import ingest_files

    settings = make_settings(data_dir)
    code = asyncio.run(ingest_files(settings, paths, console))
    raise typer.Exit(code)


@ingest_app.command("register")
def ingest_register(
    paths: Annotated[list[Path], typer.Argument(help="GP at-risk register CSV files (risk-stratification exports)")],
    extracted_on: Annotated[
        datetime | None,
        typer.Option("--extracted-on", formats=["%Y-%m-%d"], help="Extraction date for rows without extracted_on"),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Send at-risk register rows through the referrals adapter: one event per row, bad rows dead-lettered."""
    from hub.referrals_ingest import ingest_referral_files

    settings = make_settings(data_dir)
    day = extracted_on.date() if extracted_on else None
    code = asyncio.run(ingest_referral_files(settings, paths, console, fmt="register", extracted_on=day))
    raise typer.Exit(code)


@ingest_app.command("referrals")
def ingest_referrals(
    paths: Annotated[list[Path], typer.Argument(help="Referral files (JSON or CSV), or folders of them")],
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="asc-json, asc-csv, vcse-json, vcse-outcome or register (default: detect)"),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Send adult social care and voluntary-sector referrals and outcomes: one event per row or document."""
    from hub.referrals_ingest import ingest_referral_files

    settings = make_settings(data_dir)
    code = asyncio.run(ingest_referral_files(settings, paths, console, fmt=fmt))
    raise typer.Exit(code)


@topics_app.command("create")
def topics_create(data_dir: DataDir = None) -> None:
    """Create every topic of the catalogue that the Kafka at KAFKA_BOOTSTRAP_SERVERS lacks."""
    from hub.kafka import create_topics

    settings = make_settings(data_dir)
    if not settings.bootstrap_servers():
        console.print("[red]set KAFKA_BOOTSTRAP_SERVERS to the Kafka to create topics on[/red]")
        raise typer.Exit(2)
    created = asyncio.run(create_topics(settings.bootstrap_servers(), replication=settings.kafka.replication_factor))
    console.print(f"created: {', '.join(created) or 'nothing (all exist)'}")


@topics_app.command("list")
def topics_list() -> None:
    """Show the topic catalogue."""
    from schemas.topics import CATALOGUE

    table = listing("topic", "key", "partitions", "configs", "what")
    for t in CATALOGUE:
        configs = ", ".join(f"{k}={v}" for k, v in t.configs.items())
        table.add_row(t.name, t.key, str(t.partitions), configs, t.description)
    console.print(table)


# the longest a token from `carehub token` lives: a month (a signed token cannot be withdrawn before it expires)
MAX_TOKEN_HOURS = 24.0 * 31


def _lifetime(hours: float) -> float:
    """--hours, refused (exit 2, as click refuses a bad option) unless more than 0 and at most MAX_TOKEN_HOURS."""
    if hours > MAX_TOKEN_HOURS:
        raise typer.BadParameter(
            f"{hours!r}: longer than {MAX_TOKEN_HOURS:g} hours (31 days), the most a token lives (a signed token "
            "cannot be withdrawn before it expires)"
        )
    if not hours > 0:
        raise typer.BadParameter(f"{hours!r}: a token that lives no time is expired when printed; give more than 0")
    return hours


@app.command()
def token(
    org: Annotated[str, typer.Option(help="The user's organisation (ODS code)")],
    role: Annotated[str, typer.Option(help="clinician, coordinator, auditor, admin or system")],
    user: Annotated[str | None, typer.Option(help="User id (SDS user id or login)")] = None,
    hours: Annotated[
        float,
        typer.Option(callback=_lifetime, help=f"Lifetime in hours: more than 0, at most {MAX_TOKEN_HOURS:g} (31 days)"),
    ] = 12.0,
    data_dir: DataDir = None,
) -> None:
    """Print a signed bearer token that the running hub (same --data-dir) accepts."""
    from hub.api.auth import checked_claims, issue_token
    from hub.bootstrap import load_secrets

    settings = make_settings(data_dir)
    try:  # the arguments first: a bad role is the mistake to name, wherever the hub is
        checked_claims(org, role)
    except ValueError as exc:
        console.print(f"[red]{escape(str(exc))}[/red]")  # (it quotes the role as given)
        raise typer.Exit(2) from exc
    configured = settings.security.token_secret
    if configured is not None:  # (signed with it: nothing read or made in --data-dir)
        secret = configured.get_secret_value().encode()
    elif (settings.data_dir / "secrets.json").is_file():
        secret = load_secrets(settings).token
    else:  # a token signed with a secret made here would be refused by every hub: say so instead
        fail(
            f"no CareHub state in {settings.data_dir} (no secrets.json, whose secret signs the tokens its hub "
            "accepts): check --data-dir, or start the hub there first (carehub up)"
        )
    now = datetime.now(UTC)
    typer.echo(issue_token(secret, org=org, role=role, user=user, now=now, ttl=timedelta(hours=hours)))


@app.command()
def huddle(
    practice: Annotated[str, typer.Option("--practice", help="The practice's ODS code")],
    day: Annotated[str | None, typer.Option("--date", help="Meeting day, YYYY-MM-DD (default today)")] = None,
    org: Annotated[str | None, typer.Option(help="Who it is for (ODS code; default the practice)")] = None,
    publish: Annotated[
        bool | None,
        typer.Option(
            "--publish/--no-publish",
            help="Publish it as a huddle.agenda event: a huddle held, in the KPIs, once its day comes "
            "(default: only print it; --attended and --cancelled publish)",
        ),
    ] = None,
    attended: Annotated[
        bool, typer.Option(help="The meeting was held and the coordinator attended (publishes; counts in the KPIs)")
    ] = False,
    cancelled: Annotated[
        bool, typer.Option(help="The meeting did not take place (publishes; not counted as held in the KPIs)")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Print a practice's weekly huddle / MDT agenda (as its coordinator may see it); with --publish,
    --attended or --cancelled, also publish it (the KPIs count each meeting published as held)."""
    from hub.bootstrap import build
    from hub.core.huddle import UK, to_fhir_list
    from hub.core.skew import latest_day
    from schemas.events.coordination import ATTENDED_EXTENSION, CANCELLED_EXTENSION

    if attended and cancelled:
        fail("--attended and --cancelled: a meeting that did not take place was not attended; give one")
    if (attended or cancelled) and publish is False:
        fail(f"--{'attended' if attended else 'cancelled'} is said by publishing the agenda: leave out --no-publish")
    publish = bool(publish or attended or cancelled)
    practice, who_org = practice.strip().upper(), (org or practice).strip().upper()
    try:
        meeting = date.fromisoformat(day) if day else datetime.now(UK).date()
    except ValueError as exc:
        console.print(f"[red]--date: {escape(str(exc))} (use YYYY-MM-DD)[/red]")
        raise typer.Exit(2) from exc
    today = latest_day(datetime.now(UTC))
    if attended and meeting > today:  # (the KPIs would count a meeting yet to be held as attended)
        fail(f"--attended: the meeting on {meeting} has not been held yet (today is {today} in the UK)")
    state = open_existing(data_dir)  # (a mistyped --data-dir: an empty agenda, published into a new hub)
    settings = state.settings
    services = build(settings, engine=state.engine)
    shown = _decided_agenda(services, practice, meeting, who_org)
    console.print(_agenda_table(shown))
    if shown.withheld_people or shown.withheld_items:
        console.print(f"{shown.withheld_people} person(s), {shown.withheld_items} item(s) withheld by the policy")
    if publish:
        agenda = to_fhir_list(shown)
        for said, url in ((attended, ATTENDED_EXTENSION), (cancelled, CANCELLED_EXTENSION)):
            if said:
                agenda["extension"] = [*agenda.get("extension", []), {"url": url, "valueBoolean": True}]
        event = asyncio.run(_publish_agenda(settings, services, agenda))
        console.print(f"published {event}")
    else:
        console.print(
            "printed only, not published: --publish publishes it (the KPIs then count a huddle held once its day "
            "comes), --attended or --cancelled after the meeting say how it went"
        )


def _decided_agenda(services: Any, practice: str, meeting: date, org: str) -> Any:
    """The agenda as `org`'s coordinator may see it, each decision in the ledger; another GP practice's
    is refused (exit 1), the refusal in the ledger too."""
    from hub.api.auth import Principal
    from hub.api.routes.fhir import Judge, record
    from hub.core.errors import ConsentDeniedError, InvalidMessageError
    from hub.core.policy import Asker
    from hub.web.views import decided_agenda, refused

    who = Principal(org=org, role="coordinator", user="carehub-cli")
    now = datetime.now(UTC)

    def refuse(reason: str) -> None:
        services.ledger.append([refused(who.org, who.user, who.role, practice, reason, now)])

    try:
        return decided_agenda(
            services.reader,
            practice,
            meeting,
            Judge(services.policy, Asker(who.org, who.role, now)),
            lambda judged: record(services.ledger, who, "huddle", judged),
            viewer=(who.org, who.role),
            refuse=refuse,
            service=services.rules.rules.service.ods,
        )
    except ConsentDeniedError as exc:
        fail(f"--org {who.org}: {exc.diagnostics} (the refusal is recorded in the disclosure ledger)", 1)
    except InvalidMessageError as exc:
        console.print(f"[red]{escape(exc.diagnostics)}[/red]")
        raise typer.Exit(2) from exc


def _agenda_table(shown: Any) -> Table:
    from hub.core.huddle import SECTIONS
    from hub.web.views import nhs_text, when_text

    first, last = shown.window
    title = f"Huddle agenda {shown.practice_name or shown.practice_ods}, {shown.meeting_date} ({first} to {last})"
    table = listing("section", "name", "NHS number", "what", "when / due", title=escape(title))
    for item in shown.items:
        cells = (SECTIONS[item.section], item.name or "", nhs_text(item.nhs_number), item.what, when_text(item))
        table.add_row(*(escape(c) for c in cells))
    return table


async def _publish_agenda(settings: Settings, services: Any, fhir_list: dict[str, Any]) -> str:
    """Publish the List on the events topic (with the embedded broker, the record applies it first)."""
    import orjson

    from hub.bootstrap import running
    from hub.core.huddle import event_id
    from hub.embedded import one_off_log, shared_kafka
    from schemas.envelope import Envelope
    from schemas.events.coordination import HUDDLE_AGENDA

    practice = fhir_list["identifier"][0]["value"].split("/")[0]
    envelope = Envelope(
        id=event_id(fhir_list),
        source=f"urn:ods:{practice}",
        type=HUDDLE_AGENDA.type,
        time=datetime.now(UTC),
        subject=f"urn:ods:{practice}",
        data=orjson.dumps(fhir_list),
    )
    embedded = not shared_kafka(settings)  # (else the running hub's consumers apply it)
    async with running(settings, services=services, mllp=False, http=False, consumers=embedded) as run:
        if run.publish is None:
            raise RuntimeError("the hub started without a publisher")
        await run.publish(envelope)
        if embedded and not await run.applied_ids([envelope.id]):
            console.print("[yellow]the record had not applied the agenda before the timeout[/yellow]")
    if embedded:
        console.print(f"[yellow]{escape(one_off_log(settings.data_dir))}[/yellow]", soft_wrap=True)
    entries = counted(len(fhir_list.get("entry", [])), "entry", "entries")
    return f"{HUDDLE_AGENDA.type} {envelope.id} (List/{fhir_list['id']}, {entries})"


# the other commands register themselves on the apps as their modules load
from hub import cli_audit, cli_database, cli_deadletter_actions, cli_deadletters, cli_record, cli_sharing  # noqa: E402, F401

# what a path the command was given, and could not use, was wrong with (as the person should read it)
_PATH_PROBLEMS: dict[type[OSError], str] = {
    FileExistsError: "it exists and is not a folder",
    NotADirectoryError: "part of it is a file, not a folder",
    IsADirectoryError: "it is a folder, not a file",
    FileNotFoundError: "no such file or folder",
    PermissionError: "permission denied",
}


def main() -> None:
    """The `carehub` console script: the app, with a file or folder it cannot use, a database or a
    Kafka that does not answer, told in one line and an exit code (2: a path given wrong; 1: anything
    else), never as a traceback."""
    from aiokafka.errors import KafkaConnectionError

    from hub.core.errors import HubError
    from hub.store.database import DatabaseRefusedError

    try:
        app()  # (exits)
        return
    except OSError as exc:
        problem = next((said for kind, said in _PATH_PROBLEMS.items() if isinstance(exc, kind)), None)
        where = f"{exc.filename}: " if exc.filename is not None else ""
        told, code = f"carehub: {where}{problem or exc.strerror or exc}", 2 if problem else 1
    except DatabaseRefusedError as exc:  # (a schema or a secret that is not this hub's: as a bad path)
        told, code = f"carehub: {exc}", 2
    except HubError as exc:
        told, code = f"carehub: {exc}", 1
    except KafkaConnectionError as exc:
        told, code = f"carehub: {_unreachable(exc)}", 1
    console.print(f"[red]{escape(' '.join(told.split()))}[/red]", soft_wrap=True)  # (drivers' errors span lines)
    raise SystemExit(code)


def _unreachable(exc: Exception) -> str:
    """A Kafka that does not answer (aiokafka's "Unable to bootstrap from [...]"), as the person who
    configured it reads it: its bootstrap servers as set, and what to check."""
    import re

    settings = Settings()
    if settings.kafka_bootstrap_servers or settings.kafka.bootstrap_servers:
        named = "KAFKA_BOOTSTRAP_SERVERS" if settings.kafka_bootstrap_servers else "CAREHUB_KAFKA__BOOTSTRAP_SERVERS"
        return (
            f"Kafka at {settings.bootstrap_servers()} ({named}) cannot be reached: check {named} and that "
            "Kafka runs there and takes connections from this machine"
        )
    tried = ", ".join(f"{host}:{port}" for host, port in re.findall(r"\('([^']*)', (\d+)", str(exc))) or str(exc)
    return (
        f"the embedded Kafka broker at {tried} cannot be reached: check that the hub running on --data-dir "
        "(carehub up) still runs, or set KAFKA_BOOTSTRAP_SERVERS"
    )
