"""Repos as torrents: building a repo's hybrid BitTorrent v1+v2 torrent and
running the libtorrent session that seeds and downloads repos.

Nothing in this package knows about gossip: the peer service hands it
directories, manifests and seeder addresses.
"""

from peernet.torrent.repo import RepoManifest, build_repo, verify_directory

__all__ = ["RepoManifest", "build_repo", "verify_directory"]
