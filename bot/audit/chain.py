"""The hash chain: pure functions, no I/O.

Row ``seq`` carries ``hash = sha256(prev_hash LF seq LF canonical_json(fields))`` (hex), where
``prev_hash`` is the hash of row ``seq - 1``, or the genesis/anchor hash for the first row.
Editing, deleting, inserting or reordering any row breaks the chain at that row, and
:class:`ChainVerifier` names the first such row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bot.audit.record import AuditEntry, StoredEntry

GENESIS_HASH = "0" * 64


def entry_hash(prev_hash: str, entry: AuditEntry, seq: int) -> str:
    return hash_of(prev_hash, seq, entry.canonical())


def hash_of(prev_hash: str, seq: int, canonical: str) -> str:
    """The hash of row ``seq`` whose entry's canonical form is ``canonical``."""
    return hashlib.sha256(f"{prev_hash}\n{seq}\n{canonical}".encode()).hexdigest()


def link(prev_hash: str, seq: int, entry: AuditEntry) -> StoredEntry:
    """``entry`` placed at ``seq`` after a row whose hash is ``prev_hash``."""
    return StoredEntry(
        seq=seq, prev_hash=prev_hash, hash=entry_hash(prev_hash, entry, seq), entry=entry
    )


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int  # rows whose links were checked
    problem: str | None = None  # the first problem, in words
    seq: int | None = None  # where it is

    def __str__(self) -> str:
        if self.ok:
            return f"audit chain ok: {self.checked} row(s) verified"
        return f"audit chain BROKEN after {self.checked} good row(s): {self.problem}"


class ChainVerifier:
    """Feed rows in ``seq`` order; stops at the first problem.

    It starts from an anchor: ``(0, GENESIS_HASH)`` for a full chain, or the last row that
    retention removed, so that what remains still verifies.
    """

    def __init__(self, anchor_seq: int = 0, anchor_hash: str = GENESIS_HASH) -> None:
        self._next_seq = anchor_seq + 1
        self._prev_hash = anchor_hash
        self._checked = 0
        self._problem: str | None = None
        self._problem_seq: int | None = None

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
        if entry_hash(row.prev_hash, row.entry, row.seq) != row.hash:
            return self._fail(row.seq, f"seq {row.seq}: hash mismatch (row edited)")
        self._checked += 1
        self._next_seq = row.seq + 1
        self._prev_hash = row.hash
        return True

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
        return VerifyResult(
            ok=self._problem is None,
            checked=self._checked,
            problem=self._problem,
            seq=self._problem_seq,
        )

    def _fail(self, seq: int, problem: str) -> bool:
        self._problem, self._problem_seq = problem, seq
        return False
