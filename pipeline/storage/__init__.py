"""The SQL store: SQLAlchemy models, Alembic migrations and repositories (keys, history rollups)."""
