"""API keys and the admin token, on the router process (over the stand-in backend) and as
the pure check it runs."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from standin_router import get, standin_router

from ascendra.router.auth import Credentials
from ascendra.router.protocol import ApiError

BACKEND, ROUTER = 18961, 18971
KEYS = {"ASCENDRA_API_KEYS": "key-one, key-two", "ASCENDRA_ADMIN_TOKEN": "admin-secret"}


@pytest.fixture(scope="module")
def router() -> Iterator[str]:
    with standin_router(BACKEND, ROUTER, env=KEYS) as url:
        yield url


def _client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def test_clients_need_one_of_the_keys(router: str):
    status, body = get(router + "/v1/models")  # no Authorization header at all
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    req = urllib.request.Request(router + "/v1/completions", method="POST",
                                 data=b'{"model": "tiny-llama", "prompt": [1]}')
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 401
    for bad in ("key-three", "admin-secret"):  # the admin token is no client key
        with pytest.raises(openai.AuthenticationError) as e:
            _client(router, bad).completions.create(model="tiny-llama", prompt=[1, 2],
                                                     max_tokens=2)
        assert e.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            _client(router, bad).models.list()
    for key in ("key-one", "key-two"):
        c = _client(router, key)
        assert [m.id for m in c.models.list().data] == ["tiny-llama"]
        chunks = list(c.completions.create(model="tiny-llama", prompt=[1, 2], max_tokens=3,
                                           stream=True))
        assert chunks[-1].choices[0].finish_reason == "length"


def test_admin_endpoints_take_the_admin_token_only_and_probes_stay_open(router: str):
    for headers in ({}, {"Authorization": "Bearer key-one"}):
        assert get(router + "/ascendra/instances", headers)[0] == 401
        req = urllib.request.Request(router + "/ascendra/drain", method="POST",
                                     data=b'{"instance": "http://127.0.0.1:1"}', headers=headers)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 401
    status, body = get(router + "/ascendra/instances", {"Authorization": "Bearer admin-secret"})
    assert status == 200 and json.loads(body)[0]["url"] == f"http://127.0.0.1:{BACKEND}"
    assert get(router + "/health")[0] == 200
    assert get(router + "/metrics")[0] == 200


def test_the_check_itself():
    open_ = Credentials()
    open_.check_client(None)  # the local default: no key needed, admin open
    open_.check_admin(None)
    keys_only = Credentials(("k",))
    keys_only.check_client("Bearer k")
    keys_only.check_client("bearer   k ")
    for bad in (None, "k", "Basic k", "Bearer", "Bearer kk"):
        with pytest.raises(ApiError) as e:
            keys_only.check_client(bad)
        assert e.value.status == 401
    with pytest.raises(ApiError) as e:  # client keys and no admin token: admin is closed
        keys_only.check_admin("Bearer k")
    assert e.value.status == 403
    assert Credentials.from_env({"ASCENDRA_API_KEYS": " a, ,b ", "ASCENDRA_ADMIN_TOKEN": ""}) \
        == Credentials(("a", "b"), None)
