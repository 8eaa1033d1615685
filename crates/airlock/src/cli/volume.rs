//! `airlock volume`: volumes on a server (create, list, rm) and their
//! files (ls, cp in both directions, streamed). A volume file is written
//! `vol:<id-or-name>:/path`; anything else is a local path.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use futures_util::StreamExt;

pub(super) const EXAMPLES: &str = "Examples:
  airlock volume create data --size-mb 2048
  airlock volume list
  airlock volume ls data /results
  airlock volume cp ./input.csv vol:data:/in/input.csv     # upload (parents created)
  airlock volume cp vol:data:/results/out.json ./out.json  # download (- for stdout)
  airlock volume rm data                                   # refused while a sandbox mounts it
  airlock volume rm data:/results/out.json                 # one file (-r for a directory)
  airlock sandbox create --volume data:/mnt/data           # mount it in a sandbox

A volume outlives sandboxes: mount it in several at once and they share one
filesystem (POSIX semantics, writes visible at once, no locking beyond what
the kernel gives).";

#[derive(clap::Args, Debug)]
pub(super) struct VolumeArgs {
    #[command(flatten)]
    client: super::client::ClientArgs,
    #[command(subcommand)]
    cmd: VolumeCmd,
}

#[derive(clap::Subcommand, Debug)]
enum VolumeCmd {
    /// Create a volume and print its id.
    Create {
        /// Lowercase letters, digits and '-', starting with a letter.
        name: String,
        /// Size limit in MiB [default: the server's, 1024].
        #[arg(long = "size-mb")]
        size_mb: Option<u64>,
    },
    /// List volumes.
    #[command(alias = "ls-volumes")]
    List,
    /// Delete a volume (`NAME`), or a file in one (`NAME:/path`).
    Rm {
        target: String,
        /// With NAME:/path: remove a directory and everything in it.
        #[arg(short = 'r', long)]
        recursive: bool,
    },
    /// List a directory of a volume.
    Ls {
        volume: String,
        #[arg(default_value = "/")]
        path: String,
    },
    /// Copy a file into or out of a volume (`vol:<id-or-name>:/path` names a volume file).
    Cp { src: String, dst: String },
}

/// `vol:<volume>:/path` → (volume, path).
fn remote(s: &str) -> Option<(String, String)> {
    let rest = s.strip_prefix("vol:")?;
    let (v, p) = rest.split_once(':')?;
    Some((v.to_string(), if p.is_empty() { "/".into() } else { p.to_string() }))
}

pub(super) fn run(a: VolumeArgs) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let vols = a.client.client()?.volumes();
        match a.cmd {
            VolumeCmd::Create { name, size_mb } => {
                let v = vols.create(&name, size_mb).await?;
                if a.client.json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    println!("{}", v.volume_id);
                    if !v.limit_enforced {
                        eprintln!("note: this server cannot enforce volume size limits (no loop devices or mkfs.ext4)");
                    }
                }
            }
            VolumeCmd::List => {
                let list = vols.list().await?;
                if a.client.json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    println!("{:<26} {:<24} {:>10} {:>8} {:>7}  CREATED", "ID", "NAME", "USED", "LIMIT", "FILES");
                    for v in list {
                        println!("{:<26} {:<24} {:>10} {:>7}M {:>7}  {}", v.volume_id, v.name, v.total_size_bytes, v.size_mb, v.total_file_count, v.created_at);
                    }
                }
            }
            VolumeCmd::Rm { target, recursive } => match target.split_once(':') {
                Some((v, p)) => vols.delete_file(v.trim_start_matches("vol:"), p, recursive).await?,
                None => vols.delete(&target).await?,
            },
            VolumeCmd::Ls { volume, path } => {
                let files = vols.list_files(&volume, &path).await?;
                if a.client.json {
                    println!("{}", serde_json::to_string_pretty(&files)?);
                } else {
                    for f in files {
                        let size = f.size.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
                        println!("{:<9} {:>12}  {}", f.kind, size, f.path);
                    }
                }
            }
            VolumeCmd::Cp { src, dst } => match (remote(&src), remote(&dst)) {
                (Some(_), Some(_)) => bail!("copy between volumes is not supported: download, then upload"),
                (None, None) => bail!("one side must be a volume file, written vol:<id-or-name>:/path"),
                (None, Some((v, p))) => {
                    let path = PathBuf::from(&src);
                    let f = tokio::fs::File::open(&path).await.with_context(|| format!("opening {}", path.display()))?;
                    let len = f.metadata().await.ok().map(|m| m.len());
                    let chunks = futures_util::stream::unfold(f, |mut f| async move {
                        use tokio::io::AsyncReadExt;
                        let mut buf = vec![0u8; 256 * 1024];
                        match f.read(&mut buf).await {
                            Ok(0) => None,
                            Ok(n) => {
                                buf.truncate(n);
                                Some((Ok(bytes::Bytes::from(buf)), f))
                            }
                            Err(e) => Some((Err(e), f)),
                        }
                    });
                    let up = vols.upload_from(&v, &p, chunks, len).await?;
                    eprintln!("{} bytes → vol:{v}:{}", up.size, up.path);
                }
                (Some((v, p)), None) => {
                    let mut stream = Box::pin(vols.download(&v, &p).await?);
                    let mut out: Box<dyn Write> =
                        if dst == "-" { Box::new(std::io::stdout().lock()) } else { Box::new(std::fs::File::create(&dst).with_context(|| format!("creating {dst}"))?) };
                    while let Some(chunk) = stream.next().await {
                        out.write_all(&chunk?)?;
                    }
                    out.flush()?;
                }
            },
        }
        Ok(0)
    })
}
