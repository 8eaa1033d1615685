//! Files: stream a local file in and back out, list, watch a directory,
//! and share a file by a signed URL.
//!
//! ```sh
//! cargo run -p airlock-sdk --example files -- /path/to/local/file
//! ```

use std::time::Duration;

use airlock_sdk::{Error, Sandbox};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let local = std::env::args().nth(1).unwrap_or_else(|| "/etc/os-release".to_string());
    let sbx = Sandbox::builder().timeout(Duration::from_secs(120)).create().await?;
    let files = sbx.files();

    // Watch before writing, so the upload shows up as events.
    files.make_dir("/home/user/data").await?;
    let mut watch = files.watch("/home/user/data").recursive(true).start().await?;

    // Upload streamed from disk, never whole in memory.
    let f = tokio::fs::File::open(&local).await?;
    let len = f.metadata().await?.len();
    let written = files.write_reader("/home/user/data/upload.bin", f, Some(len)).await?;
    println!("uploaded {} ({len} bytes)", written.path);

    if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
        let ev = ev?;
        println!("watch: {:?} {}", ev.event_type, ev.name);
    }

    for e in files.list_depth("/home/user", 2).await? {
        println!("{:<40} {:>10} {}", e.path, e.size, e.permissions);
    }

    // Download chunk by chunk.
    let mut down = files.read_stream("/home/user/data/upload.bin").await?;
    let mut out = tokio::fs::File::create("/tmp/airlock-example-download.bin").await?;
    while let Some(chunk) = down.next().await {
        out.write_all(&chunk?).await?;
    }
    out.flush().await?;
    println!("downloaded to /tmp/airlock-example-download.bin");

    // Anyone with this URL can fetch the file for ten minutes.
    println!("signed URL: {}", files.download_url("/home/user/data/upload.bin", Some(Duration::from_secs(600))));

    sbx.kill().await
}
