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
