-- peernet bootstrap database, schema version 1 (first release).
CREATE TABLE version (version INTEGER NOT NULL);
INSERT INTO version (version) VALUES (1);

-- Only broadcasting peers are ever stored (the CHECK makes it a database rule).
CREATE TABLE peers (
    peer_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,          -- canonical JSON of the signed record
    signature TEXT NOT NULL,       -- base64 Ed25519 signature over `record`
    version INTEGER NOT NULL,
    is_bootstrap INTEGER NOT NULL,
    is_broadcasting INTEGER NOT NULL CHECK (is_broadcasting = 1),
    email TEXT,
    registered_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX peers_expires_at ON peers (expires_at);

-- Other bootstrap servers this one federates with.
CREATE TABLE bootstrap_nodes (
    url TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    added_at REAL NOT NULL
);

-- One peer_id per email; only the bound key releases it.
CREATE TABLE emails (
    email TEXT PRIMARY KEY,
    peer_id TEXT NOT NULL,
    verified INTEGER NOT NULL,
    bound_at REAL NOT NULL
);

-- Nonces of accepted signed requests, kept past the timestamp window.
CREATE TABLE nonces (
    nonce TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
