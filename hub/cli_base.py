"""What every `carehub` command shares: the Typer apps, the console and the common options."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from hub.settings import HttpSettings, MllpSettings, Settings

app = typer.Typer(help="CareHub: joins up health and social care around one person.", no_args_is_help=True)


@app.callback()
def _logging(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at DEBUG (may show patient data)")] = False,
) -> None:
    """Logs go to stderr at INFO (WARNING for the Kafka client libraries); --verbose for DEBUG."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        for noisy in ("carehub.kafka", "faststream", "aiokafka", "uvicorn", "alembic", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


topics_app = typer.Typer(help="The Kafka topic catalogue.", no_args_is_help=True)
ingest_app = typer.Typer(help="Feed files into the hub.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(ingest_app, name="ingest")
agreements_app = typer.Typer(help="Information sharing agreements.", no_args_is_help=True)
app.add_typer(agreements_app, name="agreements")
optouts_app = typer.Typer(help="The national data opt-out.", no_args_is_help=True)
app.add_typer(optouts_app, name="optouts")
subscriptions_app = typer.Typer(help="Organisations' subscriptions to events.", no_args_is_help=True)
app.add_typer(subscriptions_app, name="subscriptions")
deliveries_app = typer.Typer(help="Webhook deliveries: see them, redeliver failed ones.", no_args_is_help=True)
app.add_typer(deliveries_app, name="deliveries")
record_app = typer.Typer(help="The shared care record.", no_args_is_help=True)
app.add_typer(record_app, name="record")
audit_app = typer.Typer(
    help="For auditors: verify the disclosure ledger, subject access, policy time travel, log export.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")
console = Console()
M = TypeVar("M", bound=BaseModel)
# how a moment is typed (hub.instants)
WHEN = "ISO 8601; without an offset, UK time; a date alone"

DataDir = Annotated[Path, typer.Option("--data-dir", help="Where the hub keeps its state")]
MllpPort = Annotated[int, typer.Option("--mllp-port", help="MLLP listener port (0 = any free)")]
HttpPort = Annotated[int, typer.Option("--http-port", help="FHIR API port (0 = any free)")]


def make_settings(data_dir: Path, mllp_port: int | None = None, http_port: int | None = None) -> Settings:
    """Settings from the environment, with the command line's options on top."""
    base = Settings(data_dir=data_dir)
    update: dict[str, object] = {}
    if mllp_port is not None:
        update["mllp"] = MllpSettings(**{**base.mllp.model_dump(), "port": mllp_port})
    if http_port is not None:
        update["http"] = HttpSettings(**{**base.http.model_dump(), "port": http_port})
    return base.model_copy(update=update)
