"""The OpenAI-compatible embeddings route, spoken to by the real `openai`
package over HTTP, and the OpenAPI document."""
import base64

import numpy as np
import pytest

from audit.ledger.models import AuditEvent
from tests.search.portal_fixtures import people, served  # noqa: F401


@pytest.mark.django_db(transaction=True)
def test_openai_package_gets_embeddings_with_a_portal_token(live_server, served, tenants, make_user, make_token):
    import openai

    alice = make_user("alice", tenants["acme"], "searcher")
    _, token = make_token(alice, tenants["acme"])
    client = openai.OpenAI(api_key=token, base_url=f"{live_server.url}/v1", max_retries=0, timeout=60)
    one = client.embeddings.create(model="ignored-by-portal", input="reset my password")
    assert one.model == served.model_id and len(one.data) == 1
    vector = np.array(one.data[0].embedding, dtype=np.float32)
    assert vector.shape == (served.dimensions,) and abs(np.linalg.norm(vector) - 1) < 1e-5
    direct = served.embed(["reset my password"], kind="document").vectors[0]
    assert float(vector @ direct) > 0.99999
    many = client.embeddings.create(model="m", input=["a printer", "a VPN token"], dimensions=64,
                                    encoding_format="base64")
    assert [d.index for d in many.data] == [0, 1]
    short = np.frombuffer(base64.b64decode(many.data[0].embedding), dtype="<f4")
    assert short.shape == (64,) and abs(np.linalg.norm(short) - 1) < 1e-5
    assert many.usage.prompt_tokens > 0 and many.usage.total_tokens == many.usage.prompt_tokens
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="sp_wrong", base_url=f"{live_server.url}/v1", max_retries=0).embeddings.create(
            model="m", input="x")
    events = AuditEvent.objects.filter(action="embeddings.create", outcome="success")
    assert events.count() == 2 and {e.kb_lines for e in events} == {1, 2}


def test_embeddings_base64_is_little_endian_float32(served, people, make_token, bearer, tenants):
    _, token = make_token(people["alice"], tenants["acme"])
    body = bearer(token).post("/v1/embeddings", {"input": ["x"], "encoding_format": "base64"}, format="json").json()
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert decoded.shape == (served.dimensions,)
    assert body["object"] == "list" and body["data"][0]["object"] == "embedding"


def test_dimensions_truncate_and_renormalise(served, people, make_token, bearer, tenants):
    _, token = make_token(people["alice"], tenants["acme"])
    api = bearer(token)
    full = np.array(api.post("/v1/embeddings", {"input": "a quiet office"}, format="json").json()["data"][0]["embedding"])
    short = np.array(api.post("/v1/embeddings", {"input": "a quiet office", "dimensions": 32},
                              format="json").json()["data"][0]["embedding"])
    assert short.shape == (32,) and abs(np.linalg.norm(short) - 1) < 1e-5
    assert np.allclose(short, full[:32] / np.linalg.norm(full[:32]), atol=1e-5)


def test_openapi_schema_lists_every_api_route(client, db):
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    for route in ("/api/v1/search", "/api/v1/radar", "/api/v1/kbs", "/api/v1/kbs/{kb_id}",
                  "/api/v1/kbs/{kb_id}/documents", "/api/v1/kbs/{kb_id}/documents/{doc_id}", "/v1/embeddings"):
        assert route in schema["paths"], route
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    def request_schema(path):
        ref = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        return schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
    assert set(request_schema("/api/v1/search")) == {"kb", "query", "top_k"}
    assert set(request_schema("/v1/embeddings")) >= {"input", "dimensions", "encoding_format"}
    assert "EmbeddingsOutput" in str(schema["paths"]["/v1/embeddings"]["post"]["responses"]["200"])
    assert "data" in schema["components"]["schemas"]["EmbeddingsOutput"]["properties"]


def test_api_docs_page_uses_no_outside_assets(client, db):
    html = client.get("/api/v1/docs/").content.decode()
    assert "swagger-ui" in html
    assert "cdn." not in html and "https://" not in html.replace("https://swagger.io", "")


def _schema(client):
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return response.json()


def _resolve(schema, node):
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_every_operation_has_a_summary_tags_and_problem_json_4xx(client, db):
    schema = _schema(client)
    problem = schema["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    operations = [(path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items()]
    assert len(operations) >= 16
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        assert op.get("summary"), where
        assert op.get("tags"), where
        errors = {code: r for code, r in op["responses"].items() if code.startswith("4")}
        assert {"401", "429"} <= set(errors) and "503" in op["responses"], where
        for code, response in errors.items():
            assert response["content"]["application/problem+json"]["schema"] == {
                "$ref": "#/components/schemas/Problem"}, (where, code)
            assert response["description"], (where, code)
        if method in ("post", "delete") or "{" in path:
            assert "404" in errors or path == "/api/v1/tokens", where
        if method == "post":
            assert {"400", "413", "415"} <= set(errors), where


def test_list_routes_are_documented_as_the_objects_they_return(client, db):
    schema = _schema(client)

    def ok(path):
        return _resolve(schema, schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
                        ["schema"])

    for path, members in [("/api/v1/kbs", {"results"}), ("/api/v1/tokens", {"results"}),
                          ("/api/v1/kbs/{kb_id}/documents", {"count", "next", "previous", "results"}),
                          ("/api/v1/audit/events", {"next", "previous", "results"})]:
        body = ok(path)
        assert body["type"] == "object" and set(body["properties"]) == members, path
        assert body["properties"]["results"]["type"] == "array", path
    kb = schema["components"]["schemas"]["KbOutput"]["properties"]
    assert kb["line_count"].get("nullable") is True
    presign = _resolve(schema, schema["paths"]["/api/v1/audit/export/presign"]["post"]["responses"]["200"]
                       ["content"]["application/json"]["schema"])
    assert set(presign["properties"]) == {"url", "expires"}
