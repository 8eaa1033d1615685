// Airlock Java kernel driver: one JShell, run in this JVM (state persists
// across cells). Each request line on fd 4 is a cell file, then
// tab-separated NAME=HEX environment variables for that cell only. The cell
// is split into snippets as JShell's own REPL does; the value of a final
// expression is the cell's result. JSON lines on fd 3 report results,
// errors and completion; System.out/err go to fd 1/2. SIGINT stops the
// running snippet (JShell.stop), keeping the state.
import java.io.*;
import java.lang.reflect.Field;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.util.*;
import jdk.jshell.*;

public class AirlockJavaKernel {
    static PrintStream ev;

    static String j(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : String.valueOf(s).toCharArray()) {
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
                    else b.append(c);
            }
        }
        return b.append('"').toString();
    }

    static void emit(String s) {
        ev.print(s + "\n");
        ev.flush();
    }

    static void error(String name, String value, String tb) {
        emit("{\"type\":\"error\",\"name\":" + j(name) + ",\"value\":" + j(value) + ",\"traceback\":" + j(tb) + "}");
    }

    /** System.getenv()'s backing map (needs --add-opens java.base/java.util). */
    @SuppressWarnings("unchecked")
    static Map<String, String> envMap() throws ReflectiveOperationException {
        Map<String, String> env = System.getenv();
        Field f = env.getClass().getDeclaredField("m");
        f.setAccessible(true);
        return (Map<String, String>) f.get(env);
    }

    static String unhex(String h) {
        byte[] b = new byte[h.length() / 2];
        for (int i = 0; i < b.length; i++) b[i] = (byte) Integer.parseInt(h.substring(2 * i, 2 * i + 2), 16);
        return new String(b, StandardCharsets.UTF_8);
    }

    public static void main(String[] args) throws Exception {
        ev = new PrintStream(new FileOutputStream("/dev/fd/3"), true, "UTF-8");
        BufferedReader rq = new BufferedReader(new InputStreamReader(new FileInputStream("/dev/fd/4"), StandardCharsets.UTF_8));
        JShell js = JShell.builder().executionEngine("local").out(System.out).err(System.err).build();
        sun.misc.Signal.handle(new sun.misc.Signal("INT"), s -> js.stop());
        SourceCodeAnalysis sca = js.sourceCodeAnalysis();
        // Warm the compiler so the first cell is not the slow one.
        js.eval("int $airlockWarm = 0;");
        int count = 0;
        emit("{\"type\":\"ready\"}");
        String line;
        while ((line = rq.readLine()) != null) {
            String[] p = line.split("\t");
            count++;
            Map<String, String> old = new HashMap<>();
            Map<String, String> env = null;
            try {
                env = envMap();
                for (int i = 1; i < p.length; i++) {
                    int eq = p[i].indexOf('=');
                    String k = p[i].substring(0, eq);
                    old.put(k, env.get(k));
                    env.put(k, unhex(p[i].substring(eq + 1)));
                }
                run(js, sca, Files.readString(Path.of(p[0])));
            } catch (Throwable t) {
                error(t.getClass().getSimpleName(), String.valueOf(t.getMessage()), t.toString());
            }
            if (env != null) {
                for (Map.Entry<String, String> e : old.entrySet()) {
                    if (e.getValue() == null) env.remove(e.getKey());
                    else env.put(e.getKey(), e.getValue());
                }
            }
            try {
                Files.deleteIfExists(Path.of(p[0]));
            } catch (IOException e) {
                // a leftover cell file in /tmp is harmless
            }
            System.out.flush();
            System.err.flush();
            emit("{\"type\":\"done\",\"execution_count\":" + count + "}");
        }
        System.exit(0);
    }

    static void run(JShell js, SourceCodeAnalysis sca, String code) {
        String rest = code;
        String value = null;
        while (!rest.isBlank()) {
            SourceCodeAnalysis.CompletionInfo ci = sca.analyzeCompletion(rest);
            String src;
            if (ci.completeness().isComplete()) {
                src = ci.source();
                rest = ci.remaining();
            } else {
                // Incomplete or unknown: JShell says what is wrong with it.
                src = rest;
                rest = "";
            }
            value = null;
            for (SnippetEvent e : js.eval(src)) {
                if (e.causeSnippet() != null) continue;
                if (e.status() == Snippet.Status.REJECTED) {
                    StringBuilder msg = new StringBuilder();
                    js.diagnostics(e.snippet()).forEach(d -> msg.append(d.getMessage(Locale.ROOT)).append('\n'));
                    String m = msg.toString().trim();
                    if (m.isEmpty()) m = "incomplete or invalid code";
                    error("CompilationException", m, src.trim() + "\n" + m);
                    return;
                }
                JShellException x = e.exception();
                if (x != null) {
                    String name = x instanceof EvalException ? ((EvalException) x).getExceptionClassName() : x.getClass().getName();
                    if (x instanceof UnresolvedReferenceException) name = "UnresolvedReferenceException";
                    StringWriter sw = new StringWriter();
                    x.printStackTrace(new PrintWriter(sw));
                    String msg = x.getMessage();
                    error(name, msg == null ? "" : msg, name + (msg == null ? "" : ": " + msg) + "\n" + sw);
                    return;
                }
                Snippet s = e.snippet();
                boolean expr = s.kind() == Snippet.Kind.EXPRESSION
                    || (s.kind() == Snippet.Kind.VAR && s.subKind() == Snippet.SubKind.TEMP_VAR_EXPRESSION_SUBKIND);
                if (expr && e.value() != null) value = e.value();
            }
        }
        if (value != null) emit("{\"type\":\"result\",\"is_main_result\":true,\"text\":" + j(value) + "}");
    }
}
