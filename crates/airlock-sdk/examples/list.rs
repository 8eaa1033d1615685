//! List sandboxes page by page, filtered by metadata and state.
//!
//! ```sh
//! cargo run -p airlock-sdk --example list
//! ```

use airlock_sdk::{Error, Sandbox, SandboxState};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let a = Sandbox::builder().metadata("team", "docs").create().await?;
    let b = Sandbox::builder().metadata("team", "docs").create().await?;
    b.pause().await?;

    let mut pages = Sandbox::list().metadata("team", "docs").limit(1).pages();
    while let Some(page) = pages.next().await {
        let page = page?;
        for s in &page.sandboxes {
            println!("{} {} ends {}", s.sandbox_id, s.state, s.end_at);
        }
        println!("-- next page token: {:?}", page.next_token);
    }

    let paused = Sandbox::list().metadata("team", "docs").state(SandboxState::Paused).all().await?;
    println!("paused: {:?}", paused.iter().map(|s| &s.sandbox_id).collect::<Vec<_>>());

    a.kill().await?;
    b.kill().await
}
