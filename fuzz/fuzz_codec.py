"""Coverage-guided fuzz target for the gossip frame decoder (atheris = libFuzzer for Python).

The decoder is the first code that touches bytes from the network, so it must
turn *anything* into either a Message or a CodecError.  libFuzzer mutates its
corpus towards inputs that reach new branches of peernet.gossip.codec; a
crash (any other exception, or a failed check below) stops the run and writes
the input to ``crash-<sha1>``.

    # a long run, growing a corpus directory (Ctrl-C to stop):
    .venv/bin/python fuzz/fuzz_codec.py fuzz/corpus -max_len=70000 -max_total_time=600
    # the bounded run the test suite does (tests/adversarial/test_fuzz_atheris.py):
    .venv/bin/python fuzz/fuzz_codec.py -runs=20000 -seed=1 SEED_DIR
    # replay one input:
    .venv/bin/python fuzz/fuzz_codec.py crash-...

Seed inputs (one valid frame of each type) are written by
``python fuzz/fuzz_codec.py --write-seeds DIR``.
"""

import os
import sys

import atheris

with atheris.instrument_imports(include=["peernet"]):
    from peernet.gossip import codec
    from peernet.gossip.codec import MessageType as T


def test_one_input(data):
    try:
        msg = codec.decode(data)
    except codec.CodecError:
        return
    # An accepted frame is fully understood: relaying it keeps its identity
    # and its body (with the record and its signature, a push's only one),
    # and the body re-encodes as the decoder would accept it again.
    again = codec.decode(codec.relay(msg, msg.ttl))
    assert (again.id, again.type, again.body, again.body_bytes) == (msg.id, msg.type, msg.body, msg.body_bytes)
    codec.encode_body(msg.type, msg.body)


SEED_BODIES = {
    T.HELLO: {"id": b"i" * 16, "ts": 1, "versions": [1], "bc": False, "repos": 0,
              "digest": b"d" * 16, "n": 0},
    T.PEER_ANNOUNCEMENT: {"id": b"i" * 16, "ts": 1, "rec": b"{}", "rsig": b"s" * 64},
    T.PEER_UPDATE: {"id": b"i" * 16, "ts": 1, "rec": b"{}", "rsig": b"s" * 64},
    T.PEER_REQUEST: {"id": b"i" * 16, "ts": 1, "repo": "films"},
    T.PEER_LIST_RESPONSE: {"id": b"i" * 16, "ts": 1, "re": b"r" * 16,
                           "recs": [[b"{}", b"s" * 64]]},
    T.HEARTBEAT: {"id": b"i" * 16, "ts": 1, "digest": b"d" * 16, "n": 3, "load": 5,
                  "recent": [[b"p" * 32, 1, 2]]},
}


def write_seeds(directory):
    os.makedirs(directory, exist_ok=True)
    for mtype, body in SEED_BODIES.items():
        frame = codec.encode(mtype, 0, codec.encode_body(mtype, body))
        with open(os.path.join(directory, f"seed-{mtype.name.lower()}"), "wb") as f:
            f.write(frame)


def main(argv):
    if len(argv) == 3 and argv[1] == "--write-seeds":
        write_seeds(argv[2])
        return
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
