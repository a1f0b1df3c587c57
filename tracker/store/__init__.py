"""The run store: SQLAlchemy engines and Alembic (``db``), the tables, the ``Store`` and its records."""
