//! Running a node: open the store, bind the listeners, serve until SIGTERM or
//! SIGINT, then drain and close the log cleanly.

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::store::{self, Store};
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// File in the data dir naming the addresses actually bound (port 0 in tests).
pub const LISTEN_FILE: &str = "listen.json";
/// File in the data dir holding this node's id.
pub const NODE_ID_FILE: &str = "node-id";

/// Find or create the node id, refusing a config that contradicts the one
/// the data directory was created with.
pub fn resolve_node_id(cfg: &Config) -> anyhow::Result<String> {
    let path = cfg.node.data_dir.join(NODE_ID_FILE);
    let stored = match std::fs::read_to_string(&path) {
        Ok(s) => Some(s.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    match (stored, cfg.node.id.as_str()) {
        (Some(s), "") => Ok(s),
        (Some(s), c) if s == c => Ok(s),
        (Some(s), c) => anyhow::bail!(
            "node.id is {c:?} but {} says this data directory belongs to node {s:?}; the id names the node's log and cannot change",
            path.display()
        ),
        (None, c) => {
            let id = if c.is_empty() {
                format!("node-{}", hex::encode(rand::random::<[u8; 4]>()))
            } else {
                c.to_string()
            };
            write_private(&path, id.as_bytes())?;
            Ok(id)
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    // The rename is durable only once the directory is.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn load_or_create_token(cfg: &Config) -> anyhow::Result<String> {
    let path = cfg.token_path();
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => Ok(s.trim().to_string()),
        _ => {
            let t = hex::encode(rand::random::<[u8; 32]>());
            write_private(&path, t.as_bytes())?;
            Ok(t)
        }
    }
}

/// Resolves once the listeners' shutdown flag turns true (or its sender
/// is gone).
pub(crate) async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The next connection of a listener, or `None` once shutdown is signalled.
/// A failed accept (out of descriptors, say) is logged and retried after a
/// short pause.
pub(crate) async fn accept_until_shutdown(
    listener: &tokio::net::TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    what: &str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = wait_shutdown(shutdown) => return None,
        }
    }
}

/// SIGINT and SIGTERM, listened for from the moment this is created (so a
/// signal that arrives while the node starts is not lost).
pub struct ShutdownSignal {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    pub fn install() -> std::io::Result<ShutdownSignal> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(ShutdownSignal {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignal {})
    }

    /// Resolves when either signal arrives.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A node that is running.
pub struct Running {
    pub store: Store,
    pub listeners: BTreeMap<String, String>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    listen_file: std::path::PathBuf,
}

impl Running {
    /// Stop accepting, let connections finish their current command, close
    /// the log cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        // Each listener drains its own connections (bounded) before its
        // task ends; only then is the log closed.
        for t in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), t).await;
        }
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.close()).await??;
        let _ = std::fs::remove_file(&self.listen_file);
        Ok(())
    }
}

/// Create the data directory for the node's user only (0700), and make
/// everything the node creates in it (the store's files included) 0600 /
/// 0700 whatever umask it was started with. An existing directory that
/// others can read is left as it is, with a warning.
fn private_data_dir(dir: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(dir = %dir.display(), mode = format!("{:o}", mode & 0o777), "the data directory is open to other users; chmod 700 it");
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
    Ok(())
}

/// Open the store and start every listener of `cfg`.
pub async fn start(cfg: &Config) -> anyhow::Result<Running> {
    private_data_dir(&cfg.node.data_dir)?;
    let node_id = resolve_node_id(cfg)?;
    let db = cfg.db_path();
    let id2 = node_id.clone();
    let mut opts = store::wal_options(&id2);
    opts.direct_flush = cfg.node.direct_io;
    let store = tokio::task::spawn_blocking(move || Store::open(&db, &id2, opts))
        .await?
        .with_context(|| format!("opening the store in {}", cfg.db_path().display()))?;
    let s2 = store.clone();
    if tokio::task::spawn_blocking(move || crate::merkle::ensure(&s2))
        .await?
        .context("building the merkle tree")?
    {
        tracing::info!("merkle tree built from the views");
    }
    let rep = store.wal().recovery_report().clone();
    tracing::info!(node = %node_id, origin = %store.wal().local_origin(), order = rep.order_len, verified = rep.verified, unclean = rep.unclean_shutdown, "store open");
    let token = load_or_create_token(cfg)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut listeners = BTreeMap::new();
    let mut tasks = Vec::new();
    // Replicated settings over the file's, kept in step with the log.
    let settings = Arc::new(crate::settings::Settings::new(cfg));
    settings
        .refresh_if_changed(&store.views())
        .context("reading the replicated settings")?;
    tasks.push(tokio::spawn(crate::settings::follow(
        settings.clone(),
        store.clone(),
        shutdown_rx.clone(),
    )));

    let admin_l = TcpListener::bind(cfg.admin.listen)
        .await
        .with_context(|| format!("binding admin.listen {}", cfg.admin.listen))?;
    listeners.insert("admin".to_string(), format!("http://{}", admin_l.local_addr()?));

    let imap_l = TcpListener::bind(cfg.imap.listen)
        .await
        .with_context(|| format!("binding imap.listen {}", cfg.imap.listen))?;
    listeners.insert("imap".to_string(), imap_l.local_addr()?.to_string());
    let mirror = Arc::new(crate::repl::Mirror::default());
    let durability = crate::repl::Durability {
        mirror: mirror.clone(),
        cfg: Arc::new(cfg.mirror.clone()),
    };
    let imap_counters = Arc::new(crate::imap::Counters::default());
    let tls = crate::tls::server_config(
        cfg.imap.tls_cert.as_deref(),
        cfg.imap.tls_key.as_deref(),
        &cfg.node.data_dir,
        &cfg.lmtp.hostname(),
    )
    .context("setting up TLS for IMAP")?;
    let imap_shared = crate::imap::Shared::new(
        store.clone(),
        cfg.imap.clone(),
        settings.clone(),
        imap_counters.clone(),
        Some(tls),
        durability.clone(),
    );
    tasks.push(tokio::spawn(crate::imap::serve(
        imap_l,
        imap_shared.clone(),
        false,
        shutdown_rx.clone(),
    )));
    if let Some(addr) = cfg.imap.tls_listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding imap.tls_listen {addr}"))?;
        listeners.insert("imaps".to_string(), l.local_addr()?.to_string());
        tasks.push(tokio::spawn(crate::imap::serve(l, imap_shared.clone(), true, shutdown_rx.clone())));
    }

    let pop3_counters = Arc::new(crate::pop3::Counters::default());
    let pop3 = crate::pop3::Pop3::new(imap_shared.clone(), cfg.pop3.clone(), pop3_counters.clone());
    for (name, addr, implicit) in [("pop3", cfg.pop3.listen, false), ("pop3s", cfg.pop3.tls_listen, true)] {
        if let Some(addr) = addr {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding pop3.{} {addr}", if implicit { "tls_listen" } else { "listen" }))?;
            listeners.insert(name.to_string(), l.local_addr()?.to_string());
            tasks.push(tokio::spawn(crate::pop3::serve(l, pop3.clone(), implicit, shutdown_rx.clone())));
        }
    }

    let lmtp_l = TcpListener::bind(cfg.lmtp.listen)
        .await
        .with_context(|| format!("binding lmtp.listen {}", cfg.lmtp.listen))?;
    listeners.insert("lmtp".to_string(), lmtp_l.local_addr()?.to_string());
    let lmtp_counters = Arc::new(crate::lmtp::Counters::default());
    tasks.push(tokio::spawn(crate::lmtp::serve(
        lmtp_l,
        store.clone(),
        Arc::new(cfg.lmtp.clone()),
        settings.clone(),
        lmtp_counters.clone(),
        durability.clone(),
        shutdown_rx.clone(),
    )));

    if let Some(m) = crate::repl::quic::start(&cfg.mirror, &store, &cfg.node.data_dir, mirror.clone(), shutdown_rx.clone())
        .context("starting the mirror")?
    {
        listeners.insert("mirror".to_string(), format!("quic://{}", m.local_addr));
        tasks.extend(m.tasks);
        if let Some(secret) = cfg.mirror.secret_bytes()? {
            let _ = mirror.resync.set(crate::repl::resync::Dialer {
                data_dir: cfg.node.data_dir.clone(),
                secret: Arc::new(secret),
            });
        }
    }

    tasks.push(tokio::spawn(crate::repl::resync::scheduled(
        store.clone(),
        mirror.clone(),
        cfg.mirror.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::repl::resync::join::run(
        store.clone(),
        mirror.clone(),
        cfg.mirror.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::repl::resolve::run(
        store.clone(),
        cfg.mirror.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::repl::authority::run(
        store.clone(),
        mirror.clone(),
        shutdown_rx.clone(),
    )));
    let sidefiles = Arc::new(crate::sidefiles::SideFiles::default());
    tasks.push(tokio::spawn(crate::sidefiles::run(
        store.clone(),
        cfg.mirror.sync_dirs.dirs(),
        std::time::Duration::from_millis(cfg.mirror.sync_dirs_interval_ms),
        cfg.node.data_dir.clone(),
        sidefiles.clone(),
        shutdown_rx.clone(),
    )));
    let backups = Arc::new(crate::backup::Backups::new(cfg.backup.s3()));
    if let Some(dir) = &cfg.backup.to {
        tasks.push(tokio::spawn(crate::backup::run_continuous(
            backups.clone(),
            store.clone(),
            dir.clone(),
            std::time::Duration::from_millis(cfg.backup.interval_ms),
            shutdown_rx.clone(),
        )));
    }
    let retention = Arc::new(crate::retention::Retention::default());
    tasks.push(tokio::spawn(crate::retention::run(
        Arc::new(cfg.clone()),
        store.clone(),
        mirror.clone(),
        backups.clone(),
        retention.clone(),
        shutdown_rx.clone(),
    )));
    let mut registry = crate::metrics::Registry::default();
    if cfg.metrics.listen.is_some() {
        registry.register(Arc::new(crate::metrics::node::NodeMetrics {
            store: store.clone(),
            started: Instant::now(),
            role: format!("{:?}", cfg.mirror.mode).to_lowercase(),
        }));
        registry.register(crate::metrics::node::WalMetrics::attach(&store));
        registry.register(lmtp_counters.clone());
        registry.register(imap_counters.clone());
        if cfg.pop3.listen.is_some() || cfg.pop3.tls_listen.is_some() {
            registry.register(pop3_counters.clone());
        }
        registry.register(Arc::new(crate::metrics::node::MirrorMetrics {
            mirror: mirror.clone(),
            store: store.clone(),
        }));
        if !cfg.mirror.sync_dirs.is_empty() {
            registry.register(sidefiles.clone());
        }
    }
    let metrics_l = crate::metrics::http::bind(&cfg.metrics).await?;
    if let Some(b) = &metrics_l {
        listeners.insert("metrics".to_string(), format!("http://{}", b.addr));
    }

    let state = Arc::new(AdminState {
        store: store.clone(),
        token,
        started: Instant::now(),
        role: cfg.mirror.mode,
        listeners: listeners.clone(),
        lmtp: lmtp_counters,
        imap: imap_counters,
        pop3: (cfg.pop3.listen.is_some() || cfg.pop3.tls_listen.is_some()).then_some(pop3_counters),
        mirror,
        backups,
        data_dir: cfg.node.data_dir.clone(),
        settings,
        sidefiles,
        retention,
    });
    if let Some(b) = metrics_l {
        let history = Arc::new(crate::metrics::status::History::default());
        tasks.push(tokio::spawn(crate::metrics::status::sample(
            history.clone(),
            state.mirror.clone(),
            state.store.clone(),
            shutdown_rx.clone(),
        )));
        let source = crate::metrics::status::Source {
            admin: state.clone(),
            history,
            peers: crate::metrics::status::Peers {
                urls: cfg
                    .metrics
                    .peer_status
                    .iter()
                    .map(|u| u.trim_end_matches('/').to_string())
                    .collect(),
                token: cfg
                    .metrics
                    .peer_token_file
                    .as_deref()
                    .map(|p| crate::metrics::http::read_token("metrics.peer_token_file", p))
                    .transpose()?,
                client: reqwest::Client::new(),
            },
        };
        tasks.push(crate::metrics::http::serve(b, registry, Some(source), shutdown_rx.clone()));
    }
    let mut rx = shutdown_rx.clone();
    let app = admin::router(state);
    tasks.push(tokio::spawn(async move {
        let r = axum::serve(admin_l, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "admin endpoint failed");
        }
    }));
    let listen_file = cfg.node.data_dir.join(LISTEN_FILE);
    write_private(&listen_file, serde_json::to_string(&listeners)?.as_bytes())?;
    Ok(Running {
        store,
        listeners,
        shutdown,
        tasks,
        listen_file,
    })
}

/// `tandem serve`: run until a signal, then shut down cleanly.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let mut signal = ShutdownSignal::install().context("installing signal handlers")?;
    let running = start(&cfg).await?;
    println!(
        "tandem: node {} serving from {}",
        running.store.node_id(),
        cfg.node.data_dir.display()
    );
    for (name, addr) in &running.listeners {
        println!("tandem: {name} listening on {addr}");
    }
    // Every listener is bound and serving: tell the service manager
    // (systemd `Type=notify`; nothing when NOTIFY_SOCKET is not set).
    match crate::notify::notify(&format!("READY=1\nSTATUS=serving node {}", running.store.node_id())) {
        Ok(true) => tracing::info!("ready (told the service manager)"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "could not tell the service manager that the node is ready (NOTIFY_SOCKET)"),
    }
    signal.recv().await;
    tracing::info!("shutting down");
    if let Err(e) = crate::notify::notify("STOPPING=1") {
        tracing::warn!(error = %e, "could not tell the service manager that the node is stopping");
    }
    running.stop().await?;
    println!("tandem: stopped cleanly");
    Ok(())
}
