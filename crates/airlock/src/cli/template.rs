//! `airlock template`: build templates from recipes on a server (with
//! streamed logs and a step display), list, show, alias and delete them.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use airlock_sdk::{BuildEvent, BuildTemplate};
use anyhow::{bail, Context};
use base64::Engine;

pub(super) const EXAMPLES: &str = "Examples:
  airlock template build -t my-python .                  # ./Airlockfile (or ./Dockerfile), context .
  airlock template build -f recipe.txt -t tools --build-arg VERSION=2 ./ctx
  airlock template list
  airlock template show code-interpreter-v1
  airlock template alias my-python py
  airlock template delete my-python --force             # even while sandboxes use it

A recipe is a Dockerfile subset: FROM (base, a template, debian:<suite>,
ubuntu:<suite>, an OCI archive path or a rootfs directory), RUN, ENV,
WORKDIR, USER, COPY, ARG, plus START (a command started in every sandbox)
and READY (polled until it succeeds before a sandbox is handed out).";

#[derive(clap::Args, Debug)]
pub(super) struct TemplateArgs {
    #[command(flatten)]
    client: super::client::ClientArgs,
    #[command(subcommand)]
    cmd: TemplateCmd,
}

#[derive(clap::Subcommand, Debug)]
enum TemplateCmd {
    /// Build (or rebuild from cache) a template from a recipe, or from a
    /// SandboxSDK template spec (JSON: name, language, version,
    /// dockerImage, dependencies, installCommand, defaultEnvVars).
    #[command(
        after_help = "Examples:\n  airlock template build -t web .\n  airlock template build --spec spec.json   # {\"name\": \"ds\", \"language\": \"python\", \"dependencies\": [\"pandas\"]}"
    )]
    Build {
        /// The recipe [default: CONTEXT/Airlockfile, else CONTEXT/Dockerfile].
        #[arg(short = 'f', long = "file", conflicts_with = "spec")]
        file: Option<PathBuf>,
        /// A SandboxSDK template spec (JSON) instead of a recipe.
        #[arg(long)]
        spec: Option<PathBuf>,
        /// The template's name [default with --spec: the spec's].
        #[arg(short = 't', long = "tag", required_unless_present = "spec")]
        name: Option<String>,
        /// ARG values, KEY=VALUE (repeatable).
        #[arg(long = "build-arg")]
        build_args: Vec<String>,
        /// Directory COPY reads from.
        #[arg(default_value = ".")]
        context: PathBuf,
    },
    /// List templates.
    List,
    /// Show one template.
    Show { name: String },
    /// Give a template another name.
    Alias { name: String, alias: String },
    /// Delete a template (refused while sandboxes use it, unless --force).
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

fn find_recipe(file: Option<PathBuf>, context: &Path) -> anyhow::Result<PathBuf> {
    if let Some(f) = file {
        return Ok(f);
    }
    for n in ["Airlockfile", "Dockerfile"] {
        let p = context.join(n);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("no recipe: pass -f FILE or put an Airlockfile in {}", context.display())
}

/// The context directory as a base64 tar.gz, only when the recipe copies from it.
fn pack_context(recipe: &str, context: &Path) -> anyhow::Result<Option<String>> {
    let copies = recipe.lines().any(|l| {
        let w = l.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        w == "COPY" || w == "ADD"
    });
    if !copies {
        return Ok(None);
    }
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut t = tar::Builder::new(gz);
    t.follow_symlinks(false);
    t.append_dir_all(".", context).with_context(|| format!("packing the build context {}", context.display()))?;
    let bytes = t.into_inner()?.finish()?;
    Ok(Some(base64::engine::general_purpose::STANDARD.encode(bytes)))
}

pub(super) fn run(a: TemplateArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let templates = a.client.client()?.templates();
        match a.cmd {
            TemplateCmd::Build { spec: Some(spec), name, .. } => {
                let text = std::fs::read_to_string(&spec).with_context(|| format!("reading {}", spec.display()))?;
                let spec: airlock_sdk::TemplateSpec = serde_json::from_str(&text).with_context(|| format!("{}: not a template spec", spec.display()))?;
                let name = name.unwrap_or_else(|| spec.name.clone());
                let stream = templates.build(&BuildTemplate { name, spec: Some(spec), ..Default::default() }).await?;
                follow_build(stream, a.client.json).await
            }
            TemplateCmd::Build { file, name, build_args, context, spec: None } => {
                let name = name.context("a template name: -t NAME")?;
                let path = find_recipe(file, &context)?;
                let recipe = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                let mut args = BTreeMap::new();
                for kv in build_args {
                    let (k, v) = kv.split_once('=').with_context(|| format!("--build-arg wants KEY=VALUE, got {kv:?}"))?;
                    args.insert(k.to_string(), v.to_string());
                }
                let context = pack_context(&recipe, &context)?;
                let stream = templates.build(&BuildTemplate { name, recipe, build_args: args, context, spec: None }).await?;
                follow_build(stream, a.client.json).await
            }
            TemplateCmd::List => {
                let list = templates.list().await?;
                if a.client.json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    println!("{:<24} {:>10} {:>7}  {:<25} ALIASES", "NAME", "SIZE", "LAYERS", "CREATED");
                    for t in &list {
                        println!("{:<24} {:>10} {:>7}  {:<25} {}", t.name, human(t.size_bytes), t.layers, t.created_at.chars().take(19).collect::<String>(), t.aliases.join(","));
                    }
                }
                Ok(0)
            }
            TemplateCmd::Show { name } => {
                println!("{}", serde_json::to_string_pretty(&templates.get(&name).await?)?);
                Ok(0)
            }
            TemplateCmd::Alias { name, alias } => {
                templates.alias(&name, &alias).await?;
                eprintln!("{name} is also {alias}");
                Ok(0)
            }
            TemplateCmd::Delete { name, force } => {
                templates.delete(&name, force).await?;
                eprintln!("deleted {name}");
                Ok(0)
            }
        }
    })
}

fn human(b: u64) -> String {
    let mut v = b as f64;
    for unit in ["B", "KiB", "MiB", "GiB"] {
        if v < 1024.0 || unit == "GiB" {
            return if unit == "B" { format!("{b} B") } else { format!("{v:.1} {unit}") };
        }
        v /= 1024.0;
    }
    format!("{b} B")
}

/// Shows the build as it happens: one line per step (with "cached"), the
/// steps' output dimmed, and the result.
async fn follow_build(mut events: airlock_sdk::BuildStream, json: bool) -> anyhow::Result<u8> {
    use futures_util::StreamExt;
    let tty = std::io::stderr().is_terminal();
    let mut code = 1;
    let started = std::time::Instant::now();
    while let Some(ev) = events.next().await {
        let ev = ev?;
        if json {
            println!("{}", serde_json::to_string(&ev)?);
        }
        let mut err = std::io::stderr().lock();
        match ev {
            BuildEvent::Step { step, total, text, cached } if !json => {
                let _ = writeln!(err, "[{step}/{total}] {text}{}", if cached { "  (cached)" } else { "" });
            }
            BuildEvent::Log { text, .. } if !json => {
                if tty {
                    let _ = write!(err, "\x1b[2m{text}\x1b[0m");
                } else {
                    let _ = write!(err, "{text}");
                }
            }
            BuildEvent::Done { name, size_bytes, .. } => {
                code = 0;
                if !json {
                    let _ = writeln!(err, "built {name} ({}, {:.1} s)", human(size_bytes), started.elapsed().as_secs_f64());
                }
            }
            BuildEvent::Error { message } => {
                code = 1;
                if !json {
                    let _ = writeln!(err, "error: {message}");
                }
            }
            _ => {}
        }
    }
    Ok(code)
}
