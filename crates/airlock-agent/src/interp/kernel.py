# Airlock Python kernel driver. Requests arrive as JSON lines on fd 4;
# events go out as JSON lines on fd 3. The cell's own output (and that of
# any subprocess it starts) goes to fd 1 and 2, which the agent streams.
import ast
import json
import os
import sys
import traceback

_events = os.fdopen(3, "w", buffering=1, encoding="utf-8", errors="replace")
_requests = os.fdopen(4, "r", encoding="utf-8")
os.set_inheritable(3, False)
os.set_inheritable(4, False)
# Line-buffered, like a notebook: `print("hi")` arrives as one "hi\n" chunk,
# and output still streams line by line during long cells.
sys.stdout.reconfigure(line_buffering=True)
sys.stderr.reconfigure(line_buffering=True)


def emit(obj):
    _events.write(json.dumps(obj, default=str) + "\n")
    _events.flush()


MIME = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "application/vnd.e2b.data+json": "data",
    "e2b/data": "data",
    "e2b/chart": "chart",
}


def emit_result(data, main):
    out = {"type": "result", "is_main_result": bool(main)}
    extra = {}
    for mime, value in (data or {}).items():
        key = MIME.get(mime)
        if key is None:
            extra[mime] = value
            continue
        if key == "text" and isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    if extra:
        out["extra"] = extra
    emit(out)


def emit_error(etype, value, tb):
    emit({
        "type": "error",
        "name": getattr(etype, "__name__", str(etype)),
        "value": str(value),
        "traceback": "".join(traceback.format_exception(etype, value, tb)),
    })


count = 0
shell = None
try:
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell

    class _Hook(DisplayHook):
        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            emit_result(format_dict, True)

        def finish_displayhook(self):
            sys.stdout.flush()

    class _Pub(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            emit_result(data, False)

        def clear_output(self, wait=False):
            pass

    from traitlets.config import Config as _Config

    _cfg = _Config()
    # History in memory: IPython otherwise commits every cell to a SQLite
    # file with several fsyncs, which costs milliseconds per cell.
    _cfg.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=_cfg, displayhook_class=_Hook, display_pub_class=_Pub, colors="NoColor")

    def _showtraceback(exc_tuple=None, filename=None, tb_offset=None, exception_only=False, running_compiled_code=False):
        etype, value, tb = exc_tuple if exc_tuple else sys.exc_info()
        emit_error(etype, value, tb)

    shell.showtraceback = _showtraceback
    shell.showsyntaxerror = lambda filename=None, running_compiled_code=False: _showtraceback()
    try:
        import matplotlib  # noqa: F401

        shell.enable_matplotlib("inline")
    except Exception:
        pass
except Exception:
    shell = None

_globals = {"__name__": "__main__", "__builtins__": __builtins__}


def run_plain(code):
    """Without IPython: run the cell, then evaluate a final expression."""
    try:
        tree = ast.parse(code, "<cell>", "exec")
    except SyntaxError:
        emit_error(*sys.exc_info())
        return
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    try:
        exec(compile(tree, "<cell>", "exec"), _globals)
        if last is not None:
            value = eval(compile(last, "<cell>", "eval"), _globals)
            if value is not None:
                emit_result({"text/plain": repr(value)}, True)
    except BaseException:
        etype, value, tb = sys.exc_info()
        emit_error(etype, value, tb.tb_next if tb is not None else tb)


def run(code):
    global count
    if shell is not None:
        shell.run_cell(code, store_history=True)
        count = shell.execution_count - 1
    else:
        count += 1
        run_plain(code)


emit({"type": "ready", "ipython": shell is not None})
for line in _requests:
    try:
        req = json.loads(line)
    except ValueError:
        continue
    env = req.get("env") or {}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        run(req.get("code", ""))
    except KeyboardInterrupt:
        emit_error(*sys.exc_info())
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        emit({"type": "done", "execution_count": count})
