"""peernet: peer-to-peer discovery and file sharing on Twisted."""

__version__ = "0.1.0"
