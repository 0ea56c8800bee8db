"""SQLAlchemy 2 implementations of the ports (SQLite file by default, PostgreSQL in production) and memory fakes."""
