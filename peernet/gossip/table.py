"""PeerTable: the in-memory set of broadcasting peers' signed records.

Only records signed by their own peer are ever stored, so the table can only
hold what broadcasting peers published about themselves: it has no place for
a silent peer or for an observed socket address.

Ordering: a record replaces another of the same peer only if its
``(version, issued_at)`` is greater, so an older version never replaces a
newer one, and a re-issued copy of the same version (a refresh) does.

Liveness is self-certifying: a record is live until ``issued_at +
lifetime`` (the record's signed ``lifetime``, RECORD_LIFETIME when it has
none; :func:`record_lifetime`); its owner re-issues it LIFETIME_REFRESHES
times per lifetime, less often the more peers its table holds
(:func:`refresh_interval_for`), so a peer that stops doing so (crashed, gone)
disappears from every table one lifetime later, and no relay can keep it
alive.

Digest: each record has a 16-byte *identity hash* of (peer_id, version,
tombstone or not); the table digest is the XOR of all identity hashes, and
bucket ``b`` (first byte of peer_id) has its own XOR.  Two tables with equal
digests hold the same versions of the same records (up to hash collisions),
though maybe copies of different ``issued_at``: a refresh (same version,
newer ``issued_at``) changes no digest, so it starts no digest ping and no
sync; it spreads by push alone.  A holder the push missed keeps its older copy
until the next refresh or, when that copy lapses, until anti-entropy brings a
live one (the digests then differ).  ``PeerEntry.hash`` (of the exact record
bytes) is what links are *known* to hold and what :meth:`PeerTable.known_copy`
looks up, so a refresh is still pushed to links that hold the older copy.
"""

import hashlib
import os
import tempfile
from dataclasses import dataclass, field

import msgpack

from peernet import constants
from peernet.errors import PeernetError
from peernet.records import record_from_bytes


@dataclass(slots=True)
class PeerEntry:
    peer_id: str
    record: dict
    record_bytes: bytes
    signature: bytes
    hash: int = field(repr=False)
    received_at: float = 0.0
    #: identity hash (peer_id, version, tombstone): digests and buckets
    ident: int = field(default=0, repr=False)
    #: seconds the record is live after issued_at (record_lifetime)
    lifetime: float = float(constants.RECORD_LIFETIME)

    @property
    def order(self):
        return (self.record["version"], self.record["issued_at"])

    @property
    def is_tombstone(self):
        return not self.record["is_broadcasting"]

    @property
    def expires_at(self):
        return self.record["issued_at"] / 1000.0 + self.lifetime

    @property
    def bucket(self):
        return int(self.peer_id[:2], 16)

    def wire(self):
        return [self.record_bytes, self.signature]

    def repo_names(self):
        return {r["name"] for r in self.record.get("repos", ())}


def entry_from_wire(record_bytes, signature, received_at=0.0, record_hash=None):
    """Verify a record (bytes + signature) and wrap it; raises PeernetError.

    ``record_hash``: the record's table hash when the caller already has it
    (PeerTable.known_copy computed it), so the bytes are hashed once.
    """
    record = record_from_bytes(record_bytes, signature)
    if record["is_broadcasting"]:
        if not record["addresses"]:
            raise PeernetError("a broadcasting record without addresses", code="bad_record")
    elif record["addresses"]:
        raise PeernetError("a tombstone must not carry addresses", code="bad_record")
    # Positional: the dataclass __init__'s cheapest call (one per new record).
    return PeerEntry(
        record["peer_id"], record, bytes(record_bytes), bytes(signature),
        _hash(record_bytes) if record_hash is None else record_hash,
        received_at, identity_hash(record), record_lifetime(record),
    )


def _hash(record_bytes):
    return int.from_bytes(hashlib.sha256(record_bytes).digest()[:16], "big")


_IDENTITY_PREFIX = hashlib.sha256(b"peernet-record-identity\0")


def identity_hash(record):
    """The 128-bit hash of what a record *is*: (peer_id, version, tombstone or
    not).  ``issued_at``, ``lifetime`` and the signature are left out, so every
    refresh of one version hashes alike (digests, buckets).  That is
    sha256(b"peernet-record-identity\0<peer_id>\0<version>\0live|tombstone"),
    its first 16 bytes big-endian; the hash of the constant prefix is copied,
    not recomputed."""
    h = _IDENTITY_PREFIX.copy()
    h.update(b"%s\0%d\0%s" % (record["peer_id"].encode("ascii"), record["version"],
                              b"live" if record["is_broadcasting"] else b"tombstone"))
    return int.from_bytes(h.digest()[:16], "big")


def record_lifetime(record):
    """Seconds ``record`` stays live after its ``issued_at``: its signed
    ``lifetime``, bounded to [RECORD_LIFETIME, MAX_RECORD_LIFETIME] (the
    schema refuses values outside; the bound here holds whatever the path),
    or RECORD_LIFETIME when it declares none."""
    declared = record.get("lifetime")
    if declared is None:
        return float(constants.RECORD_LIFETIME)
    return float(min(max(declared, constants.RECORD_LIFETIME), constants.MAX_RECORD_LIFETIME))


def refresh_interval_for(peers):
    """Seconds between an owner's refreshes when its table holds ``peers``
    refreshing peers' records (:meth:`PeerTable.refreshing_peers`):
    ``peers`` x REFRESH_SECONDS_PER_PEER, at least
    RECORD_REFRESH_INTERVAL, at most MAX_RECORD_LIFETIME / LIFETIME_REFRESHES.
    Every peer then sees at most 1 / REFRESH_SECONDS_PER_PEER refreshes per
    second network-wide, whatever the network's size."""
    interval = max(constants.RECORD_REFRESH_INTERVAL, peers * constants.REFRESH_SECONDS_PER_PEER)
    return min(interval, constants.MAX_RECORD_LIFETIME // constants.LIFETIME_REFRESHES)


def lifetime_for(peers):
    """The lifetime (whole seconds) an owner declares at ``peers``:
    LIFETIME_REFRESHES refresh intervals."""
    return int(constants.LIFETIME_REFRESHES * refresh_interval_for(peers))


#: The 128-bit table hash of a record's bytes (digests, known_copy).
record_hash = _hash


class PeerTable:
    """Records by peer_id, with an incrementally maintained digest."""

    def __init__(self):
        self._entries = {}
        self._by_hash = {}
        self._buckets = [0] * constants.DIGEST_BUCKETS
        self._digest = 0
        #: No entry expires before this (a lower bound: it is lowered by
        #: offer and made exact again by each scan in expire), so the core's
        #: once-a-second expire call scans the table only when an entry can
        #: be due; a scan of 100 000 entries takes ~12 ms.
        self._soonest = float("inf")

    def __len__(self):
        return len(self._entries)

    def __contains__(self, peer_id):
        return peer_id in self._entries

    def __iter__(self):
        return iter(list(self._entries.values()))

    def get(self, peer_id):
        return self._entries.get(peer_id)

    def known_copy(self, record_bytes, signature, record_hash=None):
        """The stored entry with exactly these bytes and signature, or None
        (lets a receiver skip verifying a record it already verified)."""
        entry = self._by_hash.get(_hash(record_bytes) if record_hash is None else record_hash)
        if entry is not None and entry.record_bytes == record_bytes and entry.signature == signature:
            return entry
        return None

    def offer(self, entry, now):
        """Add or replace; returns "added", "updated", "refreshed" or None.

        None means nothing changed: an equal or older copy, an expired one, or
        one issued further ahead of ``now`` than the clock-skew window allows
        (a record dated years ahead would otherwise never expire anywhere).
        """
        record = entry.record
        issued = record["issued_at"] / 1000.0
        expires = issued + entry.lifetime  # expires_at
        if expires <= now:
            return None
        if issued > now + constants.CLOCK_SKEW_SECONDS:
            return None
        peer_id = entry.peer_id
        old = self._entries.get(peer_id)
        if old is not None:
            if (record["version"], record["issued_at"]) <= old.order:
                return None
            self._remove(old)
        self._entries[peer_id] = entry
        self._by_hash[entry.hash] = entry
        if expires < self._soonest:
            self._soonest = expires
        ident = entry.ident
        self._buckets[int(peer_id[:2], 16)] ^= ident  # bucket
        self._digest ^= ident
        if old is None:
            return "added"
        # A refresh: same identity (digest unchanged), newer issued_at.
        return "refreshed" if entry.ident == old.ident else "updated"

    def _remove(self, entry):
        del self._entries[entry.peer_id]
        del self._by_hash[entry.hash]
        self._buckets[entry.bucket] ^= entry.ident
        self._digest ^= entry.ident

    def expire(self, now):
        """Drop expired records; return their peer_ids."""
        if now < self._soonest:
            return []
        gone = []
        soonest = float("inf")
        for e in self._entries.values():
            expires = e.expires_at
            if expires <= now:
                gone.append(e)
            elif expires < soonest:
                soonest = expires
        self._soonest = soonest
        for e in gone:
            self._remove(e)
        return [e.peer_id for e in gone]

    def digest(self):
        return self._digest.to_bytes(16, "big")

    def bucket_hashes(self):
        """{bucket: 8-byte hash} for the non-empty buckets."""
        return {b: (h & (2**64 - 1)).to_bytes(8, "big")
                for b, h in enumerate(self._buckets) if h}

    def differing_buckets(self, theirs):
        """Buckets whose hash differs from ``theirs`` (a bucket_hashes() map)."""
        mine = self.bucket_hashes()
        return {b for b in set(mine) | set(theirs) if mine.get(b) != theirs.get(b)}

    def in_buckets(self, buckets):
        return [e for e in self._entries.values() if e.bucket in buckets]

    def refreshing_peers(self, now):
        """Live broadcasting records issued within the last half of their
        lifetime (two of their owner's refresh intervals): the peers that
        are refreshing, which an owner counts to pick its own interval
        (:func:`refresh_interval_for`).  A crashed peer's record stops
        counting halfway through its lifetime, so the records of crashed
        peers weigh less on everyone's interval (they would otherwise
        lengthen it, and with it their own lingering)."""
        return sum(1 for e in self._entries.values()
                   if not e.is_tombstone and now - e.record["issued_at"] / 1000.0 <= e.lifetime / 2)

    def live_broadcasting(self):
        return [e for e in self._entries.values() if not e.is_tombstone]

    def find_repo(self, name):
        return [e for e in self.live_broadcasting() if name in e.repo_names()]

    # -- snapshot -------------------------------------------------------------------

    def snapshot_bytes(self):
        return msgpack.packb([e.wire() for e in self._entries.values()], use_bin_type=True)

    def load_snapshot_bytes(self, data, now):
        """Merge a snapshot; every record is verified again. Returns count loaded."""
        try:
            items = msgpack.unpackb(data, raw=False)
        except Exception:
            return 0
        loaded = 0
        for item in items if isinstance(items, list) else ():
            try:
                entry = entry_from_wire(item[0], item[1], now)
            except (PeernetError, TypeError, IndexError, KeyError):
                continue
            if self.offer(entry, now):
                loaded += 1
        return loaded


def write_snapshot(path, data):
    """Write atomically (temp file + rename), mode 0600. Blocking: call off-thread."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".table-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
