"""The official `e2b-code-interpreter` SDK, unmodified, against `airlock serve`.

The SDK's default template, `code-interpreter-v1`, is built by the server from
its built-in recipe the first time it is asked for (IPython, numpy, pandas,
matplotlib installed from PyPI into a template layer); the module fixture
creates the first sandbox with a long request timeout to allow for that.
"""

from __future__ import annotations

import base64
import time

import pytest

from e2b_code_interpreter import Sandbox

from _support import kill_later, run_metadata

# Building code-interpreter-v1 on first use downloads ~100 MB of wheels.
FIRST_CREATE_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def ci():
    sbx = Sandbox.create(metadata=run_metadata(suite="code-interpreter"), request_timeout=FIRST_CREATE_TIMEOUT_S)
    try:
        yield sbx
    finally:
        kill_later(sbx)


def test_default_template_is_code_interpreter_v1(ci):
    assert ci.get_info().template_id == "code-interpreter-v1"


def test_state_persists_between_cells_and_last_expression_is_the_result(ci):
    ci.run_code("counter = 40")
    ex = ci.run_code("counter += 2\ncounter")
    assert ex.error is None
    assert ex.text == "42"
    assert ex.results[0].is_main_result


def test_stdout_and_stderr_stream_to_callbacks(ci):
    out, err = [], []
    ex = ci.run_code(
        "import sys, time\nprint('one')\ntime.sleep(0.2)\nprint('two', file=sys.stderr)\nprint('three')",
        on_stdout=lambda m: out.append(m.line),
        on_stderr=lambda m: err.append(m.line),
    )
    assert ex.error is None
    assert "".join(out) == "one\nthree\n"
    assert "".join(err) == "two\n"
    assert "".join(ex.logs.stdout) == "one\nthree\n"
    assert ex.logs.stderr == ["two\n"]


def test_errors_carry_name_value_and_traceback(ci):
    ci.run_code("counter = 42")
    ex = ci.run_code("def f():\n    return 1 / 0\nf()")
    assert ex.error is not None
    assert ex.error.name == "ZeroDivisionError"
    assert "division by zero" in ex.error.value
    assert "f()" in ex.error.traceback
    # The context survives an error.
    assert ci.run_code("counter").text == "42"


def test_dataframe_comes_back_as_html(ci):
    ex = ci.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': [3, 4]})")
    assert ex.error is None
    r = ex.results[0]
    assert r.html is not None and "<table" in r.html
    assert r.text is not None and "a" in r.text


def test_matplotlib_chart_comes_back_as_png(ci):
    ex = ci.run_code(
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\n"
        "ax.plot([1, 2, 3], [1, 4, 9])\n"
        "plt.show()"
    )
    assert ex.error is None, ex.error
    pngs = [r.png for r in ex.results if r.png]
    assert pngs, ex.results
    assert base64.b64decode(pngs[0])[:8] == b"\x89PNG\r\n\x1a\n"


def test_rich_display_formats(ci):
    ex = ci.run_code(
        "from IPython.display import display, Markdown, HTML, JSON\n"
        "display(Markdown('**bold**'))\n"
        "display(JSON({'k': 1}))\n"
        "HTML('<b>x</b>')"
    )
    assert ex.error is None
    assert any(r.markdown == "**bold**" and not r.is_main_result for r in ex.results)
    assert any(r.json == {"k": 1} for r in ex.results)
    main = [r for r in ex.results if r.is_main_result]
    assert len(main) == 1 and main[0].html == "<b>x</b>"


def test_env_vars_apply_to_one_execution_only(ci):
    ex = ci.run_code("import os\nos.environ.get('AIRLOCK_CI_VAR')", envs={"AIRLOCK_CI_VAR": "set"})
    assert ex.text == "set"
    assert ci.run_code("import os\nos.environ.get('AIRLOCK_CI_VAR')").results == []


def test_execution_count_increases(ci):
    a = ci.run_code("1").execution_count
    b = ci.run_code("2").execution_count
    assert b == a + 1


def test_first_cell_output_is_only_the_cells(ci):
    # A fresh context: library warnings printed while its kernel starts are
    # not part of the cell's output.
    ctx = ci.create_code_context(language="python")
    ex = ci.run_code("print('only this')", context=ctx)
    assert ex.logs.stdout == ["only this\n"]
    assert ex.logs.stderr == []


def test_timeout_interrupts_but_keeps_state(ci):
    ci.run_code("kept = 'yes'")
    t = time.monotonic()
    with pytest.raises(Exception) as e:
        ci.run_code("import time\ntime.sleep(30)", timeout=2)
    assert time.monotonic() - t < 20
    assert "timeout" in type(e.value).__name__.lower() or "timed out" in str(e.value).lower()
    # The kernel was interrupted, not restarted: state is still there.
    ex = ci.run_code("kept")
    assert ex.text == "yes"


def test_contexts_per_language_have_their_own_state(ci):
    ci.run_code("counter = 42")
    py = ci.create_code_context(language="python", cwd="/tmp")
    js = ci.create_code_context(language="js")
    sh = ci.create_code_context(language="bash")
    assert ci.run_code("import os\nos.getcwd()", context=py).text == "/tmp"
    assert ci.run_code("counter = 1\ncounter", context=py).text == "1"
    assert ci.run_code("counter").text == "42", "the default context is separate"
    ex = ci.run_code("const x = 20; console.log('js says hi'); x * 2", context=js)
    assert ex.error is None, ex.error
    assert ex.text == "40"
    assert ex.logs.stdout == ["js says hi\n"]
    assert ci.run_code("await Promise.resolve(x + 1)", context=js).text == "21"
    js_err = ci.run_code("undefinedThing()", context=js)
    assert js_err.error is not None and js_err.error.name == "ReferenceError"
    ci.run_code("FOO=bar; cd /tmp; greet() { echo \"hi $1\"; }", context=sh)
    ex = ci.run_code("echo $FOO; pwd; greet you", context=sh)
    assert "".join(ex.logs.stdout) == "bar\n/tmp\nhi you\n"
    ids = {c.id for c in ci.list_code_contexts()}
    assert {py.id, js.id, sh.id} <= ids
    ci.restart_code_context(py)
    assert ci.run_code("'counter' in globals()", context=py).text == "False"
    ci.remove_code_context(js)
    assert js.id not in {c.id for c in ci.list_code_contexts()}


def test_language_shortcut_without_a_context(ci):
    assert "".join(ci.run_code("echo $((6 * 7))", language="bash").logs.stdout) == "42\n"
    assert ci.run_code("[1, 2, 3].map(n => n * 2)", language="javascript").text == "[ 2, 4, 6 ]"


def test_unknown_context_is_an_error(ci):
    from e2b_code_interpreter.models import Context

    with pytest.raises(Exception) as e:
        ci.run_code("1", context=Context(context_id="nope", language="python", cwd="/"))
    assert "not found" in str(e.value).lower()


def test_matplotlib_figures_come_back_as_charts_too(ci):
    """`result.chart`, as e2b-code-interpreter reads it: line, bar, scatter,
    pie, box-and-whisker, and a superchart of several axes."""
    from e2b_code_interpreter.charts import ChartType

    def chart(code):
        ex = ci.run_code("import matplotlib.pyplot as plt\nplt.figure()\n" + code + "\nplt.show()")
        assert ex.error is None, ex.error
        r = next(r for r in ex.results if r.chart is not None)
        assert r.png, "the PNG is still there"
        return r.chart

    c = chart("plt.plot([1, 2, 3], [1, 4, 9], label='squares'); plt.title('Squares'); plt.xlabel('x'); plt.ylabel('y')")
    assert (c.type, c.title, c.x_label, c.y_label) == (ChartType.LINE, "Squares", "x", "y")
    assert [(e.label, e.points) for e in c.elements] == [("squares", [(1, 1), (2, 4), (3, 9)])]
    c = chart("plt.bar(['a', 'b', 'c'], [3, 1, 2], label='counts')")
    assert c.type == ChartType.BAR and [(e.label, e.value, e.group) for e in c.elements] == [("a", 3, "counts"), ("b", 1, "counts"), ("c", 2, "counts")]
    c = chart("plt.scatter([1, 2], [3, 4], label='pts')")
    assert c.type == ChartType.SCATTER and c.elements[0].points == [(1.0, 3.0), (2.0, 4.0)]
    c = chart("plt.pie([1, 1, 2], labels=['x', 'y', 'z'])")
    assert c.type == ChartType.PIE and [(e.label, round(e.angle)) for e in c.elements] == [("x", 90), ("y", 90), ("z", 180)]
    c = chart("plt.boxplot([[1, 2, 3, 4, 5, 100], [2, 3, 4]], tick_labels=['A', 'B'])")
    assert c.type == ChartType.BOX_AND_WHISKER
    a = c.elements[0]
    assert (a.label, a.min, a.median, a.max, a.outliers) == ("A", 1, 3.5, 5, [100]), vars(a)
    ex = ci.run_code("import matplotlib.pyplot as plt\nfig, (l, r) = plt.subplots(1, 2)\nl.plot([0, 1], [0, 1]); r.bar(['p', 'q'], [1, 2])\nfig.suptitle('Both')\nplt.show()")
    c = next(r.chart for r in ex.results if r.chart is not None)
    assert c.type == ChartType.SUPERCHART and c.title == "Both" and [e.type for e in c.elements] == [ChartType.LINE, ChartType.BAR]


@pytest.mark.timeout_s(180)
@pytest.mark.parametrize("lang", ["r", "java"])
def test_r_and_java_kernels_keep_state_and_take_env_vars_per_execution(ci, lang):
    # The template has R and a JDK when the host's /usr does (.ci/run
    # installs r-base-core and a JDK; see templates/README for a recipe).
    code = {
        "r": ["x <- 40", "x <- x + 2\nx", 'Sys.getenv("AIRLOCK_LANG_VAR", "unset")', 'cat("out\\n"); message("err")', 'stop("boom")', "x * 2",
              'Sys.sleep(30)'],
        "java": ["int x = 40;", "x += 2;\nx", 'System.getenv("AIRLOCK_LANG_VAR")', 'System.out.println("out"); System.err.println("err");',
                 'Object o = null; o.toString();', "x * 2", "Thread.sleep(30000);"],
    }[lang]
    # The language shortcut, without a context (its own kernel).
    ex = ci.run_code("1 + 1", language=lang)
    assert ex.error is None and (ex.text or "").replace("[1] ", "") == "2", ex
    ctx = ci.create_code_context(language=lang)
    assert ctx.language == lang
    ex = ci.run_code(code[0], context=ctx)
    assert ex.error is None, ex
    ex = ci.run_code(code[1], context=ctx)
    assert ex.error is None and (ex.text or "").replace("[1] ", "") == "42", ex
    ex = ci.run_code(code[2], context=ctx, envs={"AIRLOCK_LANG_VAR": "per-cell"})
    assert (ex.text or "").replace("[1] ", "").strip('"') == "per-cell", ex
    # Only for that execution.
    ex = ci.run_code(code[2], context=ctx)
    assert (ex.text or "").replace("[1] ", "").strip('"') in ("unset", "null"), ex
    out, err = [], []
    ex = ci.run_code(code[3], context=ctx, on_stdout=lambda m: out.append(m.line), on_stderr=lambda m: err.append(m.line))
    assert ex.logs.stdout == ["out\n"] and ex.logs.stderr == ["err\n"], ex.logs
    assert out == ["out\n"] and err == ["err\n"]
    ex = ci.run_code(code[4], context=ctx)
    assert ex.error is not None and ("boom" in ex.error.value or "NullPointerException" in ex.error.name), ex.error
    # A timeout interrupts the cell; the state stays.
    with pytest.raises(Exception):
        ci.run_code(code[6], context=ctx, timeout=3)
    ex = ci.run_code(code[5], context=ctx)
    assert ex.error is None and (ex.text or "").replace("[1] ", "") == "84", ex
    ci.remove_code_context(ctx)


@pytest.mark.timeout_s(240)
def test_result_and_error_callbacks_reconnect_and_a_killed_sandbox():
    sbx = Sandbox.create(metadata=run_metadata(suite="code-interpreter"), request_timeout=FIRST_CREATE_TIMEOUT_S)
    try:
        results, errors = [], []
        ex = sbx.run_code("state = 'kept'\n6 * 7", on_result=results.append, on_error=errors.append)
        assert [r.text for r in results] == ["42"] and errors == [] and ex.text == "42"
        ex = sbx.run_code("raise ValueError('bad')", on_result=results.append, on_error=errors.append)
        assert [e.name for e in errors] == ["ValueError"] and errors[0].value == "bad" and ex.error.name == "ValueError"
        # Another client connects to the same sandbox: the kernel and its state are there.
        again = Sandbox.connect(sbx.sandbox_id)
        assert again.run_code("state").text == "kept"  # E2B strips a string's quotes
        ctx = again.create_code_context(cwd="/tmp")
        assert again.run_code("import os\nos.getcwd()", context=ctx).text == "/tmp"
        assert any(c.id == ctx.id for c in sbx.list_code_contexts())
    finally:
        sbx.kill()
    # A killed sandbox: a clear error, not a hang.
    t0 = time.monotonic()
    with pytest.raises(Exception) as e:
        sbx.run_code("1")
    assert time.monotonic() - t0 < 30
    assert "not found" in str(e.value).lower() or "killed" in str(e.value).lower() or "502" in str(e.value), repr(e.value)
