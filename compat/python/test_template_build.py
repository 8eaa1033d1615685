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
