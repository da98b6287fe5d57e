"""schemas.SchemaValidator compiles each component with its local $refs copied
in place (faster on the gossip hot path).  It must say exactly what the plain
$ref compilation says: same verdict, same message, on valid and broken input."""

import fastjsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from peernet.errors import BadRequest
from peernet.identity import NodeIdentity
from peernet.records import make_record
from peernet.schemas import _short, openapi_document, validator

SCHEMAS = sorted(openapi_document()["components"]["schemas"])
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 2**60), st.text(max_size=70),
              st.sampled_from(["wss://127.0.0.1:1/gossip", "bittorrent://10.0.0.1:6881",
                               "a" * 64, "0" * 40, "films", "a/b", "\x01"])),
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(
        st.sampled_from(["name", "size", "files", "btih", "x", "peer_id", "addresses"]), c,
        max_size=4)),
    max_leaves=12)


def reference(name):
    doc = openapi_document()
    return fastjsonschema.compile({"$ref": f"#/components/schemas/{name}",
                                   "components": doc["components"]})


REFERENCE = {name: reference(name) for name in SCHEMAS}


def verdict_new(name, instance):
    try:
        validator(name).check(instance)
        return None
    except BadRequest as e:
        return str(e)


def verdict_ref(name, instance):
    try:
        REFERENCE[name](instance)
        return None
    except fastjsonschema.JsonSchemaException as e:
        return _short(e.message)


def base_record():
    node = NodeIdentity.generate()
    return make_record(node, ["bittorrent://10.0.0.1:6881", "wss://10.0.0.1:8701/gossip"],
                       version=3, issued_at_ms=1_800_000_000_000,
                       repos=[{"name": "films", "size": 10, "files": 2}])["record"]


BASE = base_record()
FIELDS = sorted(BASE) + ["extra"]


@settings(max_examples=600, deadline=None)
@given(field=st.sampled_from(FIELDS), value=JSON, delete=st.booleans(),
       address=st.one_of(st.none(), JSON))
def test_peer_record_same_verdict_and_message(field, value, delete, address):
    record = dict(BASE)
    if delete and field in record:
        del record[field]
    else:
        record[field] = value
    if address is not None:
        record["addresses"] = list(BASE["addresses"]) + [address]
    assert verdict_new("PeerRecord", record) == verdict_ref("PeerRecord", record)


@settings(max_examples=800, deadline=None)
@given(name=st.sampled_from(SCHEMAS), instance=JSON)
def test_every_schema_same_verdict_and_message(name, instance):
    assert verdict_new(name, instance) == verdict_ref(name, instance)


def test_valid_record_passes_both():
    assert verdict_new("PeerRecord", BASE) is None and verdict_ref("PeerRecord", BASE) is None
