"""Build a repo (a shared directory) into a hybrid BitTorrent v1+v2 torrent.

Everything here blocks on disk I/O: call it off the reactor thread
(``deferToThread(build_repo, path)``).

A repo is described two ways that must agree:

* the *manifest*: the sorted list of ``[path, size, sha256]`` of its regular
  files, and its digest (SHA-256 of the canonical JSON of that list).  This is
  what a downloader checks every file against (`verify_directory`).
* the *torrent*: hybrid v1+v2 (v2 hashes files with SHA-256 in a merkle tree;
  v1 keeps WebTorrent and older clients working), built by libtorrent.

Each file is read twice (once here, once by libtorrent).  To be sure both reads
saw the same bytes, the SHA-256 pass also computes the file's BEP 52 merkle
root and compares it with libtorrent's; together with a stat before and after,
a file changed while the repo was being built is detected and reported.
"""

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from typing import NamedTuple

import libtorrent as lt

from peernet.errors import PeernetError

#: BEP 52 merkle leaf size (fixed by the protocol).
BLOCK_SIZE = 16 * 1024
#: Read size while hashing: a whole number of blocks.
READ_SIZE = 64 * BLOCK_SIZE
CREATOR = "peernet"

_ZERO_SUBTREES = [bytes(32)]
for _ in range(64):
    _ZERO_SUBTREES.append(hashlib.sha256(_ZERO_SUBTREES[-1] * 2).digest())


class RepoFile(NamedTuple):
    """One regular file of a repo; ``path`` is relative, with ``/`` separators."""

    path: str
    size: int
    sha256: str


class BadFile(NamedTuple):
    """A file `verify_directory` rejected, and why (one short phrase)."""

    path: str
    problem: str


@dataclass(frozen=True)
class RepoManifest:
    """A built repo: its file list, manifest digest and hybrid torrent."""

    name: str
    root: str
    files: tuple  # of RepoFile, sorted by path
    total_size: int
    manifest: str  # 64 hex: SHA-256 of the canonical JSON of the file list
    torrent: bytes  # the .torrent file (bencoded, with v2 piece layers)
    btih: str  # v1 infohash, 40 hex
    btmh: str  # v2 infohash, 64 hex (the multihash prefix 1220 is not included)
    skipped: tuple = field(default=())  # (relative path, reason) not shared

    @property
    def file_count(self):
        return len(self.files)

    def summary(self):
        """The repo as a gossip record carries it."""
        return {
            "name": self.name,
            "size": self.total_size,
            "files": self.file_count,
            "btih": self.btih,
            "btmh": self.btmh,
            "manifest": self.manifest,
        }


def canonical_file_list(files):
    """The manifest's canonical bytes: compact JSON of sorted [path, size, sha256]."""
    rows = sorted([str(p), int(s), str(h)] for p, s, h in files)
    return json.dumps(rows, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def manifest_digest(files):
    """SHA-256 (64 hex) of `canonical_file_list(files)`."""
    return hashlib.sha256(canonical_file_list(files)).hexdigest()


def check_repo_name(name):
    """Raise PeernetError unless ``name`` is usable as a torrent (directory) name."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
            or "\\" in name or "\0" in name or len(name.encode("utf-8", "replace")) > 255):
        raise PeernetError(f"repo name {name!r} must be a single non-empty path component")
    _check_utf8(name)


def _check_utf8(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PeernetError(
            f"file name {text!r} is not valid UTF-8; rename it to share it") from None


def _inside(path, root):
    return os.path.commonpath([path, root]) == root


def _walk(root):
    """Return (sorted [(relpath, abspath)], [(relpath, reason)]) for ``root``."""
    real_root = os.path.realpath(root)
    found, skipped = [], []

    def onerror(err):
        raise PeernetError(f"cannot read directory {err.filename}: {err.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                # Not followed: it could loop or escape; its files may be shared twice.
                skipped.append((rel_dir + d, "symbolic link to a directory"))
                dirnames.remove(d)
        dirnames.sort()
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            rel = rel_dir + f
            _check_utf8(rel)
            try:
                st = os.lstat(full)
            except OSError as err:
                raise PeernetError(f"cannot read {full}: {err.strerror}") from None
            if stat.S_ISLNK(st.st_mode):
                target = os.path.realpath(full)
                if not _inside(target, real_root):
                    skipped.append((rel, "symbolic link pointing outside the repo"))
                    continue
                try:
                    st = os.stat(full)
                except OSError:
                    skipped.append((rel, "broken symbolic link"))
                    continue
            if not stat.S_ISREG(st.st_mode):
                skipped.append((rel, "not a regular file"))
                continue
            found.append((rel, full))
    found.sort()
    return found, skipped


def _stat_key(st):
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def _merkle_push(stack, digest):
    level = 0
    while stack and stack[-1][0] == level:
        digest = hashlib.sha256(stack.pop()[1] + digest).digest()
        level += 1
    stack.append((level, digest))


def _merkle_root(stack, count):
    """BEP 52 root of ``count`` leaves, zero-padded to a power of two."""
    if count == 0:
        return bytes(32)
    height = (count - 1).bit_length()
    while not (len(stack) == 1 and stack[0][0] == height):
        level, digest = stack.pop()
        digest = hashlib.sha256(digest + _ZERO_SUBTREES[level]).digest()
        level += 1
        while stack and stack[-1][0] == level:
            digest = hashlib.sha256(stack.pop()[1] + digest).digest()
            level += 1
        stack.append((level, digest))
    return stack[0][1]


def _hash_file(path, merkle=True):
    """Stream ``path`` once: return (size, sha256 hex, BEP 52 merkle root bytes or None)."""
    whole = hashlib.sha256()
    stack, leaves, size = [], 0, 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(READ_SIZE)
            if not chunk:
                break
            whole.update(chunk)
            size += len(chunk)
            if not merkle:
                continue
            view = memoryview(chunk)
            for off in range(0, len(chunk), BLOCK_SIZE):
                _merkle_push(stack, hashlib.sha256(view[off:off + BLOCK_SIZE]).digest())
                leaves += 1
            if len(chunk) % BLOCK_SIZE:
                # A short read not at the end would misalign the leaves; only
                # the last chunk may be short (regular files, blocking reads).
                rest = f.read(1)
                if rest:
                    raise _Changed()
                break
    return size, whole.hexdigest(), _merkle_root(stack, leaves) if merkle else None


class _Changed(Exception):
    pass


def _changed(rel):
    return PeernetError(f"file {rel} changed while it was being hashed; try again",
                        code="repo_changed")


def build_repo(path, name=None, *, piece_size=0, on_file_hashed=None):
    """Build the repo at directory ``path`` (blocking; call off the reactor thread).

    ``name`` defaults to the directory's base name.  Regular files are shared,
    sorted by path; symbolic links are followed only to files inside the
    directory (others are listed in ``skipped``).  ``on_file_hashed(relpath)``
    is called after each file's SHA-256 pass (for progress, and for tests).

    Raises PeernetError if the path is missing, not a directory, unreadable,
    holds no data, or a file changes while it is being hashed.
    """
    root = os.path.abspath(os.fspath(path))
    if not os.path.exists(root):
        raise PeernetError(f"repo directory {root} does not exist", code="repo_missing")
    if not os.path.isdir(root):
        raise PeernetError(f"repo path {root} is not a directory", code="repo_missing")
    if not os.access(root, os.R_OK | os.X_OK):
        raise PeernetError(f"repo directory {root} is not readable", code="repo_unreadable")
    name = os.path.basename(root) if name is None else name
    check_repo_name(name)

    entries, skipped = _walk(root)
    if not entries:
        raise PeernetError(f"repo directory {root} has no files to share", code="repo_empty")

    before, files, roots = {}, [], {}
    for rel, full in entries:
        try:
            st = os.stat(full)
            before[rel] = _stat_key(st)
            size, sha, merkle = _hash_file(full)
        except _Changed:
            raise _changed(rel) from None
        except OSError as err:
            raise PeernetError(f"cannot read {full}: {err.strerror}",
                               code="repo_unreadable") from None
        if size != st.st_size:
            raise _changed(rel)
        files.append(RepoFile(rel, size, sha))
        roots[rel] = merkle
        if on_file_hashed is not None:
            on_file_hashed(rel)
    total = sum(f.size for f in files)
    if total == 0:
        raise PeernetError(f"repo directory {root} has only empty files", code="repo_empty")

    # libtorrent reads parent/<first path component>/..., so the torrent is made
    # under the directory's own name and renamed in the info dict afterwards
    # (the name is in no hash but the infohash itself).
    dirname = os.path.basename(root)
    ct = lt.create_torrent(
        [lt.create_file_entry(f"{dirname}/{f.path}", f.size) for f in files], piece_size)
    ct.set_creator(CREATOR)
    ct.set_creation_date(0)  # omitted: the same directory always gives the same bytes
    try:
        lt.set_piece_hashes(ct, os.path.dirname(root), lambda piece: None)
    except RuntimeError as err:
        raise PeernetError(f"could not hash repo {root}: {err}; try again",
                           code="repo_changed") from None
    entry = ct.generate()
    entry[b"info"][b"name"] = name.encode("utf-8")
    torrent = lt.bencode(entry)
    info = lt.torrent_info(torrent)

    layout = info.layout()
    by_path = {f.path: f for f in files}
    seen, lt_total = set(), 0
    prefix = name + "/"
    for i in range(layout.num_files()):
        if layout.file_flags(i) & lt.file_storage.flag_pad_file:
            continue
        rel = layout.file_path(i).replace(os.sep, "/")
        rel = rel[len(prefix):] if rel.startswith(prefix) else rel
        f = by_path.get(rel)
        if f is None or layout.file_size(i) != f.size:
            raise _changed(rel)
        if f.size and bytes.fromhex(str(layout.root(i))) != roots[rel]:
            raise _changed(rel)
        seen.add(rel)
        lt_total += layout.file_size(i)
    if seen != set(by_path) or lt_total != total:
        raise PeernetError(f"repo {root} changed while it was being hashed; try again",
                           code="repo_changed")
    for rel, full in entries:
        try:
            after = _stat_key(os.stat(full))
        except OSError:
            raise _changed(rel) from None
        if after != before[rel]:
            raise _changed(rel)

    hashes = info.info_hashes()
    return RepoManifest(
        name=name,
        root=root,
        files=tuple(files),
        total_size=total,
        manifest=manifest_digest(files),
        torrent=torrent,
        btih=str(hashes.v1),
        btmh=str(hashes.v2),
        skipped=tuple(skipped),
    )


def _safe_relpath(rel):
    parts = rel.split("/")
    if (not rel or rel.startswith("/") or "\\" in rel or "\0" in rel
            or any(p in ("", ".", "..") for p in parts)):
        raise PeernetError(f"file path {rel!r} in the manifest is not a safe relative path")
    return os.path.join(*parts)


def verify_directory(path, manifest, files):
    """Check a downloaded repo at ``path`` against its manifest (blocking).

    ``files`` is the list of ``(path, size, sha256)``; it must hash to
    ``manifest``.  Returns the sorted list of `BadFile` (missing, wrong size or
    wrong SHA-256); an empty list means every file is right.  Files present but
    not in the manifest are ignored.
    """
    files = [RepoFile(str(p), int(s), str(h).lower()) for p, s, h in files]
    if manifest_digest(files) != str(manifest).lower():
        raise PeernetError("the file list does not match the repo's manifest digest",
                           code="bad_manifest")
    root = os.path.abspath(os.fspath(path))
    bad = []
    for f in sorted(files):
        full = os.path.join(root, _safe_relpath(f.path))
        try:
            st = os.stat(full)
        except FileNotFoundError:
            bad.append(BadFile(f.path, "missing"))
            continue
        except OSError as err:
            bad.append(BadFile(f.path, f"unreadable: {err.strerror}"))
            continue
        if not stat.S_ISREG(st.st_mode):
            bad.append(BadFile(f.path, "not a regular file"))
            continue
        if st.st_size != f.size:
            bad.append(BadFile(f.path, f"size {st.st_size}, expected {f.size}"))
            continue
        try:
            _, sha, _ = _hash_file(full, merkle=False)
        except (OSError, _Changed) as err:
            bad.append(BadFile(f.path, f"unreadable: {getattr(err, 'strerror', err)}"))
            continue
        if sha != f.sha256:
            bad.append(BadFile(f.path, "SHA-256 mismatch"))
    return bad
