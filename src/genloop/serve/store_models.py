"""The store's tables as SQLAlchemy 2.0 ORM classes; the Alembic migrations must match them exactly."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("system", "user", "assistant", "tool")
STATUSES = ("pending", "complete", "cancelled", "error")


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite keeps no zone), returned timezone-aware, so comparisons never mix."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    # Named constraints: later migrations can drop or alter them by name (SQLite batch mode needs that).
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    title: Mapped[str | None] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    user: Mapped[str | None] = mapped_column(String(200), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="(Message.created_at, Message.id)",
    )


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (Index(None, "conversation_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    # A message's parent is the turn it answers or follows; siblings (same parent) are regenerations.
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(200))
    model_version: Mapped[str | None] = mapped_column(String(200))
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    conversation: Mapped[Conversation] = relationship(back_populates="messages")
    feedback: Mapped[list[Feedback]] = relationship(
        back_populates="message",
        cascade="all, delete-orphan",
        passive_deletes=True,
        foreign_keys="Feedback.message_id",
        order_by="(Feedback.created_at, Feedback.id)",
    )


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    message_id: Mapped[str] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    rating: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(200))
    comment: Mapped[str | None] = mapped_column(Text)
    correction: Mapped[str | None] = mapped_column(Text)
    # The sibling answer this one was picked over (regenerate-and-pick): a preference pair.
    preferred_over: Mapped[str | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

    message: Mapped[Message] = relationship(back_populates="feedback", foreign_keys=[message_id])


class FilterEvent(Base):
    """A filter rule or a limit that fired: which rule, what it did, to which request. Never the text it
    matched (a PII rule records only the kind), so the table is safe to keep and to show."""

    __tablename__ = "filter_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    request_id: Mapped[str | None] = mapped_column(String(64))
    # Deleting a conversation keeps its events (they hold no text) but forgets which one it was.
    conversation_id: Mapped[str | None] = mapped_column(
        ForeignKey("conversations.id", ondelete="SET NULL"), index=True
    )
    message_id: Mapped[str | None] = mapped_column(ForeignKey("messages.id", ondelete="SET NULL"), index=True)
    direction: Mapped[str] = mapped_column(String(8))
    rule: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(String(200))
    api_key_id: Mapped[str | None] = mapped_column(String(32))


def filter_event_dict(e: FilterEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "created_at": iso(e.created_at),
        "request_id": e.request_id,
        "conversation_id": e.conversation_id,
        "message_id": e.message_id,
        "direction": e.direction,
        "rule": e.rule,
        "action": e.action,
        "detail": e.detail,
        "api_key_id": e.api_key_id,
    }


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def message_dict(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "conversation_id": m.conversation_id,
        "parent_id": m.parent_id,
        "role": m.role,
        "content": m.content,
        "model": m.model,
        "model_version": m.model_version,
        "params": m.params,
        "prompt_tokens": m.prompt_tokens,
        "completion_tokens": m.completion_tokens,
        "latency_ms": m.latency_ms,
        "finish_reason": m.finish_reason,
        "status": m.status,
        "created_at": iso(m.created_at),
    }


def feedback_dict(f: Feedback) -> dict[str, Any]:
    return {
        "id": f.id,
        "message_id": f.message_id,
        "rating": f.rating,
        "reason": f.reason,
        "comment": f.comment,
        "correction": f.correction,
        "preferred_over": f.preferred_over,
        "kind": feedback_kind(f),
        "created_at": iso(f.created_at),
    }


def feedback_kind(f: Feedback) -> str:
    """What a feedback row teaches: preference > correction > upvote/downvote > comment."""
    if f.preferred_over:
        return "preference"
    if f.correction is not None:
        return "correction"
    if f.rating is not None:
        return "upvote" if f.rating > 0 else "downvote"
    return "comment"


def walk_up(thread: dict[str, Message], message_id: str) -> list[Message]:
    """Root-first chain of parents; stops on a missing parent or a cycle rather than looping forever."""
    chain: list[Message] = []
    seen: set[str] = set()
    current: str | None = message_id
    while current is not None and current in thread and current not in seen:
        seen.add(current)
        chain.append(thread[current])
        current = thread[current].parent_id
    return chain[::-1]


TITLE_CHARS = 60  # default title: the first user message, cut
MAX_TITLE = 200  # the column's width


def title_from(content: str, limit: int = TITLE_CHARS) -> str:
    """One line, cut with an ellipsis: a default title from the first question stays list-sized."""
    words = " ".join(content.split())
    return words if len(words) <= limit else words[: limit - 1].rstrip() + "…"
