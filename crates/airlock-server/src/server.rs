//! `airlock serve`: one HTTP listener for the control API and sandbox
//! traffic, the lifecycle loop (deadlines, metrics), webhook deliveries,
//! and clean shutdown.
//! Sandboxes are not children of the server: stopping it, even with
//! SIGKILL, leaves them running, and the next start finds them again.
//! Connections are admitted and timed out by `conn`.

mod conn;

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::api::{self, RateLimiter};
use crate::config::Config;
use crate::http::Resp;
use crate::proxy;
use crate::service::{self, Service};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("creating data directory {path}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the store")]
    Store(#[from] crate::store::StoreError),
    #[error("starting the sandbox runtime")]
    Runtime(#[from] airlock_runtime::Error),
    #[error("listening on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub struct Server {
    pub service: Arc<Service>,
    listener: TcpListener,
    limiter: Arc<RateLimiter>,
    /// Set when the server created a key on first start: show it once.
    pub new_key: Option<String>,
    /// Routes served beside the API, behind its authentication (`/mcp`).
    extra: Option<axum::Router>,
    /// Routes that authenticate on their own (`/socket.io/`: the key is in
    /// the Socket.IO handshake, which browsers cannot put in a header).
    public_extra: Option<axum::Router>,
    /// HTTPS on the same listener (`--domain` with a certificate).
    tls: Option<Arc<rustls::ServerConfig>>,
}

pub fn open_store(data_dir: &std::path::Path) -> Result<Store, ServeError> {
    // Root only: the directory holds the store (API key hashes, sandbox
    // tokens), every sandbox's launch.json and agent socket.
    airlock_runtime::state::private_dir(data_dir).map_err(|source| ServeError::DataDir { path: data_dir.to_path_buf(), source })?;
    Ok(Store::open(&data_dir.join("airlock.db"))?)
}

impl Server {
    /// Opens the store and runtime, reconciles sandboxes, binds the listener.
    pub async fn bind(cfg: Config) -> Result<Self, ServeError> {
        // First: a bad certificate or key stops the start before any work.
        let tls = crate::tls::listener_tls(&cfg.data_dir, cfg.domain.as_deref(), cfg.tls_cert.as_deref(), cfg.tls_key.as_deref())
            .map_err(|e| ServeError::Other(format!("TLS for the listener: {}", airlock_runtime::init::chain(&e))))?;
        match (&tls, &cfg.domain) {
            (Some((_, crate::tls::Source::Files { cert, .. })), _) => tracing::info!(cert = %cert.display(), "HTTPS and HTTP on the listener (HTTP/2 and HTTP/1.1)"),
            (Some((_, crate::tls::Source::LocalCa { ca })), Some(d)) => {
                tracing::info!(ca = %ca.display(), domain = %d, "HTTPS and HTTP on the listener, signed by the local CA (clients must trust it)")
            }
            (None, Some(d)) => tracing::info!(domain = %d, "plain HTTP only: for HTTPS give --tls-cert/--tls-key or run `airlock tls init`"),
            _ => {}
        }
        let tls = tls.map(|(c, _)| c);
        let store = Arc::new(open_store(&cfg.data_dir)?);
        let opts = airlock_runtime::namespace::Options { root: cfg.data_dir.clone(), binary: cfg.binary.clone(), network: cfg.network };
        let templates = airlock_template::Store::new(cfg.data_dir.join("templates"));
        let backend = tokio::task::spawn_blocking(move || {
            let b = airlock_runtime::NamespaceBackend::new(opts)?;
            // The built-in `base`, made from the host on first start (or
            // when its recipe changed).
            templates.ensure_base().map_err(|e| ServeError::Other(format!("preparing the base template: {}", airlock_runtime::init::chain(&e))))?;
            Ok::<_, ServeError>(b)
        })
        .await
        .map_err(|e| ServeError::Other(e.to_string()))??;
        let mut new_key = None;
        if cfg.api_keys.is_empty() && store.key_count()? == 0 {
            let key = crate::ids::api_key().map_err(|e| ServeError::Other(e.to_string()))?;
            store.add_key("default", &key, "created on first start", service::now_ms())?;
            new_key = Some(key);
        }
        let mut cfg = cfg;
        if cfg.io_default && !backend.cgroup_v2() {
            tracing::info!("cgroup v1: no default disk I/O limits (set --io-bps/--io-iops to have them)");
            cfg.io_bps = 0;
            cfg.io_iops = 0;
        }
        let listener = TcpListener::bind(cfg.listen).await.map_err(|source| ServeError::Listen { addr: cfg.listen, source })?;
        let egress_ok = cfg.network && airlock_runtime::Backend::network_available(&backend) && airlock_runtime::nft::available();
        let (upstreams, upstream_ca) = (cfg.dns_upstream.clone(), cfg.upstream_ca.clone());
        let cluster = cfg.cluster.clone().map(crate::cluster::Cluster::new).transpose().map_err(|e| ServeError::Other(format!("--cluster: {e}")))?;
        let service = Service::new(cfg, store, Arc::new(backend));
        if let Some(c) = cluster {
            tracing::info!(node = %c.name(), advertise = %c.cfg.advertise, etcd = %c.cfg.etcd, "joining the cluster");
            service.set_cluster(c);
        }
        // The egress CA exists from the first start on (sandboxes trust it
        // through a layer made from it, and the egress proxy signs with it).
        let svc = service.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || svc.egress_tls().map(|_| ())).await {
            tracing::error!(error = %e, "the egress interception CA could not be loaded or made");
        }
        // Egress enforcement before any sandbox is adopted: the policed
        // ones that outlived the last server are policed from the start.
        if egress_ok {
            let upstreams = if upstreams.is_empty() { crate::egress::host_resolvers() } else { upstreams };
            let tls = crate::webhooks::build_tls(upstream_ca.as_deref()).map_err(ServeError::Other)?;
            // Without it the server still serves: creates that ask for a
            // policy are refused, and sandboxes policed by a previous
            // server stay behind its table (their traffic goes nowhere).
            if let Err(e) = service.start_egress(upstreams, tls).await {
                tracing::error!(error = %e, "egress policy enforcement could not start: sandboxes with network.allow_out/deny_out are refused");
            }
        } else if service.cfg.network {
            tracing::warn!(
                "egress policies unavailable: {}",
                "install nftables (`apt install nftables`) and restart; sandboxes created with network.allow_out/deny_out are refused"
            );
        }
        // Volumes first: a sandbox restarted by reconcile binds them.
        service.restore_volumes().await.map_err(|e| ServeError::Other(e.to_string()))?;
        service.reconcile().await.map_err(|e| ServeError::Other(e.to_string()))?;
        service.init_pools().await.map_err(|e| ServeError::Other(e.to_string()))?;
        // A lost or replaced secrets key does not stop the server (secrets'
        // metadata stays readable and deletable) but is said at once.
        let secrets = service.secrets().clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || secrets.check_key()).await {
            tracing::error!(error = %e, "stored secrets cannot be decrypted: they will not be injected");
        }
        Ok(Self { service, listener, limiter: Arc::new(RateLimiter::default()), new_key, extra: None, public_extra: None, tls })
    }

    /// Serves `routes` beside the control API, behind its authentication
    /// and rate limit (the binary mounts the MCP endpoint this way, so this
    /// crate does not depend on the MCP server).
    pub fn with_routes(mut self, routes: axum::Router) -> Self {
        self.extra = Some(routes);
        self
    }

    /// Routes served beside the API without its authentication or rate
    /// limit: they must check keys themselves.
    pub fn with_public_routes(mut self, routes: axum::Router) -> Self {
        self.public_extra = Some(routes);
        self
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves. In-flight requests are abandoned;
    /// sandboxes keep running.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let svc = self.service.clone();
        let api = api::router_with(svc.clone(), self.limiter.clone(), self.extra.clone(), self.public_extra.clone());
        let nofile = conn::nofile_limit();
        let limits = conn::Limits::new(svc.cfg.max_connections, svc.cfg.max_connections_per_client, nofile);
        if let Some(n) = nofile.filter(|n| (limits.max as u64).saturating_mul(2) + limits.reserve as u64 > *n) {
            tracing::warn!(
                max_connections = limits.max,
                nofile = n,
                "the connection limit can exhaust the descriptor limit (a proxied connection holds two): raise RLIMIT_NOFILE or lower --max-connections"
            );
        }
        tracing::info!(
            max_connections = limits.max,
            per_client = limits.per_client,
            reserve = limits.reserve,
            header_timeout_s = svc.cfg.header_timeout_s,
            idle_timeout_s = svc.cfg.idle_timeout_s,
            "connection limits"
        );
        let gate = conn::Gate::new(limits);
        let conns = Arc::new(ConnSettings {
            header: secs(svc.cfg.header_timeout_s),
            idle: secs(svc.cfg.idle_timeout_s),
            full: crate::http::refusal_bytes(&conn::Refusal::Full.message(&limits)),
            client: crate::http::refusal_bytes(&conn::Refusal::Client.message(&limits)),
            limits,
            tls: self.tls.clone().map(tokio_rustls::TlsAcceptor::from),
        });
        let lifecycle = tokio::spawn(lifecycle_loop(svc.clone()));
        let sampler = tokio::spawn(sampler_loop(svc.clone()));
        let pooler = tokio::spawn(svc.clone().pool_loop());
        let housekeeping = tokio::spawn(housekeeping_loop(svc.clone()));
        let trimmer = tokio::spawn(trim_loop(gate.clone()));
        // Deliveries read the store on their own tasks: a slow receiver
        // never holds up a sandbox or another webhook.
        let webhooks = tokio::spawn(crate::webhooks::run(svc.clone()));
        let cluster = svc.cluster().cloned().map(|c| tokio::spawn(c.run(svc.clone())));
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: the limits should keep us
                        // below the descriptor limit, but if not, back off
                        // instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            // Accept and answer rather than leave connections in the
            // kernel's backlog, where a client sees only a hang.
            match gate.admit(peer.ip()) {
                conn::Admission::Serve(slot) => {
                    tokio::spawn(serve_connection(svc.clone(), api.clone(), conns.clone(), stream, peer, slot));
                }
                conn::Admission::Refuse(slot, why) => {
                    tokio::spawn(serve_refusal(svc.clone(), api.clone(), conns.clone(), stream, slot, why));
                }
                conn::Admission::Reject(why) => {
                    let bytes = match why {
                        conn::Refusal::Full => conns.full.clone(),
                        conn::Refusal::Client => conns.client.clone(),
                    };
                    reject(stream, bytes);
                }
            }
        }
        lifecycle.abort();
        sampler.abort();
        pooler.abort();
        housekeeping.abort();
        trimmer.abort();
        webhooks.abort();
        if let Some(c) = cluster {
            c.abort();
            if let Some(c) = svc.cluster() {
                c.leave().await;
            }
        }
        // With no policed sandbox left, the egress table goes with the
        // server; otherwise it stays, and their traffic goes nowhere until
        // the next start restores it.
        if let Some(eg) = svc.egress().cloned() {
            let _ = tokio::task::spawn_blocking(move || {
                if eg.policed().is_empty() {
                    eg.uninstall();
                }
            })
            .await;
        }
        // Destroys leave their last clean-up to background threads.
        let _ = tokio::task::spawn_blocking(|| airlock_runtime::namespace::settle(std::time::Duration::from_secs(30))).await;
        tracing::info!("server stopped; sandboxes keep running");
    }
}

/// What every connection task needs from the configuration.
struct ConnSettings {
    header: Option<Duration>,
    idle: Option<Duration>,
    /// The canned 503s for connections past the reserve.
    full: bytes::Bytes,
    client: bytes::Bytes,
    limits: conn::Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// The longest a TLS handshake may take (and, with no header timeout, the
/// wait for a connection's first byte).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a connection opens with a TLS handshake record: HTTP requests
/// start with a method's letters, a ClientHello with 0x16. EOF or a
/// silent client count as not TLS (the HTTP side then times it out).
async fn opens_with_tls(stream: &TcpStream, wait: Duration) -> bool {
    let mut b = [0u8; 1];
    matches!(tokio::time::timeout(wait, stream.peek(&mut b)).await, Ok(Ok(1)) if b[0] == 0x16)
}

fn secs(s: u64) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(s))
}

/// A connection within the limits: HTTP/1.1 with upgrades, or TLS (when
/// configured and the client opens with a handshake) carrying HTTP/2 or
/// HTTP/1.1 by ALPN. The header and idle timeouts are on hyper's header
/// timer (`conn::HeadTimer`) and the stall timeout on the socket
/// (`conn::ConnIo`).
async fn serve_connection(svc: Arc<Service>, api: axum::Router, conns: Arc<ConnSettings>, stream: TcpStream, peer: std::net::SocketAddr, slot: conn::Slot) {
    let _ = stream.set_nodelay(true);
    conn::set_keepalive(&stream);
    let acceptor = match &conns.tls {
        Some(a) if opens_with_tls(&stream, conns.header.unwrap_or(HANDSHAKE_TIMEOUT)).await => Some(a.clone()),
        _ => None,
    };
    let act = conn::Activity::new();
    let io = conn::ConnIo::new(stream, act.clone(), conns.idle, slot);
    let service = hyper::service::service_fn(move |req| {
        let svc = svc.clone();
        let api = api.clone();
        async move { Ok::<_, std::convert::Infallible>(dispatch(svc, api, req).await) }
    });
    let Some(acceptor) = acceptor else {
        return serve_http1(TokioIo::new(io), service, &conns, act, peer).await;
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let mut b = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        b.timer(TokioTimer::new());
        // An idle HTTP/2 connection is pinged; one that stops answering goes.
        if let Some(idle) = conns.idle {
            b.keep_alive_interval(Some(idle)).keep_alive_timeout(Duration::from_secs(20));
        }
        if let Err(e) = b.serve_connection(TokioIo::new(tls), service).await {
            tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with error");
        }
        return;
    }
    serve_http1(TokioIo::new(tls), service, &conns, act, peer).await
}

async fn serve_http1<I, S>(io: TokioIo<I>, service: S, conns: &ConnSettings, act: Arc<conn::Activity>, peer: std::net::SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<Incoming>, Response = Resp, Error = std::convert::Infallible> + Send,
    S::Future: Send + 'static,
{
    let mut b = hyper::server::conn::http1::Builder::new();
    if conns.header.is_some() || conns.idle.is_some() {
        // hyper needs some duration to arm its timer; the timer itself
        // decides which of our two timeouts applies.
        b.timer(conn::HeadTimer::new(act, conns.header, conns.idle)).header_read_timeout(conns.header.or(conns.idle));
    } else {
        b.header_read_timeout(None);
    }
    if let Err(e) = b.serve_connection(io, service).with_upgrades().await {
        tracing::debug!(%peer, error = %e, "connection ended with error");
    }
}

/// The longest a refused connection may take to send its request head.
const REFUSAL_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection over a limit but within the reserve: one request, then
/// close. `/health` is answered for real, so monitoring sees a live server
/// at its limit; anything else gets the 503.
async fn serve_refusal(svc: Arc<Service>, api: axum::Router, conns: Arc<ConnSettings>, stream: TcpStream, slot: conn::Slot, why: conn::Refusal) {
    let _ = stream.set_nodelay(true);
    let header = conns.header.map_or(REFUSAL_HEADER_TIMEOUT, |h| h.min(REFUSAL_HEADER_TIMEOUT));
    let io = conn::ConnIo::new(stream, conn::Activity::new(), Some(header), slot);
    let message = why.message(&conns.limits);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let svc = svc.clone();
        let api = api.clone();
        let message = message.clone();
        async move {
            let health = req.method() == hyper::Method::GET && req.uri().path() == "/health" && proxy::target(req.headers(), svc.cfg.domain.as_deref()).is_none();
            if health {
                return Ok::<_, std::convert::Infallible>(dispatch(svc, api, req).await);
            }
            // Read a small body before answering: closing a socket with
            // unread data resets it, and the client may never see the 503.
            let body = http_body_util::Limited::new(req.into_body(), 64 * 1024);
            let _ = tokio::time::timeout(Duration::from_secs(1), http_body_util::BodyExt::collect(body)).await;
            Ok(crate::http::refusal(message))
        }
    });
    let r = hyper::server::conn::http1::Builder::new().timer(TokioTimer::new()).header_read_timeout(header).keep_alive(false).serve_connection(TokioIo::new(io), service).await;
    if let Err(e) = r {
        tracing::debug!(error = %e, "refused connection ended with error");
    }
}

async fn dispatch(svc: Arc<Service>, api: axum::Router, mut req: hyper::Request<Incoming>) -> Resp {
    // HTTP/2 names the host in `:authority`, not `Host`: one place for
    // routing (and the agent, reached over HTTP/1.1) to find it.
    if !req.headers().contains_key(hyper::header::HOST) {
        if let Some(v) = req.uri().authority().and_then(|a| hyper::header::HeaderValue::from_str(a.as_str()).ok()) {
            req.headers_mut().insert(hyper::header::HOST, v);
        }
    }
    if let Some(c) = svc.cluster().cloned() {
        return cluster_dispatch(svc, c, api, req).await;
    }
    dispatch_local(svc, api, req).await
}

/// A request in cluster mode: served here, forwarded to the node that holds
/// its sandbox, placed, or listed across nodes.
async fn cluster_dispatch(svc: Arc<Service>, c: Arc<crate::cluster::Cluster>, api: axum::Router, mut req: hyper::Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // The secret never goes further (into a sandbox, or a handler);
    // what it proves travels as an extension.
    let trusted = c.trusted(req.headers());
    req.headers_mut().remove(crate::cluster::SECRET_HEADER);
    use crate::cluster::route::{self, Decision};
    let create = route::is_create(&method, &path);
    if trusted {
        req.extensions_mut().insert(crate::cluster::Trusted);
        if path == route::SIGNATURE_PATH && method == hyper::Method::POST {
            return route::answer_signature(&svc, req).await;
        }
        if let (Some(sha), &hyper::Method::GET) = (path.strip_prefix(crate::cluster::templates::LAYER_PATH), &method) {
            return crate::cluster::templates::serve_layer(&svc, sha).await;
        }
        if create {
            // Placed here by another node: catalogued before the answer.
            return route::catalogued(&svc, &c, dispatch_local(svc.clone(), api, req).await).await;
        }
    } else {
        req.headers_mut().remove(crate::cluster::FORWARDED_BY);
        if create {
            return route::create(&svc, &c, api, req).await;
        }
        match route::decide(&svc, &c, &req).await {
            Decision::Local => {}
            Decision::Answer(r) => return r,
            Decision::Forward(node) => {
                tracing::debug!(node = %node.name, %method, %path, "forwarded to the node that holds it");
                let req = req.map(|b| http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(b, |e| -> crate::http::BoxError { Box::new(e) })));
                return c.forward(&node, req).await;
            }
            Decision::List => {
                return list_everywhere(svc.clone(), c.clone(), api, req).await;
            }
        }
    }
    dispatch_local(svc, api, req).await
}

/// A listing of sandboxes from every node: this one answers while the
/// others are asked.
async fn list_everywhere(svc: Arc<Service>, c: Arc<crate::cluster::Cluster>, api: axum::Router, req: hyper::Request<Incoming>) -> Resp {
    let pq = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| req.uri().path().to_string());
    let limit = api::query_pairs(req.uri().query().unwrap_or("")).into_iter().find(|(k, _)| k == "limit").and_then(|(_, v)| v.parse::<usize>().ok());
    let peers = tokio::spawn(crate::cluster::route::peer_lists(c, pq, req.headers().clone()));
    let local = dispatch_local(svc, api, req).await;
    let peers = peers.await.unwrap_or_else(|e| (Vec::new(), vec![format!("the other nodes ({e})")]));
    crate::cluster::route::merge_lists(local, peers, limit).await
}

/// A request this node serves itself.
async fn dispatch_local(svc: Arc<Service>, api: axum::Router, req: hyper::Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if let Some(t) = proxy::target(req.headers(), svc.cfg.domain.as_deref()) {
        let t = match t {
            Ok(t) => t,
            Err(message) => return crate::http::error(400, message),
        };
        let id = t.id.clone();
        let r = proxy::forward(&svc, req, t).await;
        crate::telemetry::TELEMETRY.proxy_responses.record(r.status().as_u16());
        tracing::debug!(sandbox_id = %id, %method, %path, status = r.status().as_u16(), "sandbox request");
        return r;
    }
    if path == "/files" && req.uri().query().is_some_and(|q| q.contains("signature=")) {
        let started = std::time::Instant::now();
        let r = signed_files(&svc, req).await;
        tracing::info!(%method, %path, status = r.status().as_u16(), elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "signed file request");
        return r;
    }
    let mut req = req.map(axum::body::Body::new);
    // `/sandboxes/` is `/sandboxes`, as it always was.
    if path.len() > 1 && path.ends_with('/') {
        let pq = req.uri().path_and_query().map(|p| p.as_str().replacen(path.as_str(), path.trim_end_matches('/'), 1));
        if let Some(uri) = pq.and_then(|p| p.parse().ok()) {
            *req.uri_mut() = uri;
        }
    }
    use tower::ServiceExt;
    match api.oneshot(req).await {
        Ok(resp) => resp.map(|b| http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(b, Into::into))),
        Err(never) => match never {},
    }
}

/// A signed `/files` URL fetched without SDK headers: the signature names
/// the sandbox (only its token produces it).
async fn signed_files(svc: &Arc<Service>, req: hyper::Request<Incoming>) -> Resp {
    let q = api::query_pairs(req.uri().query().unwrap_or(""));
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (Some(path), Some(sig)) = (get("path"), get("signature")) else {
        return crate::http::error(400, "signed URLs need path and signature");
    };
    let op = if req.method() == hyper::Method::GET { "read" } else { "write" };
    let user = get("username").unwrap_or_default();
    let exp = get("signature_expiration").and_then(|e| e.parse().ok());
    match svc.find_by_signature(&path, op, &user, &sig, exp).await {
        Some(id) => proxy::forward(svc, req, proxy::Target { id, port: proxy::ENVD_PORT }).await,
        None => crate::http::error(401, "invalid signature"),
    }
}

async fn lifecycle_loop(svc: Arc<Service>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = svc.expire_due().await {
            tracing::warn!(error = %e, "deadline check failed");
        }
    }
}

/// Rejected connections lingering at once (see `reject`); past this many
/// a rejection closes at once.
static LINGERING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
const MAX_LINGERING: usize = 256;

/// Answers a connection past every limit with a canned 503 (written
/// without reading the request: it fits any fresh socket's buffer), then
/// shuts the write side and drains what the client still sends for up to a
/// second: closing over unread data resets the connection, and the client
/// (which was still sending its request) would lose the answer. Bounded:
/// at most `MAX_LINGERING` linger, each for a second and 64 KiB.
fn reject(stream: tokio::net::TcpStream, bytes: impl AsRef<[u8]> + Send + 'static) {
    use std::sync::atomic::Ordering;
    let _ = stream.try_write(bytes.as_ref());
    if LINGERING.fetch_add(1, Ordering::SeqCst) >= MAX_LINGERING {
        LINGERING.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = stream;
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while left > 0 {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
        LINGERING.fetch_sub(1, Ordering::SeqCst);
    });
}

/// Slow chores on their own task: unused snapshot layers, and idle
/// paused sandboxes giving their memory back.
async fn housekeeping_loop(svc: Arc<Service>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for round in 0u64.. {
        tick.tick().await;
        svc.watch_disk().await;
        // Counting the samples is a scan: once a minute is enough.
        if round % 30 == 0 {
            let store = svc.store().clone();
            let before = crate::service::now_ms() - crate::samples::RETENTION_MS;
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.trim_samples(before, crate::samples::MAX_ROWS)).await {
                tracing::warn!(error = %e, "trimming metric history failed");
            }
        }
        let store = svc.store().clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.trim_events(crate::events::KEEP)).await {
            tracing::warn!(error = %e, "trimming events failed");
        }
        if let Err(e) = svc.purge_dead().await {
            tracing::warn!(error = %e, "forgetting dead sandboxes failed");
        }
        if round % 10 == 0 {
            svc.prune_egress().await;
        }
        svc.collect_layers_if_wanted().await;
        if let Err(e) = svc.release_idle().await {
            tracing::warn!(error = %e, "releasing idle paused sandboxes failed");
        }
    }
}

/// After a burst of connections has closed, hands the freed heap back
/// (`conn::trim_heap`), off the async workers since it walks the heap.
async fn trim_loop(gate: Arc<conn::Gate>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if gate.take_trim_hint() {
            let _ = tokio::task::spawn_blocking(conn::trim_heap).await;
        }
    }
}

/// Usage sampling runs on its own task: however long a round takes (a
/// sandbox without a disk limit is measured by walking its files), it
/// never delays a deadline.
async fn sampler_loop(svc: Arc<Service>) {
    let mut tick = tokio::time::interval(Duration::from_millis(svc.cfg.sample_interval_ms.max(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        svc.sample_all().await;
    }
}
