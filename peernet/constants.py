"""Protocol constants: one place for every number the protocol depends on.

docs/ tables quote these values; tests check the docs against this module.
"""

# Signed requests and messages -------------------------------------------------
#: Allowed clock difference between a signed timestamp and the receiver's clock.
CLOCK_SKEW_SECONDS = 30
#: A nonce is remembered at least this long, so it is never accepted twice while
#: its timestamp could still pass the skew check (2 x skew, plus margin).
NONCE_RETENTION_SECONDS = 2 * CLOCK_SKEW_SECONDS + 10
#: Largest request body or message accepted anywhere.
MAX_MESSAGE_BYTES = 64 * 1024

# Bootstrap server -------------------------------------------------------------
BOOTSTRAP_DEFAULT_TTL = 3600
#: The reannounce hint is this fraction of the TTL, with uniform jitter.
REANNOUNCE_FRACTION = (0.42, 0.50)
DISCOVER_DEFAULT_LIMIT = 16
DISCOVER_MAX_LIMIT = 100
#: Sample of live peers returned to a registering peer.
REGISTER_SAMPLE = 16
#: Most addresses one record may carry, and the longest address.
MAX_ADDRESSES = 16
MAX_ADDRESS_LENGTH = 255
SWEEP_INTERVAL_SECONDS = 60
#: Email verification codes (only with --smtp) stay valid this long.
EMAIL_CODE_TTL_SECONDS = 900

# Gossip -------------------------------------------------------------------------
PROTOCOL_VERSION = 2
WEBSOCKET_SUBPROTOCOL = "peernet.2"
GOSSIP_PATH = "/gossip"
#: Largest TTL any message may carry, and the TTL each type is sent with.
MAX_TTL = 32
TTL_ANNOUNCEMENT = 32
TTL_UPDATE = 32
TTL_REQUEST = 16
TTL_RESPONSE = 16
TTL_HEARTBEAT = 2
#: Highest TTL accepted per message type (HELLO is link-local: 0..1).
MAX_TTL_BY_TYPE = {1: 1, 2: 32, 3: 16, 4: 16, 5: 2, 6: 32}
#: Push fan-out on first receipt of an announcement or update, used when a
#: node has no eager links (and for PEER_REQUEST forwarding).
FANOUT = 3
#: Each node marks this many of its outbound links *eager* (HELLO ``eager``);
#: a link is eager at both ends when either end marked it.  Past the flood
#: phase a push travels over eager links only: they form a connected mesh
#: (a random 2-out graph), so the push reaches every peer deterministically.
EAGER_LINKS = 2
#: A node keeps as eager the EAGER_LINKS of its outbound links with the lowest
#: round-trip time (WebSocket pings: one when a link opens, then every
#: RTT_PROBE_INTERVAL); a link takes an eager one's place only when its RTT is
#: below this share of that one's (no flapping on noise).
EAGER_SWAP_RATIO = 0.8
#: After a change, a node tells the neighbours not known to hold it (digest
#: ping naming the change, coalesced per link) DIGEST_PING_DELAY plus a random
#: 0 to DIGEST_PING_SPREAD later, so a neighbour the push missed pulls the
#: record at once instead of at the next heartbeat.  The spread breaks the tie
#: between two neighbours that got the change at about the same time: the
#: first one's ping tells the other it holds it, and the other's ping to it
#: is not sent (LinkState.holds): a quarter fewer pings (docs/protocol.md).
DIGEST_PING_DELAY = 0.05
DIGEST_PING_SPREAD = 0.45
HEARTBEAT_INTERVAL = 30.0
#: A link that has been silent this long (missed heartbeats) is closed.
LINK_DEAD_AFTER = 3 * HEARTBEAT_INTERVAL + 5
#: A record is live for this long after its signed issued_at, unless it
#: declares its own ``lifetime`` (seconds, at least this, at most
#: MAX_RECORD_LIFETIME; docs/protocol.md, "Records") ...
RECORD_LIFETIME = 2 * 3600
#: ... and its owner signs a fresh copy (same version) every lifetime /
#: LIFETIME_REFRESHES, never more often than this (less REFRESH_JITTER).
RECORD_REFRESH_INTERVAL = 30 * 60
#: Each refresh comes a random 0 to 10 % of the interval early, drawn anew
#: for every copy signed: peers that started together (a restarted network,
#: a data-centre reboot) do not refresh in lockstep for ever after.
REFRESH_JITTER = 0.1
#: Refreshes an owner signs within one lifetime of its record (the copies a
#: holder can miss in a row, minus one, before the record lapses there).
LIFETIME_REFRESHES = 4
#: The owner's refresh interval grows with the broadcasting peers its table
#: holds: N x this many seconds (at least RECORD_REFRESH_INTERVAL), so the
#: network-wide refresh rate, N / interval, stays at most 1 / this per second
#: whatever N is: ~41 B/s per link of pushes (benchmarks/sim.py bandwidth).
REFRESH_SECONDS_PER_PEER = 5
#: Longest lifetime a record may declare (30 days): a crashed peer's record
#: lingers at most this long, and past N = MAX_RECORD_LIFETIME /
#: (LIFETIME_REFRESHES x REFRESH_SECONDS_PER_PEER) = 129 600 peers the
#: interval stops growing (refresh traffic then grows with N again).
MAX_RECORD_LIFETIME = 30 * 24 * 3600
#: Anti-entropy buckets (by the first byte of peer_id).
DIGEST_BUCKETS = 256
#: Reverse-path memory for PEER_REQUEST ids.
REQUEST_ROUTE_SECONDS = 60
MAX_REQUEST_ROUTES = 10_000
#: Deduplication: two Bloom generations, each at least this long.
DEDUP_GENERATION_SECONDS = 2 * CLOCK_SKEW_SECONDS
DEDUP_CAPACITY = 100_000
DEDUP_ERROR_RATE = 1e-6
#: Links: target outbound links, and the cap on inbound ones.
TARGET_LINKS = 8
MAX_INBOUND_LINKS = 64
RECONNECT_BASE_DELAY = 1.0
RECONNECT_MAX_DELAY = 300.0
#: Records returned in one PEER_LIST_RESPONSE frame (it must stay < 64 KiB).
MAX_RECORDS_PER_RESPONSE = 64
SNAPSHOT_INTERVAL = 60.0
#: A link that sends no HELLO this long after opening is closed.
HELLO_TIMEOUT = 10.0

# Torrents ----------------------------------------------------------------------------
#: Progress events and stall checks for active downloads, seconds.
TORRENT_PROGRESS_INTERVAL = 0.5
#: Safety drain of libtorrent's alert queue, in case a notification was missed.
TORRENT_SAFETY_DRAIN_INTERVAL = 3.0
#: Resume data of every modified torrent is saved this often, seconds.
TORRENT_RESUME_SAVE_INTERVAL = 60.0
#: A download fails if no payload arrived for this long (no seeder left).
TORRENT_STALL_TIMEOUT = 120.0
#: At stop, wait at most this long for libtorrent to hand over resume data.
TORRENT_STOP_SAVE_TIMEOUT = 10.0

# Peer scoring (peernet/peer/scoring.py; docs/protocol.md, "Scoring") ------------------
#: Score of a peer nothing is known about (scores run from 0 to 100).
SCORE_NEUTRAL = 50.0
#: Half-life of what is observed about a peer (contacts, uptime, heartbeats,
#: round trips, transfers, answers), seconds.
SCORE_HALF_LIFE = 3600.0
#: Half-life of penalties (invalid messages, floods, corrupt data), seconds.
PENALTY_HALF_LIFE = 600.0
#: Invalid messages that take a peer with a neutral score to the cut-off.
PENALTY_LIMIT = 5
#: Below this total a link is closed and a broadcasting peer refused.
SCORE_CUT_OFF = 5.0
#: First cool-off of a refused peer, seconds; it doubles for each repeat
#: offence, up to MAX_REFUSE_SECONDS.
REFUSE_SECONDS = 600.0
MAX_REFUSE_SECONDS = 6 * 3600.0
#: Frames per second a link may sustain, and the burst it may send at once;
#: frames beyond are dropped unread, and every FLOOD_PENALTY_EVERY-th one
#: (starting with the first) is a penalty.
FLOOD_RATE = 1000.0
FLOOD_BURST = 2000.0
FLOOD_PENALTY_EVERY = 100
#: Frames a node relays (forwards for others) to one link per second, and
#: in a burst: half the receiver's limit, so a node that relays a storm
#: drops the excess itself and is never taken for a flooder.
RELAY_RATE = FLOOD_RATE / 2
RELAY_BURST = FLOOD_BURST / 2
#: WebSocket ping on every link this often (round-trip time), seconds.
RTT_PROBE_INTERVAL = 30.0
#: A round trip this long scores 0.5; a transfer rate this high (bytes/s)
#: scores 0.5; an unexpected link drop costs this many seconds of uptime.
RTT_REFERENCE = 0.25
RATE_REFERENCE = 1024 * 1024.0
UPTIME_REFERENCE = 600.0
