"""docs/protocol.md's constants table matches peernet/constants.py."""

import os
import re

from peernet import constants

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "protocol.md")


def test_constants_table_matches_code():
    text = open(DOC, encoding="utf-8").read()
    rows = re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", text, re.M)
    assert len(rows) >= 15
    for name, value in rows:
        assert hasattr(constants, name), f"docs name {name}, which constants.py lacks"
        assert float(value.strip()) == float(getattr(constants, name)), name


def test_ttl_table_matches_codec_limits():
    from peernet.gossip.codec import MessageType as T

    assert constants.MAX_TTL_BY_TYPE[T.PEER_UPDATE] == constants.TTL_UPDATE == constants.MAX_TTL
    assert constants.MAX_TTL_BY_TYPE[T.PEER_REQUEST] == constants.TTL_REQUEST
    assert constants.MAX_TTL_BY_TYPE[T.HEARTBEAT] == constants.TTL_HEARTBEAT
