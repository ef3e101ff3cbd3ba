"""The durable, tamper-evident audit store (SQLite or PostgreSQL, hash-chained).

store = AuditStore("sqlite+aiosqlite:///var/lib/opsbot/audit.db", spool_path=...)
await upgrade(url); await check_schema(url)
await store.start(); await store.close_interrupted()
await store.append(entry)            # queued; group-committed by one writer task
await store.append_durably(entry)    # returns once committed (or fsynced to the spool)
result = await store.verify()        # the first edited/deleted/reordered row, if any
await store.close()
"""

from typing import TYPE_CHECKING

from bot.audit.chain import GENESIS_HASH, ChainVerifier, VerifyResult, entry_hash
from bot.audit.record import AuditEntry, StoredEntry, canonical_json
from bot.kernel.lazy import lazy_exports

if TYPE_CHECKING:
    from bot.audit.store import AuditStore
    from bot.storage.migrate import check_schema, head_revision, upgrade

# The store and the migrations (SQLAlchemy, Alembic, asyncpg) load on first use: the
# SQLite writer process imports this package for the chain alone, and must start fast.
_LAZY = {
    "AuditStore": "bot.audit.store",
    "check_schema": "bot.storage.migrate",
    "head_revision": "bot.storage.migrate",
    "upgrade": "bot.storage.migrate",
}


__getattr__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "GENESIS_HASH",
    "AuditEntry",
    "AuditStore",
    "ChainVerifier",
    "StoredEntry",
    "VerifyResult",
    "canonical_json",
    "check_schema",
    "entry_hash",
    "head_revision",
    "upgrade",
]
