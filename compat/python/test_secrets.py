"""E2B secrets with the official SDK's `Secret` and `AsyncSecret`: create, get by id
and by name, the paginator, update (a new version), exists, destroy, the
placeholder `Secret.fill` makes; and no answer, raw or parsed, carrying a value."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request

import pytest

from e2b import AsyncSecret, Secret, SecretException, SecretInfo, SecretNotFoundException

from _support import unique

VALUE = "sk-compat-5b1e0c7f2a9d4e38-not-real"


def _raw(path: str) -> tuple[int, bytes]:
    req = urllib.request.Request(os.environ["E2B_API_URL"] + path, headers={"X-API-KEY": os.environ["E2B_API_KEY"]})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_secret_lifecycle_with_the_official_sdk():
    name = unique("Key-")
    info = Secret.create(name, VALUE, metadata={"owner": "compat"})
    try:
        assert isinstance(info, SecretInfo)
        assert info.secret_id.startswith("sec_")
        assert info.name == name.lower(), "names are stored lower-cased"
        assert info.version == 1
        assert info.metadata == {"owner": "compat"}
        assert info.created_at == info.updated_at

        by_id = Secret.get_info(info.secret_id)
        by_name = Secret.get_info(name.lower())
        assert by_id == by_name == info
        assert Secret.exists(info.secret_id) and Secret.exists(name.lower())

        # A name is unique.
        with pytest.raises(SecretException):
            Secret.create(name.upper(), "other")

        updated = Secret.update(name.lower(), "sk-rotated-compat-value")
        assert updated.version == 2 and updated.metadata == {"owner": "compat"}, "metadata kept unless given"
        assert updated.updated_at >= info.updated_at
        replaced = Secret.update(info.secret_id, "sk-rotated-compat-value-2", metadata={"k": "v"})
        assert replaced.version == 3 and replaced.metadata == {"k": "v"}

        # No read surface shows a value.
        for path in ("/secrets", f"/secrets/{info.secret_id}", f"/secrets/{name.lower()}"):
            status, body = _raw(path)
            assert status == 200, (path, body)
            for v in (VALUE, "sk-rotated-compat-value"):
                assert v.encode() not in body, path

        assert Secret.fill(name.lower()) == "${e2b.secrets." + name.lower() + "}"
    finally:
        assert Secret.destroy(info.secret_id) is True
    assert Secret.destroy(info.secret_id) is False, "a second destroy finds nothing"
    assert not Secret.exists(info.secret_id)
    with pytest.raises(SecretNotFoundException):
        Secret.get_info(info.secret_id)
    with pytest.raises(SecretNotFoundException):
        Secret.update(info.secret_id, "v")


def test_paginator_walks_every_page():
    prefix = unique("page-")
    made = [Secret.create(f"{prefix}-{i}", f"value-{i}") for i in range(5)]
    try:
        paginator = Secret.list(limit=2)
        seen: list[str] = []
        pages = 0
        while paginator.has_next:
            items = paginator.next_items()
            assert len(items) <= 2
            seen += [s.name for s in items]
            pages += 1
        mine = [n for n in seen if n.startswith(prefix)]
        assert mine == [s.name for s in made], "oldest first, each once"
        assert pages >= 3
        assert paginator.next_token is None
        with pytest.raises(Exception):
            paginator.next_items()
    finally:
        for s in made:
            Secret.destroy(s.secret_id)


def test_bad_requests_are_refused_with_the_sdk_exception():
    for bad in ("", "sec_reserved", "a{b}"):
        with pytest.raises(SecretException):
            Secret.create(bad, "v")
    with pytest.raises(SecretException):
        Secret.create(unique("m-"), "v", metadata={f"k{i}": "v" for i in range(33)})
    with pytest.raises(SecretException):
        Secret.create(unique("m-"), "v", metadata={"k": "x" * 1025})
    status, body = _raw("/secrets?limit=0")
    assert status == 400 and json.loads(body)["code"] == 400


def test_async_secret():
    async def main():
        name = unique("async-")
        info = await AsyncSecret.create(name, VALUE)
        try:
            assert (await AsyncSecret.get_info(name)).secret_id == info.secret_id
            assert (await AsyncSecret.update(info.secret_id, "v2")).version == 2
            paginator = AsyncSecret.list(limit=100)
            names = []
            while paginator.has_next:
                names += [s.name for s in await paginator.next_items()]
            assert name in names
        finally:
            assert await AsyncSecret.destroy(info.secret_id) is True
        assert not await AsyncSecret.exists(name)

    asyncio.run(main())
