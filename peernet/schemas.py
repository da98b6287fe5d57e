"""JSON Schema validators built from the bootstrap's OpenAPI document.

The OpenAPI file (``peernet/bootstrap/openapi.json``, OpenAPI 3.1, so its
component schemas are plain JSON Schema 2020-12) is the single definition of
every JSON shape peernet exchanges; the server validates requests with it and
the tests validate responses with it.
"""

import functools
import json
from importlib import resources

from jsonschema import Draft202012Validator

from peernet.errors import BadRequest


@functools.lru_cache(maxsize=None)
def openapi_document():
    text = resources.files("peernet.bootstrap").joinpath("openapi.json").read_text("utf-8")
    return json.loads(text)


class SchemaValidator:
    def __init__(self, name):
        doc = openapi_document()
        root = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        self.name = name
        self._validator = Draft202012Validator(root)

    def check(self, instance):
        """Raise BadRequest naming the first problem, or return None."""
        error = next(iter(self._validator.iter_errors(instance)), None)
        if error is None:
            return
        where = "/".join(str(p) for p in error.absolute_path) or "the body"
        raise BadRequest(f"{where}: {_short(error)}", code="invalid_body")

    def is_valid(self, instance):
        return self._validator.is_valid(instance)


def _short(error):
    if error.validator == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "unknown field")
    message = error.message
    return message if len(message) <= 200 else message[:197] + "..."


@functools.lru_cache(maxsize=None)
def validator(name):
    return SchemaValidator(name)
