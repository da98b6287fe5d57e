"""peernet.torrent.repo: building repos into hybrid torrents, and checking downloads."""

import hashlib
import json
import os

import libtorrent as lt
import pytest

from peernet.errors import PeernetError
from peernet.torrent import repo as repo_mod
from peernet.torrent.repo import BadFile, build_repo, manifest_digest, verify_directory


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def make_repo(tmp_path, name="photos"):
    root = tmp_path / name
    rnd = __import__("random").Random(7)
    write(str(root / "b.bin"), rnd.randbytes(300_000))
    write(str(root / "a.txt"), b"hello\n")
    write(str(root / "sub" / "c.bin"), rnd.randbytes(16384))  # exactly one block
    write(str(root / "sub" / "deeper" / "d.bin"), rnd.randbytes(16385))
    write(str(root / "empty"), b"")
    return root


def test_manifest_is_deterministic_and_canonical(tmp_path):
    root = make_repo(tmp_path)
    m1 = build_repo(root)
    m2 = build_repo(str(root))
    assert m1 == m2
    assert m1.torrent == m2.torrent
    paths = [f.path for f in m1.files]
    assert paths == ["a.txt", "b.bin", "empty", "sub/c.bin", "sub/deeper/d.bin"]
    assert m1.files[0].sha256 == hashlib.sha256(b"hello\n").hexdigest()
    assert m1.total_size == 6 + 300_000 + 0 + 16384 + 16385
    assert m1.file_count == 5
    rows = [[f.path, f.size, f.sha256] for f in m1.files]
    canonical = json.dumps(rows, separators=(",", ":")).encode()
    assert m1.manifest == hashlib.sha256(canonical).hexdigest()
    assert m1.manifest == manifest_digest(reversed(m1.files))  # order does not matter

    summary = m1.summary()
    assert set(summary) == {"name", "size", "files", "btih", "btmh", "manifest"}
    assert summary["name"] == "photos" and summary["files"] == 5
    assert len(summary["btih"]) == 40 and len(summary["btmh"]) == 64
    assert len(summary["manifest"]) == 64

    # Another name: another torrent, same content digest.
    m3 = build_repo(root, name="holiday")
    assert m3.name == "holiday" and m3.manifest == m1.manifest
    assert m3.btih != m1.btih
    assert lt.torrent_info(m3.torrent).name() == "holiday"


def test_torrent_is_hybrid_v1_v2(tmp_path):
    m = build_repo(make_repo(tmp_path))
    info = lt.torrent_info(m.torrent)
    hashes = info.info_hashes()
    assert hashes.has_v1() and hashes.has_v2()
    assert str(hashes.v1) == m.btih and str(hashes.v2) == m.btmh
    decoded = lt.bdecode(m.torrent)
    assert decoded[b"info"][b"meta version"] == 2
    assert b"pieces" in decoded[b"info"] and b"file tree" in decoded[b"info"]
    assert b"creation date" not in decoded  # so the bytes are reproducible
    assert hashlib.sha1(lt.bencode(decoded[b"info"])).hexdigest() == m.btih
    assert hashlib.sha256(lt.bencode(decoded[b"info"])).hexdigest() == m.btmh


@pytest.mark.parametrize("size", [1, 16383, 16384, 16385, 3 * 16384 + 5, 1 << 20, (1 << 20) + 1])
def test_merkle_roots_agree_with_libtorrent(tmp_path, size):
    # build_repo compares its own BEP 52 roots with libtorrent's for every file.
    write(str(tmp_path / "r" / "f"), os.urandom(size))
    m = build_repo(tmp_path / "r")
    assert m.total_size == size


def test_file_changed_while_hashing_is_detected(tmp_path):
    root = make_repo(tmp_path)
    target = root / "b.bin"

    def rewrite_same_size(rel):
        if rel == "b.bin":  # after our pass, before libtorrent's
            with open(target, "r+b") as f:
                f.seek(1000)
                f.write(b"X" * 10)

    with pytest.raises(PeernetError, match="file b.bin changed while it was being hashed"):
        build_repo(root, on_file_hashed=rewrite_same_size)


def test_earlier_file_changed_later_is_detected(tmp_path):
    root = make_repo(tmp_path)

    def append_to_first(rel):
        if rel == "sub/deeper/d.bin":  # the last file: a.txt was hashed long ago
            with open(root / "a.txt", "ab") as f:
                f.write(b"more")

    with pytest.raises(PeernetError, match="file a.txt changed while it was being hashed"):
        build_repo(root, on_file_hashed=append_to_first)


def test_file_changed_by_another_thread_during_libtorrent_hashing(tmp_path, monkeypatch):
    root = tmp_path / "big"
    write(str(root / "big.bin"), os.urandom(8 << 20))
    real = lt.set_piece_hashes

    def set_piece_hashes(ct, path, callback):
        def on_piece(piece):
            if piece == 2:
                with open(root / "big.bin", "r+b") as f:
                    f.seek(6 << 20)
                    f.write(b"changed")
        return real(ct, path, on_piece)

    monkeypatch.setattr(repo_mod.lt, "set_piece_hashes", set_piece_hashes)
    with pytest.raises(PeernetError, match="changed while it was being hashed; try again"):
        build_repo(root)


def test_missing_not_a_directory_and_empty(tmp_path):
    with pytest.raises(PeernetError, match="does not exist"):
        build_repo(tmp_path / "nope")
    write(str(tmp_path / "file"), b"x")
    with pytest.raises(PeernetError, match="is not a directory"):
        build_repo(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "sub").mkdir()
    with pytest.raises(PeernetError, match="has no files to share") as err:
        build_repo(tmp_path / "empty")
    assert err.value.code == "repo_empty"
    write(str(tmp_path / "zeros" / "z"), b"")
    with pytest.raises(PeernetError, match="only empty files"):
        build_repo(tmp_path / "zeros")


def test_unreadable_file_and_directory(tmp_path, monkeypatch):
    root = make_repo(tmp_path)

    def denied(path, merkle=True):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(repo_mod, "_hash_file", denied)
    with pytest.raises(PeernetError, match="cannot read .*a.txt: Permission denied"):
        build_repo(root)
    monkeypatch.undo()
    # Root ignores permission bits, so an unreadable directory is simulated.
    monkeypatch.setattr(repo_mod.os, "access", lambda path, mode: False)
    with pytest.raises(PeernetError, match="is not readable"):
        build_repo(root)


def test_bad_names(tmp_path):
    root = make_repo(tmp_path)
    for name in ["", ".", "..", "a/b"]:
        with pytest.raises(PeernetError, match="single non-empty path component"):
            build_repo(root, name=name)


def test_symlinks(tmp_path):
    root = make_repo(tmp_path)
    write(str(tmp_path / "outside.txt"), b"secret")
    os.symlink(tmp_path / "outside.txt", root / "escape.txt")
    os.symlink("a.txt", root / "alias.txt")
    os.symlink(tmp_path, root / "dirlink")
    os.symlink(root / "nothing", root / "broken")
    m = build_repo(root)
    paths = [f.path for f in m.files]
    assert "alias.txt" in paths and "escape.txt" not in paths
    assert dict(m.skipped) == {
        "escape.txt": "symbolic link pointing outside the repo",
        "dirlink": "symbolic link to a directory",
        "broken": "broken symbolic link",
    }


def test_verify_directory(tmp_path):
    root = make_repo(tmp_path)
    m = build_repo(root)
    files = [tuple(f) for f in m.files]
    assert verify_directory(root, m.manifest, files) == []

    with open(root / "sub" / "c.bin", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    os.unlink(root / "a.txt")
    with open(root / "b.bin", "ab") as f:
        f.write(b"!")
    write(str(root / "extra"), b"not in the manifest: ignored")
    assert verify_directory(root, m.manifest, files) == [
        BadFile("a.txt", "missing"),
        BadFile("b.bin", "size 300001, expected 300000"),
        BadFile("sub/c.bin", "SHA-256 mismatch"),
    ]

    with pytest.raises(PeernetError, match="does not match the repo's manifest digest"):
        verify_directory(root, m.manifest, files[1:])
    evil = [("../x", 1, "00" * 32)]
    with pytest.raises(PeernetError, match="not a safe relative path"):
        verify_directory(root, manifest_digest(evil), evil)
