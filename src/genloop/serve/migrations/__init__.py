"""Alembic migrations of the store, configured in code (no alembic.ini): see `store.alembic_config`.

A new revision after changing `store_models.py`:

    from alembic import command
    from genloop.serve.store import alembic_config
    command.revision(alembic_config("sqlite:///scratch.db"), message="what changed", autogenerate=True)

(upgrade the scratch database to head first; review the generated file in `versions/`).
"""
