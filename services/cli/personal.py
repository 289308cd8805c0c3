"""The `flows` commands that show or write personal data record each read in the console's access log first.

Personal data here is the assistiti's: a codice fiscale, a name, a sex, a birth date, a residence, a service
received or paid for, whether a patient objected to Sistema TS (the source records, contracts/sources.py, and the
files and feedback made from them). A command reads it when it prints it or writes it to a file:

    flows feedback N              feedback-view       the esiti's lines: record, field, message (a CF is named)
    flows feedback N --out F      feedback-download   the same, written to F
    flows files N --view NAME     file-view           a file's records (a C1 is the patients' anagrafica)
    flows export N --out DIR      files-export        every file of the instance, written to DIR
    flows dlq show ID             dead-letter-view    a message as it was sent: a source record names its patient
    flows dlq list                dead-letter-list    each dead letter's reason, which quotes a refused value
                                                      (`patient_cf: ... (got 'RSSMRA80A01F839X')`)
    flows tail ...                topic-tail          when it follows a topic of source records (PERSONAL_TOPICS),
                                                      any `.dlq` or a topic the registry does not know

Not reads of personal data (they print the platform's own facts: states, counts, codes, file names and hashes,
operators' names): `flows show` and `flows instances` (as the console's instance pages, which are not logged
either), `flows files N` without --view, `flows audit report` (feedback counts, never its lines), `flows outbox`
(a row's size, never its payload), `flows deadlines`, `flows lag`, `flows users`, `flows access-log`. What an
operator gives the CLI (`flows sources import` of a CSV, `flows send-730`'s C.F. proprietario) is not a read.

Each read is recorded before anything is shown or written, with who (cli:<FLOWS_OPERATOR or login>, as the record
of user administration names a shell's actor), what (the kind above, the instance, the entity, the file, topic or
dead letter, where it was written, the command), when, the host and the channel `cli`. When the access log cannot
be written (PostgreSQL down) the command shows nothing and says why: never a read without its record.
"""

from __future__ import annotations

import contextlib
import shlex
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from services.cli.common import UserError, operator_name

if TYPE_CHECKING:
    import asyncpg

    from services.runtime.settings import Settings

# The registry's topics whose messages are source records, or say why one was refused quoting its values. The
# others carry the platform's facts (flows.*: states, counts, codes, file names; onboarding.*: structures and their
# documents' names; audit.checkpoint; sources.stored: offsets). tests/unit/test_personal_data.py makes every
# registry topic be one or the other, so a new topic is decided, not forgotten.
# The kinds of read above (the access log's `what`; the console's labels name each in Italian, labels.ACCESS_LABELS).
READS = ("feedback-view", "feedback-download", "file-view", "files-export", "dead-letter-view", "dead-letter-list",
         "topic-tail")
PERSONAL_TOPICS = frozenset({"sources.delivered-service", "sources.payment-document", "sources.intramoenia-booking",
                             "sources.record-rejected"})


def actor() -> str:
    """Who reads, as the access log names a shell's reader: cli:<FLOWS_OPERATOR or login>."""
    return f"cli:{operator_name()}"


def command_line(*words: Any, **options: Any) -> str:
    """`flows <words> --option value ...` as the record keeps it: options that are None or False left out, a True
    flag as its name, a list repeated."""
    parts = ["flows", *(str(w) for w in words)]
    for name, value in options.items():
        flag = "--" + name.rstrip("_").replace("_", "-")
        if value is None or value is False or value == []:
            continue
        if value is True:
            parts.append(flag)
        else:
            for one in value if isinstance(value, list | tuple) else [value]:
                parts += [flag, str(one)]
    return " ".join(shlex.quote(p) if p != "flows" else p for p in parts)


def tail_reads_personal_data(topics: list[str], instance: int | None, type_prefix: str | None) -> list[str]:
    """The topics a `flows tail` of `topics` may show personal data from: those of PERSONAL_TOPICS its filters let
    through (a source record has no instance, so --instance shows none; its type is its topic's name, so --type
    flows.load shows none), every `.dlq` (a dead letter is a message as it was sent, of whatever type, maybe not
    even readable) and every topic the registry does not know (nothing says what it carries)."""
    from contracts.topics import DLQ_SUFFIX, all_topics

    known = {t.name for t in all_topics()}
    found = []
    for name in topics:
        if name.endswith(DLQ_SUFFIX) or name not in known:
            found.append(name)
        elif name in PERSONAL_TOPICS and instance is None and (type_prefix is None or name.startswith(type_prefix)):
            found.append(name)
    return found


def _refusal(command: str, problem: str) -> str:
    return (f"the access log cannot be written ({problem}): `{command}` shows personal data only once its reading is "
            "recorded, so nothing was shown nor written. Is PostgreSQL running? Try `flows stack up`, then run the "
            "command again.")


def _where(cfg: Settings) -> str:
    return f"PostgreSQL at {cfg.database_url.split('@')[-1]}"  # never the URL's user and password


@contextlib.asynccontextmanager
async def access_log_database(cfg: Settings, command: str) -> AsyncIterator[asyncpg.Pool]:
    """The database of the access log, for a command that reads its personal data elsewhere (Kafka: `flows tail`,
    `flows dlq`): unreachable, the command is refused naming the access log, before it shows anything."""
    import asyncpg

    from services.runtime.db import create_pool

    try:
        pool = await create_pool(cfg.database_url, min_size=1, max_size=4, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise UserError(_refusal(command, f"{_where(cfg)}: {type(exc).__name__}: {exc}")) from None
    try:
        yield pool
    finally:
        await pool.close()


async def record_read(pool: asyncpg.Pool, command: str, what: str, instance: int | None = None,
                      **detail: Any) -> None:
    """Records the read in the access log, before the caller shows or writes anything; refused with a clear line
    when it cannot be written (PostgreSQL gone since the command connected)."""
    import asyncpg

    from services.console.access import record_cli_access
    from services.runtime.eventstore import EventStore

    if what not in READS:
        raise ValueError(f"{what!r} is not a kind of read of services/cli/personal.py READS")
    try:
        await record_cli_access(EventStore(pool, source="/flows/cli"), actor(), what, instance, socket.gethostname(),
                                command, {k: v for k, v in detail.items() if v is not None})
    except asyncpg.UndefinedTableError:
        raise  # a database never migrated: user_errors says so (nothing is shown either)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RuntimeError) as exc:
        raise UserError(_refusal(command, f"{type(exc).__name__}: {exc}")) from None
