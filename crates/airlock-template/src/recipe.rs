//! The template recipe: a Dockerfile-like text (`FROM RUN ENV WORKDIR USER
//! COPY ARG`, plus Airlock's `START` and `READY`), parsed into typed
//! instructions with `ARG`/`ENV` substituted, and the recipes Airlock ships.
//! Parsing only: running the steps is the builder's job (it needs
//! sandboxes).

use std::collections::BTreeMap;

/// A recipe error, with the (first) line of the instruction it is in.
#[derive(Debug, thiserror::Error)]
#[error("recipe line {line}: {message}")]
pub struct RecipeError {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instr {
    From(String),
    Run(String),
    Env(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Copy { chown: Option<String>, srcs: Vec<String>, dest: String },
    Arg(String, Option<String>),
    Start(String),
    Ready(String),
}

fn split_words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// Substitutes `$VAR` and `${VAR}` from `vars`; unknown variables stay as written.
fn substitute(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '$' && i + 1 < b.len() {
            let (name, end) = if b[i + 1] == '{' {
                match b[i + 2..].iter().position(|c| *c == '}') {
                    Some(p) => (b[i + 2..i + 2 + p].iter().collect::<String>(), i + 3 + p),
                    None => (String::new(), i + 1),
                }
            } else {
                let n: String = b[i + 1..].iter().take_while(|c| c.is_ascii_alphanumeric() || **c == '_').collect();
                let l = n.len();
                (n, i + 1 + l)
            };
            if let Some(v) = vars.get(&name) {
                out.push_str(v);
                i = end;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Parses a recipe. `ARG` values come from `build_args`, else their default;
/// `ARG` and `ENV` values are substituted into later instructions except
/// `RUN`, whose shell expands them itself.
pub fn parse(text: &str, build_args: &BTreeMap<String, String>) -> Result<Vec<Instr>, RecipeError> {
    let mut out = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut logical = String::new();
    let mut start_line = 0;
    let lines: Vec<&str> = text.lines().collect();
    for (n, raw) in lines.iter().enumerate() {
        let trimmed = raw.trim();
        if logical.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if logical.is_empty() {
            start_line = n + 1;
        }
        if let Some(cont) = trimmed.strip_suffix('\\') {
            logical.push_str(cont);
            logical.push(' ');
            if n + 1 < lines.len() {
                continue;
            }
        } else {
            logical.push_str(trimmed);
        }
        let line = std::mem::take(&mut logical);
        let (kw, rest) = line.split_once(char::is_whitespace).unwrap_or((line.as_str(), ""));
        let rest = rest.trim();
        let err = |m: &str| RecipeError { line: start_line, message: m.to_string() };
        if rest.is_empty() {
            return Err(err(&format!("{kw} needs an argument")));
        }
        let instr = match kw.to_ascii_uppercase().as_str() {
            "FROM" => Instr::From(substitute(rest, &vars)),
            "RUN" => Instr::Run(exec_form(rest).map_err(|m| err(&m))?),
            "START" | "CMD" | "ENTRYPOINT" => Instr::Start(exec_form(rest).map_err(|m| err(&m))?),
            "READY" => Instr::Ready(exec_form(rest).map_err(|m| err(&m))?),
            "ENV" => {
                let rest = substitute(rest, &vars);
                let mut pairs = Vec::new();
                if rest.contains('=') {
                    for w in shell_words(&rest).map_err(|m| err(&m))? {
                        let (k, v) = w.split_once('=').ok_or_else(|| err(&format!("ENV expects KEY=VALUE, got {w:?}")))?;
                        pairs.push((k.to_string(), v.to_string()));
                    }
                } else {
                    let (k, v) = rest.split_once(char::is_whitespace).ok_or_else(|| err("ENV expects KEY VALUE or KEY=VALUE"))?;
                    pairs.push((k.to_string(), v.trim().to_string()));
                }
                for (k, v) in &pairs {
                    if k.is_empty() || k.starts_with(|c: char| c.is_ascii_digit()) || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(err(&format!("invalid variable name {k:?}")));
                    }
                    vars.insert(k.clone(), v.clone());
                }
                Instr::Env(pairs)
            }
            "ARG" => {
                let (k, d) = match rest.split_once('=') {
                    Some((k, d)) => (k.trim().to_string(), Some(d.trim().trim_matches('"').to_string())),
                    None => (rest.to_string(), None),
                };
                if let Some(v) = build_args.get(&k).cloned().or_else(|| d.clone()) {
                    vars.insert(k.clone(), v);
                }
                let v = build_args.get(&k).cloned().or(d);
                Instr::Arg(k, v)
            }
            "WORKDIR" => {
                let w = substitute(rest, &vars);
                if !w.starts_with('/') {
                    return Err(err("WORKDIR must be an absolute path"));
                }
                Instr::Workdir(w)
            }
            "USER" => Instr::User(substitute(rest, &vars)),
            "COPY" | "ADD" => {
                let mut words = split_words(&substitute(rest, &vars));
                let mut chown = None;
                words.retain(|w| {
                    if let Some(c) = w.strip_prefix("--chown=") {
                        chown = Some(c.to_string());
                        false
                    } else {
                        true
                    }
                });
                if words.len() < 2 {
                    return Err(err("COPY needs at least one source and a destination"));
                }
                let dest = words.pop().unwrap_or_default();
                Instr::Copy { chown, srcs: words, dest }
            }
            other => return Err(err(&format!("unknown instruction {other}"))),
        };
        out.push(instr);
    }
    // Only `ARG`s may come before the first `FROM` (as in a Dockerfile).
    match out.iter().find(|i| !matches!(i, Instr::Arg(..))) {
        Some(Instr::From(_)) => {}
        _ => return Err(RecipeError { line: 1, message: "a recipe starts with FROM".into() }),
    }
    Ok(out)
}

/// `["a", "b"]` (exec form) becomes a shell-quoted command line.
fn exec_form(rest: &str) -> Result<String, String> {
    if rest.starts_with('[') {
        let v: Vec<String> = serde_json::from_str(rest).map_err(|e| format!("invalid JSON array: {e}"))?;
        Ok(v.iter().map(|a| format!("'{}'", a.replace('\'', "'\\''"))).collect::<Vec<_>>().join(" "))
    } else {
        Ok(rest.to_string())
    }
}

/// Splits `A="x y" B=z` into words, honouring double and single quotes.
fn shell_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"') | (None, '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (None, c) => cur.push(c),
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if any || !cur.is_empty() {
        words.push(cur);
    }
    Ok(words)
}

/// One line describing an instruction, for progress and logs.
pub fn describe(i: &Instr) -> String {
    match i {
        Instr::From(x) => format!("FROM {x}"),
        Instr::Run(x) => format!("RUN {x}"),
        Instr::Env(p) => format!("ENV {}", p.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")),
        Instr::Workdir(x) => format!("WORKDIR {x}"),
        Instr::User(x) => format!("USER {x}"),
        Instr::Copy { srcs, dest, .. } => format!("COPY {} {dest}", srcs.join(" ")),
        Instr::Arg(k, v) => format!("ARG {k}{}", v.as_ref().map(|v| format!("={v}")).unwrap_or_default()),
        Instr::Start(x) => format!("START {x}"),
        Instr::Ready(x) => format!("READY {x}"),
    }
}

/// Recipes shipped with Airlock, built on first use.
/// The shipped recipes' names (`base` is made from the host, not a recipe).
pub const BUILTIN: [&str; 4] = ["code-interpreter-v1", "python", "node", "debian"];

pub fn builtin(name: &str) -> Option<&'static str> {
    match name {
        "code-interpreter-v1" => Some(include_str!("../../../templates/code-interpreter-v1.Airlockfile")),
        "python" => Some(include_str!("../../../templates/python.Airlockfile")),
        "node" => Some(include_str!("../../../templates/node.Airlockfile")),
        "debian" => Some(include_str!("../../../templates/debian.Airlockfile")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_instruction() {
        let args: BTreeMap<String, String> = [("VER".to_string(), "2".to_string())].into();
        let r = parse(
            "# comment\nARG VER=1\nFROM base\nENV A=1 B=\"two words\"\nENV C $A-x\nWORKDIR /app/$VER\nUSER user\nRUN echo hi \\\n  && echo there\nRUN [\"echo\", \"it's\"]\nCOPY --chown=user:user src/ /app/\nSTART python3 -m http.server\nREADY curl -sf localhost:8000\n",
            &args,
        )
        .expect("parse");
        assert_eq!(r[1], Instr::From("base".into()));
        assert_eq!(r[2], Instr::Env(vec![("A".into(), "1".into()), ("B".into(), "two words".into())]));
        assert_eq!(r[3], Instr::Env(vec![("C".into(), "1-x".into())]));
        assert_eq!(r[4], Instr::Workdir("/app/2".into()));
        assert_eq!(r[6], Instr::Run("echo hi  && echo there".into()));
        assert_eq!(r[7], Instr::Run("'echo' 'it'\\''s'".into()));
        assert_eq!(r[8], Instr::Copy { chown: Some("user:user".into()), srcs: vec!["src/".into()], dest: "/app/".into() });
        assert!(matches!(r[9], Instr::Start(_)));
        assert!(matches!(r[10], Instr::Ready(_)));
    }

    /// Found by the `recipe` fuzz target: a leading `ARG` let any
    /// instruction come before `FROM` (a `RUN` with no root to run in).
    #[test]
    fn only_arg_may_come_before_from() {
        let none = BTreeMap::new();
        assert!(parse("ARG A=1\nRUN true\nFROM base\n", &none).is_err());
        assert!(parse("ARG A=1\nENV B=2\nFROM base\n", &none).is_err());
        assert!(parse("ARG A\n", &none).is_err());
        let ok = parse("ARG A=1\nARG B=2\nFROM base\nRUN true\n", &none).expect("ARGs then FROM");
        assert!(matches!(ok[2], Instr::From(_)));
    }

    #[test]
    fn bad_recipes_say_where() {
        match parse("FROM base\nFROB x\n", &BTreeMap::new()) {
            Err(RecipeError { line, message }) => assert_eq!((line, message.contains("FROB")), (2, true)),
            other => panic!("{other:?}"),
        }
        assert!(parse("RUN true\n", &BTreeMap::new()).is_err(), "FROM first");
        assert!(parse("FROM base\nWORKDIR relative\n", &BTreeMap::new()).is_err());
        assert!(parse("FROM base\nENV 1BAD=x\n", &BTreeMap::new()).is_err());
    }
}
