"""The conversation & feedback store: every chat turn and every rating, for the server and the feedback loop.

SQLAlchemy 2.0 so that a PostgreSQL URL works like the default SQLite file (`GENLOOP_HOME/genloop.db`).
Durability is the point: each write commits before its method returns, and SQLite runs in WAL mode
with `synchronous=FULL`, so a crash never loses a request or a rating that was acknowledged. The
server calls in from many threads: one short session per call, writers queue on a busy timeout.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.pool import StaticPool

from genloop.errors import UserError
from genloop.serve.store_db import (
    alembic_config,
    default_url,
    safe_url,
    sqlite_engine,
    sqlite_file,
    utcnow,
)
from genloop.serve.store_models import (
    MAX_TITLE,
    ROLES,
    STATUSES,
    Conversation,
    Feedback,
    FilterEvent,
    Message,
    feedback_dict,
    feedback_kind,
    filter_event_dict,
    iso,
    message_dict,
    title_from,
    walk_up,
)

DIRECTIONS = ("input", "output")
# Output events that make an answer a bad example: a filter stopped or masked what the model wrote.
# PII redaction ("redact") and formatting ("format") fix an answer without condemning it.
NEGATIVE_ACTIONS = ("block", "mask")


class StoreError(UserError):
    """Bad input to the store (unknown id, bad rating, ...); `http_status` is the status a server answers."""

    def __init__(self, message: str, http_status: int = 422) -> None:
        super().__init__(message)
        self.http_status = http_status


class Store:
    """Conversations, messages and feedback; each method is one committed transaction, safe across threads."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        try:
            backend = make_url(self.url).get_backend_name()
        except Exception as exc:  # sqlalchemy raises ArgumentError; keep the message to one line
            raise StoreError(
                f"bad database URL {self.url!r}: {exc}; use e.g. sqlite:///path/genloop.db"
            ) from exc
        path = sqlite_file(self.url)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create {path.parent} for the store: {exc.strerror}", 503) from exc
        if backend == "sqlite" and path is None:  # in-memory: one shared connection is the whole database
            self._writer = self._reader = sqlite_engine(self.url, "BEGIN IMMEDIATE", poolclass=StaticPool)
        elif backend == "sqlite":
            self._writer = sqlite_engine(self.url, "BEGIN IMMEDIATE")
            self._reader = sqlite_engine(self.url, "BEGIN")
        else:
            self._writer = self._reader = create_engine(self.url, pool_pre_ping=True)
        self._write = sessionmaker(self._writer, expire_on_commit=False)
        self._read = sessionmaker(self._reader, expire_on_commit=False)
        try:
            self._upgrade()
        except SQLAlchemyError as exc:
            self.close()
            reason = str(exc.orig if getattr(exc, "orig", None) else exc).splitlines()[0]
            raise StoreError(f"cannot open the store at {safe_url(self.url)}: {reason}", 503) from exc
        except BaseException:
            self.close()
            raise

    def _upgrade(self) -> None:
        """`alembic upgrade head` inside one write transaction, so two processes opening a new file queue."""
        from alembic import command
        from alembic.util.exc import CommandError

        with self._writer.begin() as conn:
            try:
                command.upgrade(alembic_config(self.url, conn), "head")
            except CommandError as exc:
                raise StoreError(
                    f"the store at {safe_url(self.url)} has a schema this genloop does not know ({exc}); "
                    "upgrade genloop or use another database",
                    503,
                ) from exc

    def close(self) -> None:
        self._writer.dispose()
        self._reader.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with self._write() as session, session.begin():
            yield session

    # -- conversations -----------------------------------------------------------------------------

    def create_conversation(self, *, model: str, title: str | None = None, user: str | None = None) -> str:
        if not model:
            raise StoreError("a conversation needs a model name; pass model='...'")
        now = utcnow()
        conv = Conversation(title=title_from(title, MAX_TITLE) if title else None, model=model, user=user)
        conv.created_at = conv.updated_at = now
        with self._writing() as s:
            s.add(conv)
        return conv.id

    def list_conversations(
        self, *, limit: int = 50, offset: int = 0, user: str | None = None
    ) -> list[dict[str, Any]]:
        """Most recently active first (a new turn moves a conversation to the top)."""
        if limit < 0 or offset < 0:
            raise StoreError(f"limit and offset must be >= 0 (got {limit}, {offset})")
        count = (
            select(func.count(Message.id))
            .where(Message.conversation_id == Conversation.id)
            .correlate(Conversation)
            .scalar_subquery()
        )
        q = select(Conversation, count).order_by(
            Conversation.updated_at.desc(), Conversation.created_at.desc(), Conversation.id
        )
        if user is not None:
            q = q.where(Conversation.user == user)
        with self._read() as s:
            rows = s.execute(q.limit(limit).offset(offset)).all()
        return [
            {
                "id": c.id,
                "title": c.title,
                "model": c.model,
                "user": c.user,
                "created_at": iso(c.created_at),
                "updated_at": iso(c.updated_at),
                "message_count": n,
            }
            for c, n in rows
        ]

    def get_conversation(self, conversation_id: str) -> dict[str, Any] | None:
        q = (
            select(Conversation)
            .where(Conversation.id == conversation_id)
            .options(selectinload(Conversation.messages).selectinload(Message.feedback))
        )
        with self._read() as s:
            c = s.scalars(q).one_or_none()
            if c is None:
                return None
            return {
                "id": c.id,
                "title": c.title,
                "model": c.model,
                "user": c.user,
                "created_at": iso(c.created_at),
                "updated_at": iso(c.updated_at),
                "messages": [
                    {**message_dict(m), "feedback": [feedback_dict(f) for f in m.feedback]}
                    for m in c.messages
                ],
            }

    def delete_conversation(self, conversation_id: str) -> bool:
        """Deletes its messages and their feedback too (foreign keys cascade)."""
        with self._writing() as s:
            conv = s.get(Conversation, conversation_id)
            if conv is None:
                return False
            s.delete(conv)
        return True

    def set_title(self, conversation_id: str, title: str) -> None:
        if not title or not title.strip():
            raise StoreError("a title cannot be empty")
        with self._writing() as s:
            self._conversation(s, conversation_id).title = title_from(title, MAX_TITLE)

    # -- messages ----------------------------------------------------------------------------------

    def add_message(
        self,
        conversation_id: str,
        role: str,
        content: str,
        *,
        parent_id: str | None = None,
        model: str | None = None,
        model_version: str | None = None,
        params: dict[str, Any] | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        latency_ms: float | None = None,
        finish_reason: str | None = None,
        status: str = "complete",
    ) -> str:
        """Add a turn; a request is stored as status="pending" before generation and finished later."""
        if role not in ROLES:
            raise StoreError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        _check_status(status)
        if not isinstance(content, str):
            raise StoreError(f"message content must be a string, not {type(content).__name__}")
        now = utcnow()
        with self._writing() as s:
            conv = self._conversation(s, conversation_id)
            if parent_id is not None:
                parent = s.get(Message, parent_id)
                if parent is None or parent.conversation_id != conversation_id:
                    raise StoreError(
                        f"parent message {parent_id!r} is not in conversation {conversation_id!r}; "
                        "pass a message id of the same conversation (or none for a first turn)",
                        404,
                    )
            msg = Message(
                conversation_id=conversation_id,
                parent_id=parent_id,
                role=role,
                content=content,
                model=model,
                model_version=model_version,
                params=params,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_ms=latency_ms,
                finish_reason=finish_reason,
                status=status,
                created_at=now,
            )
            s.add(msg)
            conv.updated_at = now
            if conv.title is None and role == "user" and content.strip():
                conv.title = title_from(content)
        return msg.id

    def finish_message(
        self,
        message_id: str,
        *,
        content: str,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        latency_ms: float | None = None,
        finish_reason: str | None = None,
        status: str = "complete",
    ) -> None:
        """Complete a pending answer; None leaves a number as it was."""
        _check_status(status)
        with self._writing() as s:
            msg = self._message(s, message_id)
            msg.content, msg.status = content, status
            for name, value in (
                ("prompt_tokens", prompt_tokens),
                ("completion_tokens", completion_tokens),
                ("latency_ms", latency_ms),
                ("finish_reason", finish_reason),
            ):
                if value is not None:
                    setattr(msg, name, value)
            msg.conversation.updated_at = utcnow()

    def last_message_id(self, conversation_id: str) -> str | None:
        q = (
            select(Message.id)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.created_at.desc(), Message.id.desc())
            .limit(1)
        )
        with self._read() as s:
            return s.scalars(q).first()

    def path_to(self, message_id: str) -> list[dict[str, Any]]:
        """The thread that led to a message: root first, following parent links (branches left out)."""
        with self._read() as s:
            msg = self._message(s, message_id)
            thread = {
                m.id: m
                for m in s.scalars(select(Message).where(Message.conversation_id == msg.conversation_id))
            }
        return [message_dict(m) for m in walk_up(thread, message_id)]

    # -- feedback ----------------------------------------------------------------------------------

    def add_feedback(
        self,
        message_id: str,
        *,
        rating: int | None = None,
        reason: str | None = None,
        comment: str | None = None,
        correction: str | None = None,
        preferred_over: str | None = None,
    ) -> str:
        if rating is not None and (isinstance(rating, bool) or rating not in (1, -1)):
            raise StoreError(f"rating must be 1 (thumbs up) or -1 (thumbs down), not {rating!r}")
        if correction is not None and not correction.strip():
            raise StoreError("a correction cannot be empty; leave it out or give the corrected answer")
        if rating is None and correction is None and preferred_over is None and not comment:
            raise StoreError("feedback needs a rating, a correction, a preferred_over answer or a comment")
        with self._writing() as s:
            msg = self._message(s, message_id)
            if msg.role != "assistant":
                raise StoreError(
                    f"message {message_id!r} is a {msg.role} message; feedback goes on assistant answers"
                )
            if preferred_over is not None:
                other = s.get(Message, preferred_over)
                if (
                    other is None
                    or other.id == msg.id
                    or other.role != "assistant"
                    or other.conversation_id != msg.conversation_id
                    or other.parent_id != msg.parent_id
                ):
                    raise StoreError(
                        f"preferred_over {preferred_over!r} is not a sibling of {message_id!r}; "
                        "it must be another assistant answer to the same turn (a regeneration)"
                    )
            fb = Feedback(
                message_id=message_id,
                rating=rating,
                reason=reason,
                comment=comment,
                correction=correction,
                preferred_over=preferred_over,
                created_at=utcnow(),
            )
            s.add(fb)
        return fb.id

    def recent_feedback(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest feedback first, each with the answer it is about (for `genloop feedback list`)."""
        q = (
            select(Feedback, Message.content, Message.model)
            .join(Message, Feedback.message_id == Message.id)
            .order_by(Feedback.created_at.desc(), Feedback.id.desc())
            .limit(max(0, limit))
        )
        with self._read() as s:
            return [
                {**feedback_dict(f), "answer": content, "model": model} for f, content, model in s.execute(q)
            ]

    def feedback_stats(self) -> dict[str, dict[str, int]]:
        """Feedback counts by rating and by kind (what each row can teach)."""
        with self._read() as s:
            rows = s.scalars(select(Feedback)).all()
        ratings = {"+1": 0, "-1": 0, "none": 0}
        kinds = {k: 0 for k in ("upvote", "downvote", "correction", "preference", "comment")}
        for f in rows:
            ratings["none" if f.rating is None else ("+1" if f.rating > 0 else "-1")] += 1
            kinds[feedback_kind(f)] += 1
        return {"rating": ratings, "kind": kinds}

    def export(
        self, kind: str, since: datetime | None = None, *, include_filtered: bool | None = None
    ) -> list[dict[str, Any]]:
        """Training rows in TRL's conversational format from feedback given at or after `since`.

        A filtered answer (an output event with a NEGATIVE_ACTIONS action) is never a good example in
        any format; with `include_filtered` (default: on for kto) each one filtered since `since` is
        also a kto row labelled false, feedback or not.
        """
        from genloop.serve.store_export import EXPORTERS, export_rows

        if kind not in EXPORTERS:
            raise StoreError(f"unknown export format {kind!r}; use one of {', '.join(EXPORTERS)}")
        if include_filtered is None:
            include_filtered = kind == "kto"
        if include_filtered and kind != "kto":
            raise StoreError(
                f"filtered answers are exported as kto rows (label false), not as {kind}; "
                "use --format kto or drop --include-filtered"
            )
        if since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=UTC)  # naive means UTC, like everything stored
        q = select(Feedback).order_by(Feedback.created_at, Feedback.id)
        if since is not None:
            q = q.where(Feedback.created_at >= since)
        bad = (
            select(FilterEvent.message_id, FilterEvent.created_at)
            .where(
                FilterEvent.direction == "output",
                FilterEvent.action.in_(NEGATIVE_ACTIONS),
                FilterEvent.message_id.is_not(None),
            )
            .order_by(FilterEvent.created_at, FilterEvent.id)
        )
        with self._read() as s:
            feedback = s.scalars(q).all()
            filtered_at = {mid: at for mid, at in reversed(s.execute(bad).all())}  # first event wins
            negatives = [
                m for m, at in filtered_at.items() if include_filtered and (since is None or at >= since)
            ]
            touched = {f.message_id for f in feedback} | set(negatives)
            ids = {m.conversation_id for m in s.scalars(select(Message).where(Message.id.in_(touched)))}
            messages = {m.id: m for m in s.scalars(select(Message).where(Message.conversation_id.in_(ids)))}
        negatives.sort(key=lambda m: filtered_at[m])
        return export_rows(kind, feedback, messages, frozenset(filtered_at), negatives)

    # -- filter events -----------------------------------------------------------------------------

    def add_filter_events(self, rows: list[dict[str, Any]]) -> list[str]:
        """Insert events in one transaction. Each row: direction, rule, action, and optionally detail,
        request_id, conversation_id, message_id (its conversation is filled in), api_key_id."""
        now = utcnow()
        events = []
        with self._writing() as s:
            for row in rows:
                if row.get("direction") not in DIRECTIONS:
                    raise StoreError(
                        f"direction must be one of {', '.join(DIRECTIONS)}, not {row.get('direction')!r}"
                    )
                row = dict(row)
                if row.get("message_id") is not None:
                    row["conversation_id"] = self._message(s, row["message_id"]).conversation_id
                elif row.get("conversation_id") is not None:
                    self._conversation(s, row["conversation_id"])
                detail = row.get("detail")  # cut to the columns' widths (PostgreSQL would refuse more)
                row["detail"] = None if detail is None else str(detail)[:200]
                row["rule"], row["action"] = str(row["rule"])[:100], str(row["action"])[:32]
                events.append(FilterEvent(created_at=now, **row))
            s.add_all(events)
        return [e.id for e in events]

    def filter_events(
        self, *, limit: int = 100, direction: str | None = None, since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Newest first."""
        q = select(FilterEvent).order_by(FilterEvent.created_at.desc(), FilterEvent.id.desc())
        if direction is not None:
            q = q.where(FilterEvent.direction == direction)
        if since is not None:
            q = q.where(FilterEvent.created_at >= (since if since.tzinfo else since.replace(tzinfo=UTC)))
        with self._read() as s:
            return [filter_event_dict(e) for e in s.scalars(q.limit(max(0, limit)))]

    def counts(self) -> dict[str, int]:
        with self._read() as s:
            return {
                "conversations": s.scalar(select(func.count(Conversation.id))) or 0,
                "messages": s.scalar(select(func.count(Message.id))) or 0,
                "feedback": s.scalar(select(func.count(Feedback.id))) or 0,
            }

    def execute(self, sql: str) -> list[tuple[Any, ...]]:
        """Run one read-only SQL statement (PRAGMAs in tests and diagnostics)."""
        with self._reader.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]

    # -- helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _conversation(s: Session, conversation_id: str) -> Conversation:
        conv = s.get(Conversation, conversation_id)
        if conv is None:
            raise StoreError(f"no conversation {conversation_id!r}; use an id the store returned", 404)
        return conv

    @staticmethod
    def _message(s: Session, message_id: str) -> Message:
        msg = s.get(Message, message_id)
        if msg is None:
            raise StoreError(f"no message {message_id!r}; use an id the store returned", 404)
        return msg


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise StoreError(f"unknown status {status!r}; use one of {', '.join(STATUSES)}")
