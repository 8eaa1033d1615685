//! Secrets (E2B's `/secrets`) against a real `airlock serve`: CRUD through
//! the Rust SDK, the raw API and the CLI, with the value in no answer, no
//! log line and not in clear in the store's files; a restart keeps them
//! decryptable with the same key file, and a missing or replaced key file
//! is reported as such. And the egress CA's trust layer seen from inside
//! a real sandbox.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use airlock_sdk::{Client, Config};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::server::Server;

const VALUE: &str = "sk-live-8f3a9c2d71e04b6a-not-a-real-key";

fn client(srv: &Server) -> Client {
    Client::new(Config::new(srv.url(), srv.key())).expect("client")
}

/// Every file of the store (the database, its WAL and shared memory).
fn store_bytes(data: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["airlock.db", "airlock.db-wal", "airlock.db-shm"] {
        all.extend(std::fs::read(data.join(f)).unwrap_or_default());
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// What a placeholder resolves to, by the server crate's own resolver on
/// the stopped server's data directory (what the egress proxy will call).
fn resolve(data: &Path, template: &str) -> Result<String, String> {
    let store = std::sync::Arc::new(airlock_server::store::Store::open(&data.join("airlock.db")).expect("store"));
    airlock_server::secrets::Secrets::new(store, data).resolve_placeholders_blocking(template).map_err(|e| e.to_string())
}

#[tokio::test]
async fn secrets_are_managed_without_their_values_ever_shown() {
    let srv = Server::start(&["--no-network"]).await;
    let c = client(&srv);
    let meta = BTreeMap::from([("owner".to_string(), "ci".to_string())]);
    let s = c.create_secret("OpenAI-Key", VALUE, Some(meta.clone())).await.expect("create");
    assert!(s.secret_id.starts_with("sec_") && s.secret_id.len() == 24, "{}", s.secret_id);
    assert_eq!((s.name.as_str(), s.current_version, &s.metadata), ("openai-key", 1, &meta), "names are stored lower-cased");
    assert!(airlock_proto::time::parse_rfc3339(&s.created_at).is_some() && s.created_at == s.updated_at);

    // By id and by name (either case); the raw answers hold no value.
    assert_eq!(c.get_secret(&s.secret_id).await.expect("by id"), s);
    assert_eq!(c.get_secret("OPENAI-KEY").await.expect("by name"), s);
    for path in ["/secrets".to_string(), format!("/secrets/{}", s.secret_id), "/secrets/openai-key".into()] {
        let (st, _, body) = srv.req("GET", &path, &[("x-api-key", srv.key())], Bytes::new()).await.expect("req");
        assert_eq!(st, 200, "{path}");
        assert!(!contains(&body, VALUE), "{path} shows the value");
    }
    let (st, v) = srv.api("GET", &format!("/secrets/{}", s.secret_id), None).await;
    assert_eq!(st, 200);
    let keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
    assert_eq!(keys, ["createdAt", "currentVersion", "metadata", "name", "secretID", "updatedAt"], "E2B's Secret, nothing more");

    // Refusals, in E2B's error shape, never echoing a value.
    let (st, v) = srv.api("POST", "/secrets", Some(json!({"name": "openai-key", "value": "other"}))).await;
    assert_eq!((st, v["code"].as_u64()), (409, Some(409)), "{v}");
    for (body, why) in [
        (json!({"name": "", "value": "v"}), "empty name"),
        (json!({"name": "a{b}", "value": "v"}), "braces"),
        (json!({"name": "sec_abc", "value": "v"}), "the id prefix"),
        (json!({"name": "ok", "value": ""}), "empty value"),
        (json!({"name": "ok", "value": format!("{VALUE}\r\nX-Evil: 1")}), "a header break"),
        (json!({"name": "ok", "value": "v", "metadata": (0..33).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}), "33 metadata entries"),
        (json!({"name": "ok", "value": "v", "metadata": {"k": "x".repeat(1025)}}), "a long metadata value"),
        (json!({"name": "ok", "value": {"nested": VALUE}}), "a value of the wrong type"),
        (json!([VALUE]), "not an object"),
    ] {
        let (st, _, body) = srv.req("POST", "/secrets", &[("x-api-key", srv.key()), ("content-type", "application/json")], Bytes::from(body.to_string())).await.expect("req");
        let v: Value = serde_json::from_slice(&body).expect("JSON error");
        assert_eq!((st, v["code"].as_u64()), (400, Some(400)), "{why}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{why}: {v}");
        assert!(!contains(&body, VALUE), "{why}: the error echoes the value: {v}");
    }
    let (st, v) = srv.api("GET", "/secrets/sec_doesnotexist0000000", None).await;
    assert_eq!((st, v["code"].as_u64()), (404, Some(404)), "{v}");
    let (st, _) = srv.req("GET", "/secrets", &[], Bytes::new()).await.map(|(s, h, _)| (s, h)).expect("req");
    assert_eq!(st, 401, "the API key is required");

    // Paging as the SDKs do it: limit, X-Next-Token, nextToken.
    for n in ["b", "c", "d"] {
        c.create_secret(n, "v", None).await.expect("create");
    }
    let (p1, t1) = c.list_secrets_page(3, None).await.expect("page 1");
    assert_eq!(p1.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["openai-key", "b", "c"]);
    let (p2, t2) = c.list_secrets_page(3, t1.as_deref()).await.expect("page 2");
    assert_eq!((p2.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), t2), (vec!["d"], None));
    assert!(t1.is_some());
    assert_eq!(c.list_secrets().await.expect("all").len(), 4);
    for q in ["limit=0", "limit=101", "limit=x", "nextToken=bogus"] {
        assert_eq!(srv.api("GET", &format!("/secrets?{q}"), None).await.0, 400, "{q}");
    }

    // Update: the next version; metadata kept unless given, replaced when given.
    let u = c.update_secret("openai-key", "sk-rotated-value-0001", None).await.expect("update");
    assert_eq!((u.current_version, &u.metadata, &u.secret_id), (2, &meta, &s.secret_id));
    let u = c.update_secret(&s.secret_id, "sk-rotated-value-0002", Some(BTreeMap::new())).await.expect("update");
    assert_eq!((u.current_version, u.metadata.len()), (3, 0));
    assert_eq!(srv.api("POST", "/secrets/nope", Some(json!({"value": "v"}))).await.0, 404);

    // Delete by id or name; then it is gone.
    c.delete_secret("B").await.expect("delete by name");
    c.delete_secret(&s.secret_id).await.expect("delete by id");
    assert!(c.get_secret(&s.secret_id).await.expect_err("gone").is_not_found());
    assert!(c.delete_secret(&s.secret_id).await.expect_err("twice").is_not_found());
    assert_eq!(srv.req("DELETE", "/secrets/b", &[("x-api-key", srv.key())], Bytes::new()).await.expect("req").0, 404);

    // Nowhere in clear: not the store's files, not the log.
    for v in [VALUE, "sk-rotated-value-0002"] {
        assert!(!contains(&store_bytes(&srv.data), v), "the store holds {v} in clear");
        assert!(!srv.log().contains(v), "the log shows {v}");
    }
}

#[tokio::test]
async fn secrets_stay_decryptable_across_restarts_and_a_lost_key_is_reported() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let key_file = data.join("secrets.key");
    let mut srv = Server::start_at(&data, &["--no-network"]).await;
    assert!(!key_file.exists(), "no key before the first secret");
    let s = client(&srv).create_secret("db-password", VALUE, None).await.expect("create");
    let mode = std::fs::metadata(&key_file).expect("key file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the key is root's alone");
    assert!(srv.stop());
    assert!(!contains(&store_bytes(&data), VALUE));
    assert_eq!(resolve(&data, "Bearer ${e2b.secrets.db-password}").as_deref(), Ok(&*format!("Bearer {VALUE}")));

    // Restarted on the same key file: still there, still decryptable.
    let mut srv = Server::start_at(&data, &["--no-network"]).await;
    assert_eq!(client(&srv).get_secret("db-password").await.expect("get").secret_id, s.secret_id);
    client(&srv).update_secret("db-password", "second-value-xyz", None).await.expect("update");
    assert!(srv.stop());
    assert_eq!(resolve(&data, "${e2b.secrets.db-password}").as_deref(), Ok("second-value-xyz"));

    // Without the key file: metadata still listed, values refused with a
    // clear error (503), and no new key made over the old secrets.
    let saved = dir.path().join("saved.key");
    std::fs::rename(&key_file, &saved).expect("move the key away");
    let e = resolve(&data, "${e2b.secrets.db-password}").expect_err("no key");
    assert!(e.contains("missing") && e.contains("secrets.key"), "{e}");
    let mut srv = Server::start_at(&data, &["--no-network"]).await;
    assert!(srv.log().contains("stored secrets cannot be decrypted"), "said at start: {}", srv.log());
    let c = client(&srv);
    assert_eq!(c.list_secrets().await.expect("list").len(), 1);
    let (st, v) = srv.api("POST", "/secrets", Some(json!({"name": "new", "value": "v"}))).await;
    assert_eq!((st, v["code"].as_u64()), (503, Some(503)), "{v}");
    assert!(v["message"].as_str().is_some_and(|m| m.contains("key file")), "{v}");
    assert_eq!(srv.api("POST", "/secrets/db-password", Some(json!({"value": "v"}))).await.0, 503);
    assert!(!key_file.exists(), "no new key while secrets sealed with the old one exist");
    assert!(srv.stop());

    // With another key: the same, never garbage.
    std::fs::write(&key_file, format!("{}\n", "5a".repeat(32))).expect("write");
    let e = resolve(&data, "${e2b.secrets.db-password}").expect_err("wrong key");
    assert!(e.contains("not the key"), "{e}");
    let mut srv = Server::start_at(&data, &["--no-network"]).await;
    assert_eq!(srv.api("POST", "/secrets", Some(json!({"name": "new", "value": "v"}))).await.0, 503);
    assert!(srv.stop());

    // The original back: everything works again.
    std::fs::rename(&saved, &key_file).expect("restore");
    let mut srv = Server::start_at(&data, &["--no-network"]).await;
    client(&srv).create_secret("new", "v", None).await.expect("create with the right key");
    assert!(srv.stop());
    assert_eq!(resolve(&data, "${e2b.secrets.db-password}/${e2b.secrets.new}").as_deref(), Ok("second-value-xyz/v"));
}

#[tokio::test]
async fn the_cli_manages_secrets_reading_values_from_stdin() {
    let srv = Server::start(&["--no-network"]).await;
    let cli = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_airlock"));
        c.args(args).env("AIRLOCK_URL", srv.url()).env("AIRLOCK_API_KEY", srv.key()).env_remove("AIRLOCK_SECRET_VALUE");
        c
    };
    let mut child = cli(&["secret", "create", "cli-token", "--meta", "team=infra"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(format!("{VALUE}\n").as_bytes()).expect("write");
    let out = child.wait_with_output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("sec_"), "{id}");
    let out = cli(&["secret", "update", "cli-token"]).env("AIRLOCK_SECRET_VALUE", "from-env-value").output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&["secret", "get", "cli-token"]).output().expect("run");
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(shown.contains(&id) && shown.contains("version:  2") && shown.contains("team=infra"), "{shown}");
    let out = cli(&["secret", "list", "--json"]).output().expect("run");
    let list: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list[0]["name"], "cli-token");
    for o in [&shown, &String::from_utf8_lossy(&out.stdout).to_string()] {
        assert!(!o.contains(VALUE) && !o.contains("from-env-value"));
    }
    // No value at all is an error, not an empty secret.
    let out = cli(&["secret", "create", "empty"]).stdin(Stdio::null()).output().expect("run");
    assert!(!out.status.success());
    assert!(cli(&["secret", "delete", &id]).status().expect("run").success());
    assert!(!cli(&["secret", "get", &id]).output().expect("run").status.success());
}

/// The egress CA's trust layer in a real sandbox: both files there, owned
/// by root inside, the template's own roots kept, and OpenSSL and Python
/// trusting the CA with no configuration.
#[tokio::test]
async fn sandboxes_on_the_trust_layer_trust_the_egress_ca() {
    let h = crate::support::harness();
    let dir = tempfile::tempdir().expect("tmp");
    let tls = airlock_server::egress_tls::EgressTls::open(dir.path()).expect("CA");
    let layer = tls.trust_layer(&h.base.root_layers).expect("trust layer");
    let sbx = crate::support::Sandbox::with(|s| {
        s.top_layers = vec![layer.clone()];
        s.internet = false;
    });
    let r = sbx.sh("cat /etc/airlock/egress-ca.pem").await;
    assert_eq!(r.stdout, tls.ca_pem(), "{r:?}");
    let r = sbx.sh("stat -c '%u %a' /etc/airlock/egress-ca.pem /etc/ssl/certs/ca-certificates.crt /etc/airlock").await;
    assert_eq!(r.stdout, "0 644\n0 644\n0 755\n", "{r:?}");
    let bundle = sbx.sh("cat /etc/ssl/certs/ca-certificates.crt").await.stdout;
    assert!(bundle.ends_with(tls.ca_pem()), "the CA is appended");
    let host = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    if !host.is_empty() {
        // The base template is made from the host: its roots are kept.
        assert!(bundle.len() > host.len() / 2, "the template's roots are still there");
    }
    if sbx.sh("command -v openssl").await.exit_code == 0 {
        let r = sbx.sh("openssl verify /etc/airlock/egress-ca.pem").await;
        assert_eq!(r.exit_code, 0, "OpenSSL's default store trusts the CA: {r:?}");
    }
    if sbx.sh("command -v python3").await.exit_code == 0 {
        let r = sbx.sh("python3 -c \"import ssl; print(any('Airlock egress CA' in str(c.get('subject')) for c in ssl.create_default_context().get_ca_certs()))\"").await;
        assert_eq!(r.stdout.trim(), "True", "Python's default context trusts the CA: {r:?}");
    }
    // The sandbox cannot change it: the layer is read-only, a write lands
    // in its own upper layer and the layer on the host is untouched.
    let _ = sbx.sh("echo tampered > /etc/airlock/egress-ca.pem").await;
    assert_eq!(std::fs::read_to_string(layer.join("etc/airlock/egress-ca.pem")).expect("layer"), tls.ca_pem());
}
