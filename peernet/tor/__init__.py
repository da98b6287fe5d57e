"""Optional Tor transport for peernet (DESIGN.md section 6).

A silent peer started with ``--tor`` sends every outbound connection (gossip links,
bootstrap API calls, BitTorrent) through a Tor SOCKS port; a broadcasting peer started
with ``--onion`` publishes a v3 onion service for its gossip endpoint and torrent port.

Everything here imports txtorcon lazily: a peer without Tor never needs it, and asking
for Tor without it (or without a working tor) fails at start with one clear sentence.
``peernet.tor.testnet`` runs a private Tor network on loopback for the tests.
"""
