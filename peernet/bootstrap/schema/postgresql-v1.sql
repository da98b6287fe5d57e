-- peernet bootstrap database on PostgreSQL, schema version 1 (first release).
-- The same tables as the SQLite schema (v1.sql); times are DOUBLE PRECISION
-- (PostgreSQL's REAL is 4 bytes: too coarse for Unix times) and record
-- versions are BIGINT (they go up to 2**53; INTEGER is 4 bytes here).
CREATE TABLE version (version INTEGER NOT NULL);
INSERT INTO version (version) VALUES (1);

-- Only broadcasting peers are ever stored (the CHECK makes it a database rule).
CREATE TABLE peers (
    peer_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,          -- canonical JSON of the signed record
    signature TEXT NOT NULL,       -- base64 Ed25519 signature over `record`
    version BIGINT NOT NULL,       -- record versions go up to 2**53
    is_bootstrap INTEGER NOT NULL,
    is_broadcasting INTEGER NOT NULL CHECK (is_broadcasting = 1),
    email TEXT,
    registered_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX peers_expires_at ON peers (expires_at);

-- Other bootstrap servers this one federates with.
CREATE TABLE bootstrap_nodes (
    url TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    added_at DOUBLE PRECISION NOT NULL
);

-- One peer_id per email; only the bound key releases it.
CREATE TABLE emails (
    email TEXT PRIMARY KEY,
    peer_id TEXT NOT NULL,
    verified INTEGER NOT NULL,
    bound_at DOUBLE PRECISION NOT NULL
);

-- Nonces of accepted signed requests, kept past the timestamp window.  The
-- primary key makes a nonce single-use across every process sharing the
-- database.
CREATE TABLE nonces (
    nonce TEXT PRIMARY KEY,
    expires_at DOUBLE PRECISION NOT NULL
);
