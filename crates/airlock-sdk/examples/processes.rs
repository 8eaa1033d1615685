//! Background processes: stream events, feed stdin, detach and reattach
//! by pid, and kill.
//!
//! ```sh
//! cargo run -p airlock-sdk --example processes
//! ```

use std::time::Duration;

use airlock_sdk::{CommandEvent, Error, Sandbox};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let sbx = Sandbox::builder().timeout(Duration::from_secs(120)).create().await?;

    // Events as a stream.
    let mut events = sbx.commands().command("for i in 1 2 3; do echo step $i; sleep 0.2; done").stream().await?;
    while let Some(ev) = events.next().await {
        match ev? {
            CommandEvent::Stdout(b) => print!("stdout: {}", String::from_utf8_lossy(&b)),
            CommandEvent::Stderr(b) => eprint!("stderr: {}", String::from_utf8_lossy(&b)),
            CommandEvent::Pty(_) => {}
            CommandEvent::Exit(end) => println!("exited with {}", end.exit_code),
        }
    }

    // A background process with stdin, and callbacks for its output.
    let upper = sbx.commands().command("tr a-z A-Z").stdin(true).on_stdout(|s| print!("callback: {s}")).spawn().await?;
    upper.send_stdin("shout this\n").await?;
    upper.close_stdin().await?;
    upper.wait().await?;

    // Detach from a long-running process and reattach later by pid.
    let ticker = sbx.commands().command("for i in 1 2 3 4; do echo tick $i; sleep 0.5; done").tag("ticker").spawn().await?;
    let pid = ticker.pid();
    ticker.disconnect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let again = sbx.commands().connect(pid).await?.wait().await?;
    print!("reattached, full output:\n{}", again.stdout);

    for p in sbx.commands().list().await? {
        println!("still running: pid {} {:?}", p.pid, p.config.args);
    }
    let sleeper = sbx.commands().command("sleep 600").no_timeout().spawn().await?;
    sleeper.kill().await?;
    println!("killed: {:?}", sleeper.wait().await.err().map(|e| e.to_string()));

    sbx.kill().await
}
