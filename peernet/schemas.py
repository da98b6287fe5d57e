"""JSON Schema validators built from the bootstrap's OpenAPI document.

The OpenAPI file (``peernet/bootstrap/openapi.json``, OpenAPI 3.1, so its
component schemas are plain JSON Schema, kept to draft-07 features) is the single definition of
every JSON shape peernet exchanges; the server validates requests with it and
the tests validate responses with it.
"""

import functools
import json
from importlib import resources

import fastjsonschema

from peernet.errors import BadRequest


@functools.lru_cache(maxsize=None)
def openapi_document():
    text = resources.files("peernet.bootstrap").joinpath("openapi.json").read_text("utf-8")
    return json.loads(text)


class SchemaValidator:
    """Validates against one component schema, compiled once (fastjsonschema:
    record checks sit on the gossip hot path, where a few microseconds count)."""

    def __init__(self, name):
        doc = openapi_document()
        self.name = name
        try:
            # Local $refs copied in place: fastjsonschema then checks array
            # items inline instead of through one call (and one error-name
            # format) per item; a PeerRecord check takes ~5.5 instead of
            # ~10 us.  Same rules, same error messages.
            self._validate = fastjsonschema.compile(_inline_refs(
                doc["components"]["schemas"][name], doc["components"]["schemas"], (name,)))
        except (_Recursive, fastjsonschema.JsonSchemaDefinitionException):
            self._validate = fastjsonschema.compile(
                {"$ref": f"#/components/schemas/{name}", "components": doc["components"]})

    def check(self, instance):
        """Raise BadRequest naming the first problem, or return None."""
        try:
            self._validate(instance)
        except fastjsonschema.JsonSchemaException as e:
            raise BadRequest(_short(e.message), code="invalid_body")

    def is_valid(self, instance):
        try:
            self._validate(instance)
        except fastjsonschema.JsonSchemaException:
            return False
        return True


class _Recursive(Exception):
    pass


_REF_PREFIX = "#/components/schemas/"


def _inline_refs(node, schemas, stack):
    """``node`` with each ``{"$ref": "#/components/schemas/X"}`` replaced by X.

    Raises _Recursive for a schema that refers to itself (left to $ref).
    """
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and len(node) == 1 and ref.startswith(_REF_PREFIX):
            target = ref[len(_REF_PREFIX):]
            if target in stack or target not in schemas:
                raise _Recursive(target)
            return _inline_refs(schemas[target], schemas, stack + (target,))
        return {k: _inline_refs(v, schemas, stack) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, schemas, stack) for v in node]
    return node


def _short(message):
    if message.startswith("data"):
        message = "body" + message[4:]
    message = message.replace("must not contain", "has unknown fields")
    return message if len(message) <= 200 else message[:197] + "..."


@functools.lru_cache(maxsize=None)
def validator(name):
    return SchemaValidator(name)
