"""`carehub migrate`: bring the hub's database to this version's schema, the one command that does so
on a server's database besides the long-running `up` and `worker` (others refuse one behind)."""

from __future__ import annotations

from hub.cli_base import DataDir, app, console, make_settings


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Migrate the database (CAREHUB_DATABASE_URL, else the SQLite file in --data-dir) to this CareHub's
    schema: once every process of the older version has stopped, or before starting the newer ones."""
    import sqlalchemy as sa

    from hub.core.errors import StoreUnavailableError
    from hub.store.database import current_revision, head_revision, open_engine, upgrade

    settings = make_settings(data_dir)
    url = settings.database()
    shown = sa.make_url(url).render_as_string(hide_password=True)
    engine = open_engine(url, migrate=False)
    try:
        try:
            was = current_revision(engine)
            upgrade(engine)
        except sa.exc.OperationalError as exc:
            raise StoreUnavailableError(f"database {shown} is not answering: {exc.orig}") from exc
        head = head_revision()
        said = "already at" if was == head else f"migrated from {was or 'empty'} to"
        console.print(f"{shown}: {said} {head}", soft_wrap=True, markup=False, highlight=False)
    finally:
        engine.dispose()
