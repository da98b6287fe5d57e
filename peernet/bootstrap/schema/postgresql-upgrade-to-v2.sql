-- v2: pending email verification codes (twist bootstrap --smtp), and an
-- index for the discover query.
CREATE TABLE email_codes (
    email TEXT PRIMARY KEY,
    peer_id TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX peers_bootstrap_expires ON peers (is_bootstrap, expires_at);
CREATE INDEX nonces_expires_at ON nonces (expires_at);
UPDATE version SET version = 2;
