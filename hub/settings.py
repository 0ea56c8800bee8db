"""One Settings object, built once in an entrypoint and passed down. Env prefix CAREHUB_."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

PREFIX = "CAREHUB_"
# CAREHUB_ variables that are no setting, read by something else (README, Settings); any other CAREHUB_
# name that is no setting is refused: a misspelt one would be ignored, and its default used, silently
NOT_SETTINGS = frozenset(
    {
        # deploy/docker-compose.yml builds settings from these: the database password and the two secrets
        "CAREHUB_DB_PASSWORD",
        "CAREHUB_KEY_SECRET",
        "CAREHUB_TOKEN_SECRET",
        # the sizes of the long tests (tests/fuzz, tests/integration)
        "CAREHUB_FUZZ_EXAMPLES",
        "CAREHUB_ATHERIS_SECONDS",
        "CAREHUB_ATHERIS_CANARY",
        "CAREHUB_CRASH_EVENTS",
        "CAREHUB_CRASH_KILLS",
        "CAREHUB_REPLAY_EVENTS",
        "CAREHUB_REPLAY_KILLED_EVENTS",
        "CAREHUB_CLOCK_PEOPLE",
    }
)
# and any name that starts with one of these: a webhook's secret (a subscription's secret_env), a test's own
NOT_SETTINGS_PREFIXES = ("CAREHUB_WEBHOOK_SECRET_", "CAREHUB_TEST_")
# what Kubernetes puts in every pod for each Service in its namespace ("service links": a Service named
# carehub, or carehub-db, gives CAREHUB_SERVICE_HOST, CAREHUB_PORT_2575_TCP_ADDR, CAREHUB_DB_SERVICE_PORT...):
# no setting has this shape (a group's field follows a double underscore), so none is taken for a typo
KUBERNETES_SERVICE_LINK = re.compile(
    r"CAREHUB(?:_[A-Z0-9]+(?:_[A-Z0-9]+)*)?_(?:SERVICE_HOST|SERVICE_PORT(?:_[A-Z0-9_]+)?|PORT(?:_[0-9]+_(?:TCP|UDP|SCTP)(?:_(?:PROTO|PORT|ADDR))?)?)"
)


class KafkaSettings(BaseModel):
    """Where Kafka is; empty bootstrap_servers means: start the embedded broker."""

    bootstrap_servers: str = ""
    group_id: str = "carehub-record"
    client_id: str = "carehub"
    publish_timeout_s: float = 5.0
    # how long a stopping `carehub up` on the embedded broker waits for its consumers to apply what
    # the broker holds in memory before it goes (a second Ctrl-C stops at once)
    drain_timeout_s: float = Field(default=300.0, ge=0)
    replication_factor: int = Field(default=1, ge=1, description="copies of each topic it creates (3 on a cluster)")


class DatabaseSettings(BaseModel):
    """The record's database; empty url means: a SQLite file under the data directory."""

    url: str = ""


def _processing_ids(ids: tuple[str, ...]) -> tuple[str, ...]:
    """MSH-11 processing ids as HL7 table 0103 has them: P, T or D (spaces and case aside)."""
    cleaned = tuple(dict.fromkeys(i.strip().upper() for i in ids))
    unknown = [i for i in cleaned if i not in ("P", "T", "D")]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: a processing id is P (production), T (training) or D (debugging)")
    return cleaned


class MllpSettings(BaseModel):
    """The hospital-facing MLLP listener."""

    host: str = "127.0.0.1"
    port: int = 2575
    max_message_bytes: int = 1_048_576
    max_connections: int = Field(
        default=200, ge=0, description="connections open at once (0: no limit); one more is closed unread"
    )
    max_connections_per_host: int = Field(
        default=50, ge=0, description="connections open at once from one address (0: no limit)"
    )
    quiet_close_s: float = Field(
        default=0.0, ge=0, description="close a connection that sends no complete frame for this long (0: never)"
    )
    processing_ids: tuple[str, ...] = Field(
        default=("P",),
        min_length=1,
        description="MSH-11 processing ids taken (HL7 table 0103: P production, T training, D debugging); "
        "any other is answered AR, ERR 202, and kept in the dead-letter store. A test hub sets P,T",
    )

    enhanced_ack_senders: tuple[str, ...] = Field(
        default=(),
        description="sending facilities (MSH-4) whose messages in enhanced acknowledgment mode (MSH-15 or "
        "MSH-16 valued) are answered as HL7 v2 says: the accept acknowledgment CA/CR where MSH-15 asks "
        "for it, then AA/AE/AR where MSH-16 does; any other sender is answered AA/AE/AR whatever they say",
    )

    @field_validator("enhanced_ack_senders")
    @classmethod
    def _senders(cls, senders: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.strip().upper() for s in senders if s.strip()))

    @field_validator("processing_ids")
    @classmethod
    def _cleaned(cls, ids: tuple[str, ...]) -> tuple[str, ...]:
        return _processing_ids(ids)


class HttpSettings(BaseModel):
    """The FHIR API."""

    host: str = "127.0.0.1"
    port: int = 8000


class SecuritySettings(BaseModel):
    """Secrets; unset means: generated once and kept in <data_dir>/secrets.json (mode 0600)."""

    key_secret: SecretStr | None = None
    token_secret: SecretStr | None = None


class PolicySettings(BaseModel):
    """Information sharing: enforce agreements and consent on every read (off only to measure its cost)."""

    enforce: bool = True
    agreements_ttl_s: float = Field(default=1.0, description="a new agreement version applies within this")


class CoordinationSettings(BaseModel):
    """Care coordination: the rule set (YAML; the shipped Croydon PIC rules if unset) and the clock."""

    enabled: bool = True
    rules: Path | None = None
    tick_s: float = Field(default=60.0, ge=0, description="how often the hub's clock ticks onto the log (0: never)")


class Settings(BaseSettings):
    """Everything configurable. Defaults run the embedded broker and a SQLite file in ./var."""

    model_config = SettingsConfigDict(env_prefix="CAREHUB_", env_nested_delimiter="__", populate_by_name=True)

    data_dir: Path = Path("var")
    kafka: KafkaSettings = KafkaSettings()
    db: DatabaseSettings = DatabaseSettings()
    mllp: MllpSettings = MllpSettings()
    http: HttpSettings = HttpSettings()
    security: SecuritySettings = SecuritySettings()
    policy: PolicySettings = PolicySettings()
    coordination: CoordinationSettings = CoordinationSettings()
    # The two names the issue and operators use, read without the prefix as well.
    kafka_bootstrap_servers: str = Field(
        default="",
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "CAREHUB_KAFKA_BOOTSTRAP_SERVERS"),
    )
    database_url: str = Field(default="", validation_alias=AliasChoices("CAREHUB_DATABASE_URL", "database_url"))

    def bootstrap_servers(self) -> str:
        """The configured Kafka, or '' to start the embedded broker."""
        return self.kafka_bootstrap_servers or self.kafka.bootstrap_servers

    def database(self) -> str:
        """The SQLAlchemy URL of the record database."""
        if self.database_url or self.db.url:
            return self.database_url or self.db.url
        return f"sqlite:///{(self.data_dir / 'carehub.db').resolve()}"


def setting_names() -> frozenset[str]:
    """Every environment variable Settings reads, upper case (pydantic-settings matches them in any case):
    CAREHUB_<FIELD>, CAREHUB_<GROUP> (the group as JSON), CAREHUB_<GROUP>__<FIELD>, and the aliases."""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        if isinstance(field.validation_alias, AliasChoices):
            names.update(str(choice).upper() for choice in field.validation_alias.choices)
            continue
        names.add(f"{PREFIX}{name.upper()}")
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            names.update(f"{PREFIX}{name.upper()}__{inner.upper()}" for inner in group.model_fields)
    return frozenset(names)


def _service_link(name: str, value: str) -> bool:
    """Whether a variable is one Kubernetes set for a Service (its `_PORT` alone holds a URL such as
    tcp://10.0.0.7:2575, so a port setting misspelt with one underscore, CAREHUB_MLLP_PORT=2575, is
    still refused)."""
    if "__" in name or not KUBERNETES_SERVICE_LINK.fullmatch(name):
        return False
    bare = name.endswith("_PORT") and not re.search(r"_SERVICE_PORT$|_PORT_[0-9]+_(?:TCP|UDP|SCTP)_PORT$", name)
    return not bare or re.match(r"(?:tcp|udp|sctp)://", value) is not None


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line for each CAREHUB_ variable in `environ` that is no setting (nor one of NOT_SETTINGS),
    naming the setting it is closest to."""
    known = setting_names()
    ours = sorted(n for n in known if n.startswith(PREFIX))
    said = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(PREFIX) or upper in known | NOT_SETTINGS or upper.startswith(NOT_SETTINGS_PREFIXES):
            continue
        if _service_link(upper, environ[name]):
            continue
        close = difflib.get_close_matches(upper, ours, n=1)
        hint = f"did you mean {close[0]}?" if close else "no setting is named like it"
        said.append(
            f"{name} names no setting ({hint}): a CAREHUB_ variable that is no setting is refused, not ignored; "
            "correct or unset it (README, Settings, lists the names)"
        )
    return said


def setting_problems(exc: ValidationError | SettingsError, environ: Mapping[str, str]) -> list[str]:
    """What is wrong with the settings, one line per error, naming the variable that set it."""
    if isinstance(exc, SettingsError):  # (a group or list setting that is not JSON)
        field = re.search(r'field "(\w+)"', str(exc))
        group = f"{PREFIX}{field.group(1).upper()}" if field else PREFIX
        return [f'{group} or a {group}__ variable: {exc} (a list is given as JSON, e.g. ["P", "T"])']
    given = {name.upper(): name for name in environ}
    said = []
    for error in exc.errors():
        parts = [str(part).upper() for part in error["loc"] if not isinstance(part, int)]
        name = parts[0] if parts and parts[0] in given else f"{PREFIX}{'__'.join(parts)}"
        if name not in given and parts and f"{PREFIX}{parts[0]}" in given:  # (the whole group, as JSON)
            name = f"{PREFIX}{parts[0]}"
        shown = name if name not in given or _secret(name) else f"{given[name]}={environ[given[name]]!r}"
        said.append(f"{shown}: {str(error['msg']).removeprefix('Value error, ')}")
    return said


def _secret(name: str) -> bool:
    return any(word in name for word in ("SECRET", "PASSWORD", "URL"))
