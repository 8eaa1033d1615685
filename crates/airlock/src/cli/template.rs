//! `airlock template`: build templates from recipes on a server (with
//! streamed logs and a step display), list, show, alias and delete them.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

pub const EXAMPLES: &str = "Examples:
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
pub struct TemplateArgs {
    /// Server URL [default: $AIRLOCK_URL, then $E2B_API_URL, then http://127.0.0.1:3000].
    #[arg(long, global = true)]
    url: Option<String>,
    /// API key [default: $AIRLOCK_API_KEY, then $E2B_API_KEY].
    #[arg(long = "api-key", global = true)]
    api_key: Option<String>,
    /// Print JSON instead of tables and text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: TemplateCmd,
}

#[derive(clap::Subcommand, Debug)]
enum TemplateCmd {
    /// Build (or rebuild from cache) a template from a recipe.
    Build {
        /// The recipe [default: CONTEXT/Airlockfile, else CONTEXT/Dockerfile].
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// The template's name.
        #[arg(short = 't', long = "tag")]
        name: String,
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

struct Api {
    host: String,
    port: u16,
    key: String,
}

impl Api {
    fn new(a: &TemplateArgs) -> anyhow::Result<Self> {
        let cfg = airlock_sdk::Config::from_env();
        let url = a.url.clone().unwrap_or(cfg.api_url);
        let key = a.api_key.clone().or(cfg.api_key).context("no API key: set AIRLOCK_API_KEY or E2B_API_KEY, or pass --api-key")?;
        let rest = url.strip_prefix("http://").with_context(|| format!("only http:// servers are supported, got {url}"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().with_context(|| format!("bad port in {url}"))?),
            None => (authority.to_string(), 80),
        };
        Ok(Self { host, port, key })
    }

    async fn send(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.with_context(|| format!("connecting to {}:{}", self.host, self.port))?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("{}:{}", self.host, self.port))
            .header(airlock_proto::wire::API_KEY_HEADER, &self.key)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        Ok(tx.send_request(req).await?)
    }

    async fn json(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<serde_json::Value> {
        let r = self.send(method, path, body.map(|b| serde_json::to_vec(&b)).transpose()?).await?;
        let status = r.status();
        let bytes = r.into_body().collect().await?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            bail!("{}", v["message"].as_str().map(str::to_string).unwrap_or_else(|| format!("server answered {status}")));
        }
        Ok(v)
    }
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

pub fn run(a: TemplateArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let api = Api::new(&a)?;
        match a.cmd {
            TemplateCmd::Build { file, name, build_args, context } => {
                let path = find_recipe(file, &context)?;
                let recipe = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                let mut args = BTreeMap::new();
                for kv in build_args {
                    let (k, v) = kv.split_once('=').with_context(|| format!("--build-arg wants KEY=VALUE, got {kv:?}"))?;
                    args.insert(k.to_string(), v.to_string());
                }
                let body = serde_json::json!({"name": name, "recipe": recipe, "buildArgs": args, "context": pack_context(&recipe, &context)?});
                let r = api.send("POST", "/templates", Some(serde_json::to_vec(&body)?)).await?;
                if !r.status().is_success() {
                    let b = r.into_body().collect().await?.to_bytes();
                    let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
                    bail!("{}", v["message"].as_str().unwrap_or("build refused"));
                }
                follow_build(r.into_body(), a.json).await
            }
            TemplateCmd::List => {
                let v = api.json("GET", "/templates", None).await?;
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    println!("{:<24} {:>10} {:>7}  {:<25} ALIASES", "NAME", "SIZE", "LAYERS", "CREATED");
                    for t in v.as_array().into_iter().flatten() {
                        println!(
                            "{:<24} {:>10} {:>7}  {:<25} {}",
                            t["name"].as_str().unwrap_or(""),
                            human(t["sizeBytes"].as_u64().unwrap_or(0)),
                            t["layers"].as_u64().unwrap_or(0),
                            t["createdAt"].as_str().unwrap_or("").chars().take(19).collect::<String>(),
                            t["aliases"].as_array().map(|a| a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(",")).unwrap_or_default()
                        );
                    }
                }
                Ok(0)
            }
            TemplateCmd::Show { name } => {
                let v = api.json("GET", &format!("/templates/{name}"), None).await?;
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(0)
            }
            TemplateCmd::Alias { name, alias } => {
                api.json("POST", &format!("/templates/{name}/aliases"), Some(serde_json::json!({"alias": alias}))).await?;
                eprintln!("{name} is also {alias}");
                Ok(0)
            }
            TemplateCmd::Delete { name, force } => {
                api.json("DELETE", &format!("/templates/{name}{}", if force { "?force=true" } else { "" }), None).await?;
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

/// Shows the build as it happens: one line per step (with "cached" or a
/// live elapsed time), the steps' output dimmed, and the result.
async fn follow_build(mut body: hyper::body::Incoming, json: bool) -> anyhow::Result<u8> {
    let tty = std::io::stderr().is_terminal();
    let mut buf = Vec::new();
    let mut code = 1;
    let started = std::time::Instant::now();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        buf.extend_from_slice(&data);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(ev) = serde_json::from_slice::<serde_json::Value>(&line) else { continue };
            if json {
                println!("{}", serde_json::to_string(&ev)?);
            }
            let mut err = std::io::stderr().lock();
            match ev["type"].as_str() {
                Some("step") if !json => {
                    let cached = ev["cached"].as_bool().unwrap_or(false);
                    let _ = writeln!(err, "[{}/{}] {}{}", ev["step"], ev["total"], ev["text"].as_str().unwrap_or(""), if cached { "  (cached)" } else { "" });
                }
                Some("log") if !json => {
                    let t = ev["text"].as_str().unwrap_or("");
                    if tty {
                        let _ = write!(err, "\x1b[2m{t}\x1b[0m");
                    } else {
                        let _ = write!(err, "{t}");
                    }
                }
                Some("done") => {
                    code = 0;
                    if !json {
                        let _ = writeln!(err, "built {} ({}, {:.1} s)", ev["name"].as_str().unwrap_or(""), human(ev["size_bytes"].as_u64().unwrap_or(0)), started.elapsed().as_secs_f64());
                    }
                }
                Some("error") => {
                    code = 1;
                    if !json {
                        let _ = writeln!(err, "error: {}", ev["message"].as_str().unwrap_or("build failed"));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(code)
}
