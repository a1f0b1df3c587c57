"""Alembic environment for prompt-tracker's run store.

``tracker.db`` runs migrations from code and hands us an open connection inside its own
transaction (``config.attributes["connection"]``); the ``alembic`` command line works too, with
``sqlalchemy.url`` from its ini file. ``render_as_batch`` makes ALTERs work on SQLite.
"""

from alembic import context

config = context.config
target_metadata = None  # migrations are hand-written snapshots; tests compare them to tracker.store.runstore


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        transactional_ddl=True,  # true on SQLite thanks to the recipe in tracker.db
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from tracker.store.db import make_engine, write
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with write(engine) as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
