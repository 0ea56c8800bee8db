"""Alembic migrations, run programmatically by hub.store.database.open_engine."""
