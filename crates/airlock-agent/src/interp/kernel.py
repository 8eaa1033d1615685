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



# ---------------------------------------------------------------- charts
# A matplotlib figure is displayed with its PNG and, as E2B's code
# interpreter does, its data as an "e2b/chart" (`result.chart` in the SDK):
# line, scatter, bar, pie and box-and-whisker axes, and a "superchart" of
# several. Extraction never fails a cell: a figure it cannot read is
# "unknown" with its title.

def _scale(axis):
    try:
        s = axis.get_scale()
    except Exception:
        return "unknown"
    if s == "linear":
        conv = axis.get_converter() if hasattr(axis, "get_converter") else getattr(axis, "converter", None)
        name = type(conv).__module__ + "." + type(conv).__name__ if conv is not None else ""
        if "dates" in name:
            return "datetime"
        if "category" in name or "StrCategory" in name:
            return "categorical"
    return s if s in ("linear", "log", "symlog", "logit", "function", "functionlog", "asinh") else "unknown"


def _num(v):
    try:
        import numpy as np
        if isinstance(v, np.generic):
            v = v.item()
    except Exception:
        pass
    if isinstance(v, float) and v != v:
        return None
    return v


def _x_value(ax, v):
    try:
        if _scale(ax.xaxis) == "datetime":
            import matplotlib.dates as mdates
            return mdates.num2date(v).isoformat()
    except Exception:
        pass
    return _num(v)


def _ticks(axis):
    try:
        ticks = [_num(t) for t in axis.get_ticklocs()]
        labels = [t.get_text() for t in axis.get_ticklabels()]
        return ticks, labels
    except Exception:
        return [], []


def _base(ax, kind):
    xt, xl = _ticks(ax.xaxis)
    yt, yl = _ticks(ax.yaxis)
    return {
        "type": kind,
        "title": ax.get_title() or None,
        "x_label": ax.get_xlabel() or None,
        "y_label": ax.get_ylabel() or None,
        "x_unit": None,
        "y_unit": None,
        "x_ticks": xt, "x_tick_labels": xl, "x_scale": _scale(ax.xaxis),
        "y_ticks": yt, "y_tick_labels": yl, "y_scale": _scale(ax.yaxis),
    }


def _chart_of_axes(ax):
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.patches import Wedge
    boxes = getattr(ax, "_airlock_boxplots", None)
    if boxes:
        c = _base(ax, "box_and_whisker")
        c["elements"] = boxes
        return c
    wedges = [p for p in ax.patches if isinstance(p, Wedge)]
    if wedges:
        texts = [t.get_text() for t in ax.texts]
        els = []
        for i, w in enumerate(wedges):
            label = w.get_label()
            if (not label or label.startswith("_")) and i < len(texts):
                label = texts[i]
            els.append({"label": label, "angle": abs(w.theta2 - w.theta1), "radius": w.r})
        return {"type": "pie", "title": ax.get_title() or None, "elements": els}
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    if bars:
        c = _base(ax, "bar")
        _, labels = _ticks(ax.xaxis)
        els = []
        for cont in bars:
            group = cont.get_label()
            group = "" if not group or group.startswith("_") else group
            for i, r in enumerate(cont.patches):
                label = labels[i] if i < len(labels) and labels[i] else str(_num(r.get_x() + r.get_width() / 2))
                els.append({"label": label, "group": group, "value": _num(r.get_height())})
        c["elements"] = els
        return c
    scatters = [col for col in ax.collections if isinstance(col, PathCollection)]
    if scatters:
        c = _base(ax, "scatter")
        els = []
        for i, col in enumerate(scatters):
            label = col.get_label()
            label = f"series {i + 1}" if not label or label.startswith("_") else label
            els.append({"label": label, "points": [(_x_value(ax, x), _num(y)) for x, y in col.get_offsets().tolist()]})
        c["elements"] = els
        return c
    lines = list(ax.get_lines())
    if lines:
        c = _base(ax, "line")
        els = []
        for i, ln in enumerate(lines):
            label = ln.get_label()
            label = f"line {i + 1}" if not label or label.startswith("_") else label
            xs, ys = list(ln.get_xdata()), list(ln.get_ydata())
            els.append({"label": label, "points": [(_x_value(ax, x), _num(y)) for x, y in zip(xs, ys)]})
        c["elements"] = els
        return c
    return None


def _figure_chart(fig):
    try:
        charts = [c for c in (_chart_of_axes(ax) for ax in fig.axes) if c is not None]
        title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else None
        if not charts:
            return {"type": "unknown", "title": title, "elements": []}
        if len(charts) == 1:
            if title and not charts[0].get("title"):
                charts[0]["title"] = title
            return charts[0]
        return {"type": "superchart", "title": title, "elements": charts}
    except Exception:
        return {"type": "unknown", "title": None, "elements": []}


def _install_charts(shell):
    import matplotlib.axes
    import matplotlib.cbook as cbook
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName, Unicode

    class _ChartFormatter(BaseFormatter):
        format_type = Unicode("e2b/chart")
        print_method = ObjectName("_repr_e2b_chart_")
        _return_type = (dict,)

    f = _ChartFormatter(parent=shell.display_formatter)
    shell.display_formatter.formatters["e2b/chart"] = f
    f.for_type_by_name("matplotlib.figure", "Figure", _figure_chart)
    # Only the active types are computed for a display.
    if "e2b/chart" not in shell.display_formatter.active_types:
        shell.display_formatter.active_types.append("e2b/chart")

    # Box plots: the statistics, as matplotlib computes them, kept on the
    # axes (what is drawn is only lines).
    original = matplotlib.axes.Axes.boxplot

    def boxplot(self, x, *args, **kwargs):
        result = original(self, x, *args, **kwargs)
        try:
            labels = kwargs.get("labels") or kwargs.get("tick_labels")
            # pyplot passes every parameter, unset ones as None.
            stats = cbook.boxplot_stats(x, whis=kwargs.get("whis") or 1.5, labels=labels)
            _, ticklabels = _ticks(self.xaxis)
            boxes = getattr(self, "_airlock_boxplots", [])
            for i, s in enumerate(stats):
                label = s.get("label") or (ticklabels[i] if i < len(ticklabels) else str(i + 1))
                boxes.append({
                    "label": str(label), "min": _num(s["whislo"]), "first_quartile": _num(s["q1"]), "median": _num(s["med"]),
                    "third_quartile": _num(s["q3"]), "max": _num(s["whishi"]), "outliers": [_num(v) for v in s["fliers"]],
                })
            self._airlock_boxplots = boxes
        except Exception:
            pass
        return result

    matplotlib.axes.Axes.boxplot = boxplot


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
        # The plain shell has no GUI loop; MPLBACKEND (set by the agent)
        # selects the inline backend all the same.
        pass
    try:
        _install_charts(shell)
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
