"""The official SDK's `Template` builder against Airlock: steps, COPY
uploads by content hash, build logs, an unchanged rebuild from cache, a
failing step with its output, `Template.exists`, background builds, and a
registry image refused with what works instead."""

from __future__ import annotations

import pathlib
import time

import pytest
from e2b import Sandbox, Template
from e2b.exceptions import BuildException

from _support import kill_later, run_metadata, unique


def _context(tmp_path: pathlib.Path) -> str:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "hello.txt").write_text("hello from the context\n")
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho run\n")
    return str(tmp_path)


@pytest.mark.timeout_s(300)
def test_a_template_built_with_the_sdk_runs_and_rebuilds_from_cache(airlock_server, tmp_path):
    name = unique("tpl")
    t = (Template(file_context_path=_context(tmp_path)).from_template("base")
         .run_cmd("mkdir -p /home/user/work && echo \"$HOME\" > /home/user/home.txt")
         .set_envs({"GREETING": "hi there"})
         .copy("app/", "/home/user/app/")
         .copy("run.sh", "/home/user/run.sh", mode=0o755)
         .run_cmd("id -un > /home/user/who", user="root")
         .set_workdir("/home/user/work"))
    logs = []
    Template.build(t, name, on_build_logs=lambda e: logs.append(e.message))
    assert any("RUN mkdir" in m for m in logs), logs
    t0 = time.monotonic()
    again = []
    Template.build(t, name, on_build_logs=lambda e: again.append(e.message))
    assert time.monotonic() - t0 < 2, "an unchanged rebuild is served from cache"
    assert any("(cached)" in m for m in again) and any("Skipping upload" in m for m in again), again
    assert Template.exists(name) and not Template.exists(unique("none"))
    s = Sandbox.create(name, metadata=run_metadata())
    try:
        out = s.commands.run("echo $GREETING; cat /home/user/app/hello.txt /home/user/who /home/user/home.txt; stat -c '%a %U' /home/user/run.sh; pwd").stdout
        assert out == "hi there\nhello from the context\nroot\n/home/user\n755 user\n/home/user/work\n", out
    finally:
        kill_later(s)


@pytest.mark.timeout_s(300)
def test_a_failing_step_reports_its_output_and_background_builds_report_status(airlock_server):
    bad = Template().from_template("base").run_cmd("echo the-step-output; exit 3")
    with pytest.raises(BuildException) as e:
        Template.build(bad, unique("bad"))
    assert "failed with exit code 3" in str(e.value) and "the-step-output" in str(e.value), str(e.value)
    good = Template().from_template("base").run_cmd("echo background > /tmp/bg")
    info = Template.build_in_background(good, unique("bg"))
    deadline = time.monotonic() + 120
    while True:
        st = Template.get_build_status(info)
        if st.status.value in ("ready", "error"):
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert st.status.value == "ready", st


def test_a_registry_image_is_refused_with_what_works(airlock_server):
    with pytest.raises(Exception) as e:
        Template.build(Template().from_image("registry.test/team/image:1"), unique("img"))
    assert "does not pull images" in str(e.value), str(e.value)


@pytest.mark.timeout_s(300)
def test_tags_name_builds_and_move_between_them(airlock_server):
    name = unique("tag")
    v1 = Template().from_template("base").run_cmd("echo one > /home/user/ver")
    v2 = Template().from_template("base").run_cmd("echo two > /home/user/ver")
    Template.build(v1, f"{name}:v1")
    Template.build(v2, name)  # no tag: `default`
    assert Template.exists(name)

    def ver(ref: str) -> str:
        s = Sandbox.create(ref, metadata=run_metadata())
        try:
            return s.commands.run("cat /home/user/ver").stdout.strip()
        finally:
            kill_later(s)

    assert (ver(f"{name}:v1"), ver(name), ver(f"{name}:default")) == ("one", "two", "two")
    tags = {t.tag: t.build_id for t in Template.get_tags(name)}
    assert set(tags) == {"default", "v1"} and tags["default"] != tags["v1"], tags
    # Another tag on v1's build.
    info = Template.assign_tags(f"{name}:v1", ["production", "stable"])
    assert info.build_id == tags["v1"] and sorted(info.tags) == ["production", "stable"], info
    assert ver(f"{name}:production") == "one"
    # A new v1 build moves v1 only.
    Template.build(Template().from_template("base").run_cmd("echo three > /home/user/ver"), f"{name}:v1")
    assert (ver(f"{name}:v1"), ver(f"{name}:production"), ver(name)) == ("three", "one", "two")
    Template.remove_tags(name, "production")
    with pytest.raises(Exception):
        Sandbox.create(f"{name}:production", metadata=run_metadata())
    assert ver(f"{name}:stable") == "one", "the build stays while a tag names it"
    # Pointing default at a tagged build moves the name itself.
    Template.assign_tags(f"{name}:v1", "default")
    assert ver(name) == "three"
    with pytest.raises(Exception) as e:
        Template.remove_tags(name, "default")
    assert "default" in str(e.value)
    with pytest.raises(Exception):
        Template.assign_tags(f"{name}:nosuch", "x")
    with pytest.raises(Exception):
        Template.assign_tags(f"{name}:v1", "bad tag")


def test_v2_listing_and_template_updates_through_the_generated_client(airlock_server):
    from e2b.api.client.api.templates import get_v2_templates, patch_templates_template_id, patch_v_2_templates_template_id
    from e2b.api.client.models import TemplateUpdateRequest
    from e2b.api.client_sync import get_api_client
    from e2b.connection_config import ConnectionConfig

    name = unique("v2")
    Template.build(Template().from_template("base").run_cmd("true"), name)
    client = get_api_client(ConnectionConfig())
    r = get_v2_templates.sync_detailed(client=client, limit=1000)
    assert r.status_code == 200, r.content
    mine = [t for t in r.parsed if t.template_id == name]
    assert len(mine) == 1 and mine[0].build_status.value == "ready" and mine[0].public is False, r.content
    assert any(t.template_id == "base" for t in r.parsed)
    # Paging: one at a time, in name order, until the token runs out.
    seen, token = [], None
    for _ in range(200):
        kw = {"limit": 1} if token is None else {"limit": 1, "next_token": token}
        p = get_v2_templates.sync_detailed(client=client, **kw)
        seen += [t.template_id for t in p.parsed]
        token = p.headers.get("x-next-token")
        if not token:
            break
    assert seen == sorted(t.template_id for t in r.parsed), seen
    assert patch_templates_template_id.sync_detailed(name, client=client, body=TemplateUpdateRequest(public=True)).status_code == 200
    u = patch_v_2_templates_template_id.sync_detailed(name, client=client, body=TemplateUpdateRequest(public=False))
    assert u.status_code == 200 and u.parsed.names == [name], u.content
    r = get_v2_templates.sync_detailed(client=client, limit=1000)
    assert [t.public for t in r.parsed if t.template_id == name] == [False]
    assert patch_templates_template_id.sync_detailed(unique("none"), client=client, body=TemplateUpdateRequest(public=True)).status_code == 404
