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
        root = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        self.name = name
        self._validate = fastjsonschema.compile(root)

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


def _short(message):
    if message.startswith("data"):
        message = "body" + message[4:]
    message = message.replace("must not contain", "has unknown fields")
    return message if len(message) <= 200 else message[:197] + "..."


@functools.lru_cache(maxsize=None)
def validator(name):
    return SchemaValidator(name)
