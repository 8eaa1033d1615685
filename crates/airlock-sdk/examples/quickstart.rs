//! Create a sandbox, run a command, move a file in and out, and kill it.
//!
//! ```sh
//! export AIRLOCK_URL=http://127.0.0.1:3000 AIRLOCK_API_KEY=e2b_...
//! cargo run -p airlock-sdk --example quickstart
//! ```

use std::time::Duration;

use airlock_sdk::{Error, Sandbox};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let sbx = Sandbox::builder().template("base").timeout(Duration::from_secs(120)).metadata("example", "quickstart").env("GREETING", "hello").create().await?;
    println!("sandbox {}", sbx.id());

    let out = sbx.commands().run("echo \"$GREETING from $(uname -n)\"").await?;
    print!("{}", out.stdout);

    sbx.files().write("/tmp/input.txt", "some data\n").await?;
    let out = sbx.commands().run("wc -c < /tmp/input.txt > /tmp/output.txt").await?;
    assert!(out.success());
    println!("bytes: {}", sbx.files().read_to_string("/tmp/output.txt").await?.trim());

    // A failing command is a typed error carrying its exit code and output.
    match sbx.commands().run("echo failing >&2; exit 3").await {
        Err(Error::CommandExit { exit_code, stderr, .. }) => println!("exit {exit_code}: {}", stderr.trim()),
        other => println!("unexpected: {other:?}"),
    }

    sbx.kill().await?;
    Ok(())
}
