"""Issue 9, user trial: nonsense must not look like an answer (the relevance
floor and weak matches), and the portal says which model serves and which
languages it reads, warning when a query is written in another script."""
import re

import pytest
from django.core.management import CommandError

from tests.search.conftest import MINILM_ID, MINILM_RELEVANCE_FLOOR
from tests.search.portal_fixtures import faq_kb, faq_queries, people, served, token_for  # noqa: F401
from tests.search.test_model_commands import command_key, run  # noqa: F401

NONSENSE = ["asdkjh qwpeoiru zmxncb", "qwerty uiop", "blorf snargle wimble", "lorem ipsum dolor sit amet",
            "mnbvcx lkjhgf poiuyt", "xkcd 1234 9876", "!!!???", "zzzz xxxx yyyy"]
CHINESE = "我忘记了登录密码"  # "I forgot my login password": the FAQ's line 2, in Chinese


# --- relevance floor -----------------------------------------------------------------------------


def test_every_faq_answer_is_a_strong_match_and_the_floor_is_reported(faq_kb, people, token_for):
    api = token_for(people["alice"])
    line_of = {d.pk: d.source_line for d in faq_kb.documents.all()}
    for item in faq_queries():
        body = api.post("/api/v1/search", {"kb": faq_kb.pk, "query": item["query"], "top_k": 3},
                        format="json").json()
        assert body["min_score"] == MINILM_RELEVANCE_FLOOR
        answer = [r for r in body["results"] if line_of[r["id"]] == item["answer_line"]]
        assert answer and answer[0]["weak"] is False, f"{item['query']!r}: {answer}"
        assert all(r["weak"] == (r["score"] < body["min_score"]) for r in body["results"])


@pytest.mark.parametrize("query", NONSENSE)
def test_nonsense_returns_every_hit_flagged_weak(faq_kb, people, token_for, query):
    body = token_for(people["alice"]).post("/api/v1/search", {"kb": "FAQ", "query": query, "top_k": 20},
                                           format="json").json()
    assert len(body["results"]) == 20  # clients still get every hit, and decide
    assert all(r["weak"] is True for r in body["results"]), [r["score"] for r in body["results"][:3]]


def test_nonsense_on_the_page_shows_nothing_matched_well_with_the_hits_folded(faq_kb, people, client):
    client.force_login(people["alice"])
    response = client.post("/", {"kb": faq_kb.pk, "query": NONSENSE[0], "top_k": 20})
    html = response.content.decode()
    assert response.context["result"].strong_hits == [] and len(response.context["result"].weak_hits) == 20
    assert "Nothing matched well." in html and "relevance floor of 0.25" in html
    folded = html[html.index("<details"):html.index("</details>")]
    assert "20 weak matches, scored under 0.25" in folded
    assert folded.count('<li class="weak">') == 20
    assert '<ol class="results">' not in html  # no unfolded list that looks like answers


def test_a_good_question_on_the_page_shows_its_answer_unfolded_and_the_rest_weak(faq_kb, people, client):
    client.force_login(people["alice"])
    response = client.post("/", {"kb": faq_kb.pk, "query": "I forgot my login credentials", "top_k": 10})
    html = response.content.decode()
    result = response.context["result"]
    assert result.strong_hits[0].source_line == 2 and result.weak_hits
    answer = html.index(result.strong_hits[0].text.split("'")[0][:30])
    assert "Nothing matched well." not in html
    assert answer < html.index("<details") < html.index(result.weak_hits[0].text.split("'")[0][:30])


def test_radar_flags_nonsense_weak_against_the_models_floor(served, people, token_for, client):
    lines = ["The canteen opens at 8.", "Expense reports are due on the 5th.", "Badges are issued at reception."]
    api = token_for(people["alice"])
    good = api.post("/api/v1/radar", {"documents": lines, "query": "when is lunch served", "top_k": 3},
                    format="json").json()
    assert good["min_score"] == MINILM_RELEVANCE_FLOOR and good["results"][0]["weak"] is False
    bad = api.post("/api/v1/radar", {"documents": lines, "query": NONSENSE[0], "top_k": 3}, format="json").json()
    assert [r["weak"] for r in bad["results"]] == [True, True, True]
    client.force_login(people["alice"])
    page = client.post("/radar/", {"documents": "\n".join(lines), "query": NONSENSE[0], "top_k": 3})
    assert "Nothing matched well." in page.content.decode()


def test_a_knowledge_base_floor_overrides_the_models(faq_kb, people, token_for):
    curator, searcher = token_for(people["carol"]), token_for(people["alice"])
    created = curator.post("/api/v1/kbs", {"name": "Strict", "min_score": 0.9}, format="json")
    assert created.status_code == 201 and created.json()["min_score"] == 0.9
    curator.post(f"/api/v1/kbs/{created.json()['id']}/documents",
                 {"documents": list(faq_kb.documents.values_list("text", flat=True))}, format="json")
    body = searcher.post("/api/v1/search", {"kb": "Strict", "query": "I forgot my login credentials"},
                         format="json").json()
    assert body["min_score"] == 0.9 and all(r["weak"] for r in body["results"])
    loose = curator.post("/api/v1/kbs", {"name": "Loose", "min_score": 0}, format="json").json()
    assert loose["min_score"] == 0.0
    assert curator.get("/api/v1/kbs").json()["results"][0]["min_score"] is None  # FAQ: the model's default


@pytest.mark.parametrize("value", [1.5, -0.1, "high", True])
def test_a_knowledge_base_floor_outside_0_to_1_is_refused(faq_kb, people, token_for, value):
    response = token_for(people["carol"]).post("/api/v1/kbs", {"name": "Bad", "min_score": value}, format="json")
    assert response.status_code == 400 and "min_score" in response.content.decode()


def test_a_curator_sets_the_floor_on_the_page(faq_kb, people, client):
    from search.models import KnowledgeBase

    client.force_login(people["carol"])
    assert client.post("/kbs/", {"name": "Paged", "min_score": "0.4"}).status_code == 302
    assert KnowledgeBase.objects.get(name="Paged").min_score == 0.4
    refused = client.post("/kbs/", {"name": "Paged2", "min_score": "2"})
    assert refused.status_code == 400 and not KnowledgeBase.objects.filter(name="Paged2").exists()
    listing = client.get("/kbs/").content.decode()
    assert "0.40" in listing and "model default" in listing


def test_without_a_calibrated_floor_the_setting_applies(faq_kb, served, people, token_for, monkeypatch, settings):
    monkeypatch.setattr(served, "relevance_floor", None)  # a bundle sealed without --relevance-floor
    api = token_for(people["alice"])
    settings.SEARCH_DEFAULT_MIN_SCORE = None
    body = api.post("/api/v1/search", {"kb": "FAQ", "query": NONSENSE[0]}, format="json").json()
    assert body["min_score"] is None and not any(r["weak"] for r in body["results"])
    assert body["model"]["relevance_floor"] is None
    settings.SEARCH_DEFAULT_MIN_SCORE = 0.5
    body = api.post("/api/v1/search", {"kb": "FAQ", "query": "I forgot my login credentials"}, format="json").json()
    assert body["min_score"] == 0.5 and [r["weak"] for r in body["results"]][1:] == [True] * 4


# --- model and languages ---------------------------------------------------------------------------


def test_model_seal_records_languages_and_floor_in_the_sealed_metadata_only(tmp_path, tiny_qwen3_dir, command_key):
    from search.engine import Engine

    bundle = tmp_path / "multi.q3e.enc"
    shown = run("model_seal", str(tiny_qwen3_dir), str(bundle), "--languages", "en, ZH", "--relevance-floor", "0.3",
                "--no-onnx")
    assert "languages: en,zh; relevance floor: 0.3" in shown
    engine = Engine.open(bundle, command_key, device="cpu")
    try:
        assert engine.languages == ("en", "zh") and engine.relevance_floor == 0.3
    finally:
        engine.close()
    public = run("model_inspect", str(bundle))
    assert "languages" not in public and "zh" not in public and "floor" not in public


def test_the_worker_logs_the_sealed_languages_and_floor(sealed_minilm, model_key, caplog):
    from search.engine import open_engine, set_engine

    previous, engine = set_engine(None), None
    try:
        with caplog.at_level("INFO", logger="search.engine"):
            engine = open_engine(sealed_minilm, model_key, device="cpu")
        assert f"{MINILM_ID} opened" in caplog.text and "languages en; relevance floor 0.25" in caplog.text
    finally:
        set_engine(previous)
        if engine is not None:
            engine.close()


@pytest.mark.parametrize("args,message", [
    (["--languages", "en,chinese"], "'chinese' is not an ISO 639-1 language code"),
    (["--relevance-floor", "1.2"], "relevance floor must be a number from 0 to 1"),
])
def test_model_seal_refuses_bad_languages_and_floors(tmp_path, tiny_qwen3_dir, args, message):
    with pytest.raises(CommandError, match=message):
        run("model_seal", str(tiny_qwen3_dir), str(tmp_path / "x.q3e.enc"), *args)
    assert not (tmp_path / "x.q3e.enc").exists()


@pytest.mark.parametrize("path", ["/", "/kbs/", "/radar/"])
def test_pages_say_which_model_serves_and_its_languages(faq_kb, people, client, path):
    client.force_login(people["carol"])
    html = client.get(path).content.decode()
    assert f"Model: {MINILM_ID} · languages: English · relevance floor 0.25" in html
    zh = client.get(path, HTTP_ACCEPT_LANGUAGE="zh-CN").content.decode()
    assert re.search(r"模型：sentence-transformers/all-MiniLM-L6-v2 · 语言：英语", zh)


def test_api_model_is_an_object_with_id_languages_and_floor(faq_kb, people, token_for):
    api = token_for(people["alice"])
    for path, body in (("/api/v1/search", {"kb": "FAQ", "query": "printer jammed"}),
                       ("/api/v1/radar", {"documents": ["a printer"], "query": "printer jammed"})):
        model = api.post(path, body, format="json").json()["model"]
        assert model == {"id": MINILM_ID, "languages": ["en"], "relevance_floor": MINILM_RELEVANCE_FLOOR}
    assert api.post("/v1/embeddings", {"input": "x"}, format="json").json()["model"] == MINILM_ID  # OpenAI's string


def test_a_chinese_query_on_the_english_model_is_warned_an_english_one_is_not(faq_kb, people, token_for, client):
    api = token_for(people["alice"])
    chinese = api.post("/api/v1/search", {"kb": "FAQ", "query": CHINESE}, format="json").json()
    assert [(w["code"], w["scripts"], w["languages"]) for w in chinese["warnings"]] == [
        ("query_script_not_read", ["Han"], ["en"])]
    assert "Han" in chinese["warnings"][0]["message"]
    english = api.post("/api/v1/search", {"kb": "FAQ", "query": "I forgot my login password"}, format="json")
    assert english.json()["warnings"] == []
    radar = api.post("/api/v1/radar", {"documents": ["a printer"], "query": CHINESE}, format="json").json()
    assert radar["warnings"][0]["scripts"] == ["Han"]

    client.force_login(people["alice"])
    page = client.post("/", {"kb": faq_kb.pk, "query": CHINESE, "top_k": 5}).content.decode()
    assert ("Your question is written in Chinese characters (Han), which "
            f"{MINILM_ID} does not read (it reads English)") in page
    assert "query-warning" not in client.post("/", {"kb": faq_kb.pk, "query": "VPN from home"}).content.decode()
    zh = client.post("/", {"kb": faq_kb.pk, "query": CHINESE, "top_k": 5},
                     HTTP_ACCEPT_LANGUAGE="zh-CN").content.decode()
    assert "汉字" in zh and "英语" in zh


@pytest.mark.parametrize("text,scripts", [
    ("reset my password", ["Latin"]),
    ("我忘记了登录密码", ["Han"]),
    ("VPN 怎么连接", ["Han", "Latin"]),
    ("сбросить пароль", ["Cyrillic"]),
    ("إعادة تعيين كلمة المرور", ["Arabic"]),
    ("パスワードを忘れた", ["Katakana", "Hiragana"]),
    ("π r squared", ["Latin"]),  # one stray Greek letter is not a Greek query
    ("12345 !!", []),
])
def test_query_scripts(text, scripts):
    from search.languages import query_scripts

    assert query_scripts(text) == scripts


@pytest.mark.parametrize("text,languages,unread", [
    ("我忘记了登录密码", ("en",), ["Han"]),
    ("我忘记了登录密码", ("en", "zh"), []),
    ("VPN 怎么连接", ("en",), ["Han"]),
    ("reset my password", ("zh",), ["Latin"]),
    ("reset my password", ("en",), []),
    ("сбросить пароль", ("en", "de"), ["Cyrillic"]),
    ("сбросить пароль", ("ru",), []),
    ("我忘记了登录密码", (), []),  # languages not stated: nothing known to warn about
])
def test_unread_scripts(text, languages, unread):
    from search.languages import unread_scripts

    assert unread_scripts(text, languages) == unread
