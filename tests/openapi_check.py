"""Check a real response against an OpenAPI document: by default the one the
bootstrap server ships; the control API tests pass docs/control-openapi.json."""

from jsonschema import Draft202012Validator

from peernet.schemas import openapi_document


def response_schema(path, method, status, doc=None):
    doc = doc or openapi_document()
    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, which is not documented"
    response = responses[str(status)]
    if "$ref" in response:
        response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response["content"]["application/json"]["schema"]


def check_schema(schema, value, what, doc=None, doc_name="the OpenAPI schema"):
    doc = doc or openapi_document()
    root = dict(schema, components=doc["components"])
    errors = sorted(Draft202012Validator(root).iter_errors(value), key=str)
    assert not errors, f"{what} does not match {doc_name}: {errors[0].message}"


def assert_matches_openapi(path, method, status, body, doc=None, doc_name="the OpenAPI schema"):
    check_schema(response_schema(path, method, status, doc), body,
                 f"{method} {path} {status}", doc, doc_name)
