//! SandboxSDK template specs (`POST /templates` with `spec`), written as
//! Airlock recipes for the template builder and its layer cache, so an
//! unchanged spec builds again from cache.
//!
//! The base is the language's built-in template (`python`, `node`, or
//! `base` for bash), or `dockerImage` when given (what the builder can
//! start from: `debian:`/`ubuntu:` bases, local OCI archives, other
//! templates; registry images are refused with a message saying so). A
//! `version` is checked in the first step, so a spec asking for a runtime
//! the base does not have fails with the version it found. Everything that
//! reaches a shell line is checked to be a name, a version or one line.

use airlock_proto::api::TemplateSpec;

use crate::service::ApiError;

enum Lang {
    Python,
    Node,
    Bash,
}

fn lang(l: &str) -> Result<Lang, ApiError> {
    match l.trim().to_ascii_lowercase().as_str() {
        "python" | "python3" | "py" => Ok(Lang::Python),
        "javascript" | "js" | "typescript" | "ts" | "node" | "nodejs" => Ok(Lang::Node),
        "bash" | "shell" | "sh" => Ok(Lang::Bash),
        other => Err(ApiError::BadRequest(format!("language {other:?} is not one templates are made for (python, javascript, typescript, bash)"))),
    }
}

/// A package name as pip or npm takes it, and nothing a shell would read.
fn check_package(p: &str) -> Result<(), ApiError> {
    let ok = !p.is_empty() && p.len() <= 214 && !p.starts_with('-') && p.chars().all(|c| c.is_ascii_alphanumeric() || "._-[]=<>~!,@/:+^".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!("dependency {:?} is not a package name (letters, digits and ._-[]=<>~!,@/:+^)", p.chars().take(60).collect::<String>())))
    }
}

/// The recipe for a spec.
pub(crate) fn recipe(spec: &TemplateSpec) -> Result<String, ApiError> {
    let l = lang(&spec.language)?;
    let mut r = String::from("# Made from a SandboxSDK template spec.\n");
    let base = match (&spec.docker_image, &l) {
        (Some(img), _) if !img.trim().is_empty() => {
            let img = img.trim();
            if img.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ApiError::BadRequest(format!("dockerImage {img:?} has spaces or control characters")));
            }
            img.to_string()
        }
        (_, Lang::Python) => "python".into(),
        (_, Lang::Node) => "node".into(),
        (_, Lang::Bash) => "base".into(),
    };
    r.push_str(&format!("FROM {base}\nUSER root\n"));
    if let Some(v) = spec.version.as_deref().map(str::trim).filter(|v| !v.is_empty() && *v != "latest") {
        if !v.split('.').all(|p| !p.is_empty() && p.len() <= 4 && p.chars().all(|c| c.is_ascii_digit())) || v.split('.').count() > 3 {
            return Err(ApiError::BadRequest(format!("version {v:?} must be numbers like 3.11 or 20")));
        }
        let (probe, name) = match l {
            Lang::Python => ("python3 -c 'import platform; print(platform.python_version())'", "Python"),
            Lang::Node => ("node -p process.versions.node", "Node.js"),
            Lang::Bash => ("bash -c 'echo ${BASH_VERSINFO[0]}.${BASH_VERSINFO[1]}.${BASH_VERSINFO[2]}'", "bash"),
        };
        // `v` is digits and dots only, so it can sit in the script as is.
        r.push_str(&format!("RUN have=$({probe}); case \"$have\" in {v}|{v}.*) echo \"{name} $have\" ;; *) echo \"this base has {name} $have, not {v}\" >&2; exit 1 ;; esac\n"));
    }
    if !spec.dependencies.is_empty() {
        for d in &spec.dependencies {
            check_package(d)?;
        }
        let list = spec.dependencies.join(" ");
        match l {
            Lang::Python => r.push_str(&format!("RUN python3 -m pip install --no-cache-dir {list}\n")),
            Lang::Node => r.push_str(&format!("RUN npm install -g {list}\n")),
            Lang::Bash => r.push_str(&format!("RUN apt-get update && apt-get install -y --no-install-recommends {list}\n")),
        }
    }
    if let Some(cmd) = spec.install_command.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        if cmd.contains('\n') || cmd.contains('\0') {
            return Err(ApiError::BadRequest("installCommand is one line (join commands with &&)".into()));
        }
        r.push_str(&format!("RUN {cmd}\n"));
    }
    for (k, v) in &spec.default_env_vars {
        if k.is_empty() || k.starts_with(|c: char| c.is_ascii_digit()) || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ApiError::BadRequest(format!("defaultEnvVars: invalid variable name {k:?}")));
        }
        if v.contains(['\'', '\n', '\0']) {
            return Err(ApiError::BadRequest(format!("defaultEnvVars: the value of {k} cannot hold a single quote or a line break")));
        }
        r.push_str(&format!("ENV {k}='{v}'\n"));
    }
    r.push_str("USER user\nWORKDIR /home/user\n");
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(language: &str) -> TemplateSpec {
        TemplateSpec { name: "t".into(), language: language.into(), ..Default::default() }
    }

    #[test]
    fn specs_become_recipes_on_the_language_base() {
        let mut s = spec("python");
        s.version = Some("3.11".into());
        s.dependencies = vec!["requests==2.32.3".into(), "numpy".into()];
        s.install_command = Some("mkdir -p /opt/x".into());
        s.default_env_vars = BTreeMap::from([("MODE".into(), "test run".into())]);
        let r = recipe(&s).expect("recipe");
        assert!(r.contains("FROM python\n"), "{r}");
        assert!(r.contains("3.11|3.11.*"), "{r}");
        assert!(r.contains("RUN python3 -m pip install --no-cache-dir requests==2.32.3 numpy\n"), "{r}");
        assert!(r.contains("RUN mkdir -p /opt/x\n"), "{r}");
        assert!(r.contains("ENV MODE='test run'\n"), "{r}");
        assert!(r.ends_with("USER user\nWORKDIR /home/user\n"), "{r}");
        assert!(recipe(&spec("typescript")).expect("ts").contains("FROM node\n"));
        let mut d = spec("bash");
        d.docker_image = Some("debian:bookworm".into());
        assert!(recipe(&d).expect("image").contains("FROM debian:bookworm\n"));
    }

    #[test]
    fn specs_that_would_inject_are_refused() {
        let refused = |s: TemplateSpec| recipe(&s).expect_err("refused").to_string();
        let mut s = spec("python");
        s.dependencies = vec!["x; rm -rf /".into()];
        assert!(refused(s).contains("not a package name"));
        let mut s = spec("python");
        s.version = Some("3; id".into());
        assert!(refused(s).contains("must be numbers"));
        let mut s = spec("python");
        s.default_env_vars = BTreeMap::from([("A".into(), "it's".into())]);
        assert!(refused(s).contains("single quote"));
        let mut s = spec("python");
        s.install_command = Some("a\nFROM evil".into());
        assert!(refused(s).contains("one line"));
        assert!(refused(spec("cobol")).contains("not one templates are made for"));
        let mut s = spec("python");
        s.docker_image = Some("a b".into());
        assert!(refused(s).contains("spaces"));
    }
}
