"""The hash chain: pure functions, no I/O.

Row ``seq`` carries a hash of ``prev_hash LF seq LF canonical_json(fields)``, where
``prev_hash`` is the hash of row ``seq - 1``, or the genesis/anchor hash for the first row.
Editing, deleting, inserting or reordering any row breaks the chain at that row, and
:class:`ChainVerifier` names the first such row.

Keyed rows
    A plain SHA-256 chain proves nothing against someone who can write the database: they
    edit a row and compute every hash after it again. So a row written with a key
    (``[audit] key_file`` / ``OPSBOT_AUDIT_KEY``, kept outside the database) carries
    ``HMAC-SHA256(key, key_id LF prev_hash LF seq LF canonical)`` and the key's id in
    ``key_id``; without the key nobody can make a row that verifies. Rows written before a
    key was configured keep their SHA-256 hash (``key_id`` NULL) and stay verifiable: they
    are covered by the first keyed row after them, whose HMAC takes their hash.

    The key in use changes only at a ``audit_key`` event row, which names the new key's id
    and is itself keyed with it (the writer adds one before the first row it writes with
    a key the chain's last row does not carry). Once keyed, the chain never goes back to
    unkeyed rows.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime

import msgspec
from msgspec import Struct

from bot.audit.record import AuditEntry, StoredEntry

GENESIS_HASH = "0" * 64
KEY_EVENT = "audit_key"  # the kind of the event row where a key starts
MIN_KEY_CHARS = 32
_KEY_ID_LABEL = b"opsbot audit key id"


class ChainKey(Struct, frozen=True):
    """A secret the chain is keyed with, and its public id (derived from the secret, so a
    key cannot be given the id of another)."""

    secret: bytes
    key_id: str = ""

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(
            self, "key_id", hmac.new(self.secret, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]
        )

    def __repr__(self) -> str:
        return f"ChainKey(key_id={self.key_id!r})"  # never the secret

    @classmethod
    def from_text(cls, text: str) -> ChainKey:
        """A key as it is written in a key file or the environment. Raises ValueError."""
        material = text.strip()
        if len(material) < MIN_KEY_CHARS:
            raise ValueError(
                f"an audit key must be at least {MIN_KEY_CHARS} characters "
                "(make one with `openssl rand -hex 32`)"
            )
        if not material.isascii() or not material.isprintable():
            raise ValueError("an audit key must be printable ASCII (use `openssl rand -hex 32`)")
        return cls(material.encode("ascii"))


def entry_hash(prev_hash: str, entry: AuditEntry, seq: int, key: ChainKey | None = None) -> str:
    return hash_of(prev_hash, seq, entry.canonical(), key)


def hash_of(prev_hash: str, seq: int, canonical: str, key: ChainKey | None = None) -> str:
    """The hash of row ``seq`` whose entry's canonical form is ``canonical``."""
    if key is None:
        return hashlib.sha256(f"{prev_hash}\n{seq}\n{canonical}".encode()).hexdigest()
    message = f"{key.key_id}\n{prev_hash}\n{seq}\n{canonical}".encode()
    return hmac.new(key.secret, message, hashlib.sha256).hexdigest()


def link(prev_hash: str, seq: int, entry: AuditEntry, key: ChainKey | None = None) -> StoredEntry:
    """``entry`` placed at ``seq`` after a row whose hash is ``prev_hash``."""
    return StoredEntry(
        seq=seq,
        prev_hash=prev_hash,
        hash=entry_hash(prev_hash, entry, seq, key),
        entry=entry,
        key_id=None if key is None else key.key_id,
    )


def key_event(key: ChainKey, previous_key_id: str | None, at: datetime, replica: str) -> AuditEntry:
    """The event row that starts ``key``, at the time of the first row written with it."""
    return AuditEntry(
        request_id=f"audit-key-{key.key_id}",
        at=at,
        stage="event",
        kind=KEY_EVENT,
        args={"key_id": key.key_id, "previous_key_id": previous_key_id or ""},
        status="ok",
        detail=f"audit rows are keyed with key {key.key_id} from here on"
        + (f" (was {previous_key_id})" if previous_key_id else " (were unkeyed)"),
        replica=replica,
    )


class TableEnds(Struct, frozen=True):
    """What the table says about the chain's ends: the head row's (seq, hash), the
    retention anchor's (seq, hash); None where the row is missing."""

    head: tuple[int, str] | None
    anchor: tuple[int, str] | None


class VerifyResult(Struct, frozen=True):
    ok: bool
    checked: int  # rows whose links were checked
    problem: str | None = None  # the first problem, in words
    seq: int | None = None  # where it is
    keyed: int = 0  # of the rows checked, those keyed (HMAC) rather than plain SHA-256
    witnessed: int = 0  # of the rows checked, those matching a witness point

    def __str__(self) -> str:
        if self.ok:
            keyed = f", {self.keyed} keyed" if self.keyed else ", none keyed"
            witness = f", {self.witnessed} witnessed" if self.witnessed else ""
            return f"audit chain ok: {self.checked} row(s) verified{keyed}{witness}"
        return f"audit chain BROKEN after {self.checked} good row(s): {self.problem}"


class ChainVerifier:
    """Feed rows in ``seq`` order; stops at the first problem.

    It starts from an anchor: ``(0, GENESIS_HASH)`` for a full chain, or the last row that
    retention removed, so that what remains still verifies. ``keys``: the keys it may need,
    by id (the current one and any earlier ones).
    """

    def __init__(
        self,
        anchor_seq: int = 0,
        anchor_hash: str = GENESIS_HASH,
        keys: Mapping[str, ChainKey] | None = None,
        witness: Mapping[int, tuple[str, str]] | None = None,
    ) -> None:
        self._anchor_seq, self._anchor_hash = anchor_seq, anchor_hash
        # seq -> (hash, when): points from the witness file, checked as the walk passes them.
        self._witness = dict(witness or {})
        self._witnessed = 0
        self._next_seq = anchor_seq + 1
        self._prev_hash = anchor_hash
        self._keys = dict(keys or {})
        self._key_id: str | None = None
        self._keyed_from: int | None = None
        self._checked = 0
        self._keyed = 0
        self._problem: str | None = None
        self._problem_seq: int | None = None
        # The retention event rows that verified: an anchor must be named by one.
        self.retention_events: list[StoredEntry] = []

    @property
    def failed(self) -> bool:
        return self._problem is not None

    def feed(self, row: StoredEntry) -> bool:
        """Check one row; ``False`` once the chain is broken (later rows are ignored)."""
        if self._problem is not None:
            return False
        expected = self._next_seq
        if row.seq != expected:
            if row.seq > expected:
                return self._fail(
                    expected,
                    f"gap in the chain: expected seq {expected}, found {row.seq} (row(s) deleted)",
                )
            return self._fail(
                row.seq,
                f"unexpected row: expected seq {expected}, found {row.seq} "
                "(a row below the retention anchor or out of order)",
            )
        if row.prev_hash != self._prev_hash:
            return self._fail(
                row.seq,
                f"seq {row.seq}: prev_hash does not match the hash of the previous row "
                "(row inserted or reordered)",
            )
        key: ChainKey | None = None
        if row.key_id is not None:
            key = self._keys.get(row.key_id)
            if key is None:
                return self._fail(
                    row.seq,
                    f"seq {row.seq}: keyed with key {row.key_id}, which verify was not given "
                    "(pass it with --key-file; a forger cannot know a key either)",
                )
        if hash_of(row.prev_hash, row.seq, row.entry.canonical(), key) != row.hash:
            return self._fail(row.seq, f"seq {row.seq}: hash mismatch (row edited)")
        if not self._key_changes_ok(row):
            return False
        witnessed = self._witness.get(row.seq)
        if witnessed is not None:
            if witnessed[0] != row.hash:
                return self._fail(
                    row.seq,
                    f"seq {row.seq}: the hash differs from the one witnessed at {witnessed[1]}: "
                    f"the chain was rewritten at or before seq {row.seq}",
                )
            self._witnessed += 1
        self._checked += 1
        if row.key_id is not None:
            self._keyed += 1
        if row.entry.kind == "retention" and row.entry.stage == "event":
            self.retention_events.append(row)
        self._next_seq = row.seq + 1
        self._prev_hash = row.hash
        return True

    def _key_changes_ok(self, row: StoredEntry) -> bool:
        first = self._checked == 0
        if row.key_id == self._key_id or (first and self._key_id is None):
            self._key_id = row.key_id
            if row.key_id is not None and self._keyed_from is None:
                self._keyed_from = row.seq
            return True
        if row.key_id is None:
            return self._fail(
                row.seq,
                f"seq {row.seq}: an unkeyed row after keying started at seq {self._keyed_from} "
                "(written without the key)",
            )
        event = row.entry
        if not (
            event.stage == "event"
            and event.kind == KEY_EVENT
            and event.args.get("key_id") == row.key_id
        ):
            return self._fail(
                row.seq,
                f"seq {row.seq}: the key changes to {row.key_id} without an {KEY_EVENT} event",
            )
        self._key_id = row.key_id
        if self._keyed_from is None:
            self._keyed_from = row.seq
        return True

    def finish_with(self, ends: TableEnds) -> VerifyResult:
        """:meth:`finish`, after checking that an anchor was left by retention: the
        retention event that removed the rows up to it names its seq and hash."""
        if ends.anchor is not None and ends.anchor[0] > 0:
            seq, digest = ends.anchor
            recorded = any(
                row.entry.kind == "retention"
                and row.entry.args.get("up_to_seq") == seq
                and row.entry.args.get("anchor_hash", digest) == digest
                for row in self.retention_events
            )
            if not recorded:
                self.fail(
                    seq + 1,
                    f"the retention anchor at seq {seq} has no retention event recording it: "
                    f"the rows up to seq {seq} were removed by hand",
                )
        self._check_witness_ends()
        if ends.head is None:
            return self.finish(head_missing=True)
        return self.finish(*ends.head)

    def _check_witness_ends(self) -> None:
        """Witnessed points the walk did not pass: past the last row (truncated), or at
        and below the anchor (removed by retention: only the anchor itself is checkable)."""
        last = self._next_seq - 1
        for seq in sorted(self._witness):
            digest, when = self._witness[seq]
            if seq > last:
                self.fail(
                    last + 1,
                    f"seq {seq} was witnessed at {when} but the chain ends at seq {last}: "
                    f"rows from seq {last + 1} on were removed",
                )
                return
            if seq == self._anchor_seq and seq > 0 and digest != self._anchor_hash:
                self.fail(
                    seq + 1,
                    f"the retention anchor at seq {seq} differs from the witness of {when}",
                )
                return

    def finish(
        self,
        head_seq: int | None = None,
        head_hash: str | None = None,
        *,
        head_missing: bool = False,
    ) -> VerifyResult:
        """The verdict; with the chain head's position, rows cut from the end are caught
        too, and so are rows past the head (fed in as well: everything the table holds)."""
        last = self._next_seq - 1
        if self._problem is None and head_missing:
            self._fail(
                last + 1,
                "the chain head row is missing (audit_chain_head emptied by hand?): "
                f"the chain itself ends at seq {last}",
            )
        if self._problem is None and head_seq is not None:
            if last > head_seq:
                self._fail(
                    head_seq + 1,
                    f"seq {head_seq + 1}: row(s) past the chain head (at seq {head_seq}), "
                    "which opsbot did not write",
                )
            elif head_seq != last:
                self._fail(
                    last + 1,
                    f"the chain head is at seq {head_seq} but the last row is seq {last} "
                    "(row(s) deleted at the end)",
                )
            elif head_hash is not None and head_hash != self._prev_hash:
                self._fail(last, f"seq {last}: the chain head's hash does not match the last row")
        if self._problem is None and self._keys and self._checked and self._keyed == 0:
            self._fail(
                last,
                f"no row is keyed, though verify was given a key: the rows up to seq {last} "
                "were written (or rewritten) without it",
            )
        return VerifyResult(
            ok=self._problem is None,
            checked=self._checked,
            problem=self._problem,
            seq=self._problem_seq,
            keyed=self._keyed,
            witnessed=self._witnessed,
        )

    def fail(self, seq: int, problem: str) -> None:
        """Record a problem found outside the walk (the anchor, the witness)."""
        if self._problem is None:
            self._fail(seq, problem)

    def _fail(self, seq: int, problem: str) -> bool:
        self._problem, self._problem_seq = problem, seq
        return False
