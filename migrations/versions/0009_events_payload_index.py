"""events: a GIN index on payload (jsonb_path_ops) for the payload search filters

`payload.<path>=<value>` filters are JSONB containment (`payload @> '{"customer": {"id": 42}}'`),
which a jsonb_path_ops GIN index serves: smaller than the default jsonb_ops and made for
exactly `@>`. Built CONCURRENTLY so that ingest goes on while it builds on a large table (it
cannot run inside a transaction, hence the autocommit block); a build that was interrupted
leaves an invalid index behind, which is dropped first. SQLite (the embedded default) gets no
index: its payload filter reads the JSON with json_extract.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

INDEX = "ix_events_payload"


def upgrade():
    if op.get_context().dialect.name != "postgresql":
        return
    with op.get_context().autocommit_block():
        op.drop_index(INDEX, table_name="events", postgresql_concurrently=True, if_exists=True)
        op.create_index(
            INDEX,
            "events",
            ["payload"],
            postgresql_using="gin",
            postgresql_ops={"payload": "jsonb_path_ops"},
            postgresql_concurrently=True,
        )


def downgrade():
    if op.get_context().dialect.name != "postgresql":
        return
    with op.get_context().autocommit_block():
        op.drop_index(INDEX, table_name="events", postgresql_concurrently=True, if_exists=True)
