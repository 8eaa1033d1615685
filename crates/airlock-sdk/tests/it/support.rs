//! A real `airlock serve` per test (airlock-testkit's), and small helpers.

use std::time::{Duration, Instant};

use airlock_sdk::{Client, Config, Sandbox};

pub(crate) use airlock_testkit::KEY;

/// The shared test server (airlock-testkit), plus the SDK's view of it.
pub(crate) struct Server(airlock_testkit::Server);

impl std::ops::Deref for Server {
    type Target = airlock_testkit::Server;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Server {
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra `airlock serve` flags, ready when this returns.
    pub(crate) fn start_with(extra: &[&str]) -> Self {
        Self(airlock_testkit::Server::start(&airlock_testkit::airlock_bin(), extra))
    }

    pub(crate) fn config(&self) -> Config {
        Config::new(self.url(), KEY)
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(self.config()).expect("client")
    }

    /// A sandbox for a test: no internet (no veth pair to set up), two
    /// minutes to live.
    pub(crate) async fn sandbox(&self) -> Sandbox {
        Sandbox::builder().client(&self.client()).allow_internet_access(false).timeout(Duration::from_secs(120)).create().await.expect("create sandbox")
    }
}

/// Polls `f` until it returns true or `secs` pass.
pub(crate) async fn eventually(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
