"""Sandbox.list(): the paginator, metadata/state filters, order and paging."""

from __future__ import annotations

from typing import List

import pytest

from e2b import Sandbox, SandboxInfo, SandboxQuery, SandboxState

from _support import kill_later, run_metadata, unique


def _collect(paginator, max_pages: int = 20) -> List[List[SandboxInfo]]:
    pages = []
    while paginator.has_next:
        pages.append(paginator.next_items())
        assert len(pages) <= max_pages, "paginator never ended (X-Next-Token always set?)"
    return pages


def _ids(pages) -> List[str]:
    return [s.sandbox_id for page in pages for s in page]


@pytest.fixture
def tagged(airlock_server):
    """Three sandboxes sharing a unique metadata tag."""
    tag = unique("tag")
    sbxs = [Sandbox.create(metadata=run_metadata(group=tag, idx=str(i))) for i in range(3)]
    yield tag, sbxs
    for s in sbxs:
        kill_later(s)


def test_list_contains_created_sandbox(sandbox: Sandbox):
    pages = _collect(Sandbox.list())
    assert sandbox.sandbox_id in _ids(pages)


def test_list_item_fields(airlock_server):
    meta = run_metadata(kind="fields", case=unique())
    sbx = Sandbox.create(timeout=200, metadata=meta)
    try:
        [found] = [s for s in _ids_info(Sandbox.list(query=SandboxQuery(metadata={"case": meta["case"]})))]
        assert found.sandbox_id == sbx.sandbox_id
        assert found.metadata == meta
        assert found.state == SandboxState.RUNNING
        assert "base" in (found.template_id, found.name)
        assert found.started_at < found.end_at
        ttl = (found.end_at - found.started_at).total_seconds()
        assert 190 <= ttl <= 210, ttl
        assert found.cpu_count >= 1
        assert found.memory_mb >= 128
        assert found.envd_version
    finally:
        kill_later(sbx)


def _ids_info(paginator) -> List[SandboxInfo]:
    return [s for page in _collect(paginator) for s in page]


def test_list_metadata_filter(tagged):
    tag, sbxs = tagged
    found = _ids_info(Sandbox.list(query=SandboxQuery(metadata={"group": tag})))
    assert sorted(s.sandbox_id for s in found) == sorted(s.sandbox_id for s in sbxs)
    for s in found:
        assert s.metadata["group"] == tag


def test_list_metadata_filter_all_pairs_must_match(tagged):
    tag, sbxs = tagged
    found = _ids_info(Sandbox.list(query=SandboxQuery(metadata={"group": tag, "idx": "1"})))
    assert [s.sandbox_id for s in found] == [sbxs[1].sandbox_id]

    none = _ids_info(Sandbox.list(query=SandboxQuery(metadata={"group": tag, "idx": "7"})))
    assert none == []

    none = _ids_info(Sandbox.list(query=SandboxQuery(metadata={"group": unique("nomatch")})))
    assert none == []


def test_list_metadata_filter_special_characters(airlock_server):
    value = "a b&c=d/é%+?"
    key = "special key"
    sbx = Sandbox.create(metadata=run_metadata(**{key: value}))
    try:
        found = _ids_info(Sandbox.list(query=SandboxQuery(metadata={key: value})))
        assert sbx.sandbox_id in [s.sandbox_id for s in found]
        info = [s for s in found if s.sandbox_id == sbx.sandbox_id][0]
        assert info.metadata[key] == value
        assert sbx.get_info().metadata[key] == value
    finally:
        kill_later(sbx)


def test_list_paging_limit_1(tagged):
    tag, sbxs = tagged
    paginator = Sandbox.list(query=SandboxQuery(metadata={"group": tag}), limit=1)
    assert paginator.has_next
    pages = _collect(paginator)
    assert all(len(p) <= 1 for p in pages), [len(p) for p in pages]
    ids = _ids(pages)
    assert len(ids) == len(set(ids)), f"duplicates across pages: {ids}"
    assert sorted(ids) == sorted(s.sandbox_id for s in sbxs)
    assert len([p for p in pages if p]) == 3
    assert paginator.has_next is False
    assert not paginator.next_token
    with pytest.raises(Exception):
        paginator.next_items()


def test_list_paging_limit_2_and_next_token_resume(tagged):
    tag, sbxs = tagged
    query = SandboxQuery(metadata={"group": tag})
    first = Sandbox.list(query=query, limit=2)
    page1 = first.next_items()
    assert len(page1) == 2
    assert first.has_next and first.next_token
    # A fresh paginator can resume from the token.
    resumed = Sandbox.list(query=query, limit=2, next_token=first.next_token)
    rest = _ids(_collect(resumed))
    ids = [s.sandbox_id for s in page1] + rest
    assert sorted(ids) == sorted(s.sandbox_id for s in sbxs)


def test_list_order(tagged):
    tag, _ = tagged
    query = SandboxQuery(metadata={"group": tag})
    asc = _ids_info(Sandbox.list(query=query, order="asc"))
    desc = _ids_info(Sandbox.list(query=query, order="desc"))
    assert len(asc) == len(desc) == 3
    assert [s.started_at for s in asc] == sorted(s.started_at for s in asc)
    assert [s.started_at for s in desc] == sorted((s.started_at for s in desc), reverse=True)


def test_list_state_filter(tagged):
    tag, sbxs = tagged
    paused = sbxs[0]
    assert paused.pause() is True
    query_meta = {"group": tag}

    only_paused = _ids_info(Sandbox.list(query=SandboxQuery(metadata=query_meta,
                                                            state=[SandboxState.PAUSED])))
    assert [s.sandbox_id for s in only_paused] == [paused.sandbox_id]
    assert only_paused[0].state == SandboxState.PAUSED

    only_running = _ids_info(Sandbox.list(query=SandboxQuery(metadata=query_meta,
                                                             state=[SandboxState.RUNNING])))
    assert sorted(s.sandbox_id for s in only_running) == sorted(s.sandbox_id for s in sbxs[1:])
    assert all(s.state == SandboxState.RUNNING for s in only_running)

    both = _ids_info(Sandbox.list(query=SandboxQuery(
        metadata=query_meta, state=[SandboxState.RUNNING, SandboxState.PAUSED])))
    assert sorted(s.sandbox_id for s in both) == sorted(s.sandbox_id for s in sbxs)

    # default: running and paused
    default = _ids_info(Sandbox.list(query=SandboxQuery(metadata=query_meta)))
    assert sorted(s.sandbox_id for s in default) == sorted(s.sandbox_id for s in sbxs)


def test_list_excludes_killed(tagged):
    tag, sbxs = tagged
    sbxs[2].kill()
    found = _ids(_collect(Sandbox.list(query=SandboxQuery(metadata={"group": tag}))))
    assert sorted(found) == sorted(s.sandbox_id for s in sbxs[:2])


def test_list_template_filter(tagged):
    tag, sbxs = tagged
    found = _ids(_collect(Sandbox.list(query=SandboxQuery(metadata={"group": tag},
                                                          template="base"))))
    assert sorted(found) == sorted(s.sandbox_id for s in sbxs)
    none = _ids(_collect(Sandbox.list(query=SandboxQuery(metadata={"group": tag},
                                                         template=unique("notmpl")))))
    assert none == []


def test_list_is_newest_first_by_default_and_pages_in_that_order(tagged):
    tag, sbxs = tagged
    query = SandboxQuery(metadata={"group": tag})
    default = _ids(_collect(Sandbox.list(query=query)))
    assert default == [s.sandbox_id for s in reversed(sbxs)], "newest first, as E2B lists"
    paged = _ids(_collect(Sandbox.list(query=query, limit=1)))
    assert paged == default, "each page is the next sandbox in that order"
    sbxs[1].pause()
    for states in ([SandboxState.RUNNING], [SandboxState.PAUSED], [SandboxState.RUNNING, SandboxState.PAUSED]):
        want = [i for i in default if (i == sbxs[1].sandbox_id) == (states == [SandboxState.PAUSED]) or len(states) == 2]
        got = _ids(_collect(Sandbox.list(query=SandboxQuery(metadata={"group": tag}, state=states), limit=1)))
        assert got == want, (states, got, want)


def test_list_started_after(tagged):
    import datetime
    tag, sbxs = tagged
    infos = {s.sandbox_id: s.get_info() for s in sbxs}
    second = infos[sbxs[1].sandbox_id].started_at
    later = _ids(_collect(Sandbox.list(query=SandboxQuery(metadata={"group": tag}, started_after=second))))
    assert later == [sbxs[2].sandbox_id, sbxs[1].sandbox_id], later
    future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    assert _ids(_collect(Sandbox.list(query=SandboxQuery(metadata={"group": tag}, started_after=future)))) == []
