//! Where the SDK connects and with which key: from code, or resolved once
//! from the environment by [`Config::from_env`].

use std::time::Duration;

/// The server used when neither code nor the environment names one: a
/// local `airlock serve` on its default address.
pub const DEFAULT_URL: &str = "http://127.0.0.1:3000";

/// Connection settings shared by every call made through one [`crate::Client`].
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    /// Base URL of the control API (`POST /v2/sandboxes`, ...).
    pub api_url: String,
    /// Base URL of sandbox traffic (envd), routed by the `E2b-Sandbox-Id`
    /// header. Airlock serves both on one port, so this defaults to `api_url`.
    pub sandbox_url: String,
    /// Sent as `X-API-KEY` on control-API calls.
    pub api_key: Option<String>,
    /// Limit on each control-API call and on the response headers of
    /// sandbox calls (streams themselves run as long as they need).
    pub request_timeout: Duration,
    /// How many times a control-API call answered with 429 is retried,
    /// waiting `Retry-After` (or a short backoff) in between.
    pub retries: u32,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("api_url", &self.api_url)
            .field("sandbox_url", &self.sandbox_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self { api_url: DEFAULT_URL.to_string(), sandbox_url: DEFAULT_URL.to_string(), api_key: None, request_timeout: Duration::from_secs(60), retries: 2 }
    }
}

impl Config {
    /// A configuration for one server that serves both the API and sandbox
    /// traffic (as `airlock serve` does).
    pub fn new(url: impl Into<String>, api_key: impl Into<String>) -> Self {
        let url = url.into();
        Self { sandbox_url: url.clone(), api_url: url, api_key: Some(api_key.into()), ..Self::default() }
    }

    /// Reads the environment once: `AIRLOCK_URL` and `AIRLOCK_API_KEY`,
    /// falling back to the official SDKs' `E2B_API_URL`, `E2B_SANDBOX_URL`
    /// and `E2B_API_KEY`; unset means a local server on [`DEFAULT_URL`].
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`Config::from_env`] over any variable source (tests use a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let airlock_url = get("AIRLOCK_URL");
        let api_url = airlock_url.clone().or_else(|| get("E2B_API_URL")).unwrap_or_else(|| DEFAULT_URL.to_string());
        let sandbox_url = airlock_url.or_else(|| get("E2B_SANDBOX_URL")).unwrap_or_else(|| api_url.clone());
        let api_key = get("AIRLOCK_API_KEY").or_else(|| get("E2B_API_KEY"));
        Self { api_url, sandbox_url, api_key, ..Self::default() }
    }

    /// Points both the API and sandbox traffic at `url`.
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.api_url = url.into();
        self.sandbox_url = self.api_url.clone();
        self
    }

    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    pub fn with_request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    pub fn with_retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Config {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn airlock_variables_win_over_e2b_ones() {
        let c = cfg(&[("AIRLOCK_URL", "http://a:1"), ("AIRLOCK_API_KEY", "k1"), ("E2B_API_URL", "http://b:2"), ("E2B_API_KEY", "k2")]);
        assert_eq!((c.api_url.as_str(), c.sandbox_url.as_str(), c.api_key.as_deref()), ("http://a:1", "http://a:1", Some("k1")));
    }

    #[test]
    fn e2b_variables_are_the_fallback() {
        let c = cfg(&[("E2B_API_URL", "http://b:2"), ("E2B_SANDBOX_URL", "http://s:3"), ("E2B_API_KEY", "k2")]);
        assert_eq!((c.api_url.as_str(), c.sandbox_url.as_str(), c.api_key.as_deref()), ("http://b:2", "http://s:3", Some("k2")));
        let c = cfg(&[("E2B_API_URL", "http://b:2")]);
        assert_eq!(c.sandbox_url, "http://b:2", "sandbox traffic defaults to the API's address");
    }

    #[test]
    fn nothing_set_means_local_server_and_no_key() {
        let c = cfg(&[("AIRLOCK_URL", "  ")]);
        assert_eq!(c.api_url, DEFAULT_URL);
        assert_eq!(c.api_key, None);
        assert!(!format!("{:?}", Config::new("http://x", "secret")).contains("secret"), "Debug hides the key");
    }
}
