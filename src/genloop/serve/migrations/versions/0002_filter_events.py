"""Filter events: each filter rule or input limit that fired, with the request it fired on.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01

Frozen like 0001: types spelled out, no ORM imports.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "filter_events",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("conversation_id", sa.String(length=32), nullable=True),
        sa.Column("message_id", sa.String(length=32), nullable=True),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("rule", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.String(length=200), nullable=True),
        sa.Column("api_key_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_filter_events_conversation_id_conversations"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_filter_events_message_id_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_filter_events")),
    )
    op.create_index(op.f("ix_filter_events_created_at"), "filter_events", ["created_at"])
    op.create_index(op.f("ix_filter_events_conversation_id"), "filter_events", ["conversation_id"])
    op.create_index(op.f("ix_filter_events_message_id"), "filter_events", ["message_id"])


def downgrade() -> None:
    op.drop_table("filter_events")
