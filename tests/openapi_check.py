"""Check a real response against the OpenAPI document the server ships."""

from jsonschema import Draft202012Validator

from peernet.schemas import openapi_document


def response_schema(path, method, status):
    doc = openapi_document()
    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, which is not documented"
    response = responses[str(status)]
    if "$ref" in response:
        response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response["content"]["application/json"]["schema"]


def assert_matches_openapi(path, method, status, body):
    schema = response_schema(path, method, status)
    root = dict(schema, components=openapi_document()["components"])
    errors = sorted(Draft202012Validator(root).iter_errors(body), key=str)
    assert not errors, f"{method} {path} {status} does not match the OpenAPI schema: {errors[0].message}"
