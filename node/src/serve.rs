//! One node process: the engine thread, the transport, the HTTP server, wired together and
//! run until Ctrl-C or SIGTERM.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chorus_aggregate::EventStore;
use tracing::{error, info};

use crate::application::Application;
use crate::cli::{say, shutdown_signal, tokio_runtime};
use crate::config::{self, NodeConfig, hex, load_or_create_key};
use crate::{admission, http, joining, peer_reads, queues, runtime, transport};

pub fn run_node(application: &Application, path: &Path, join: Option<&str>) -> Result<(), String> {
    let mut checked = NodeConfig::load(path).map_err(|error| error.to_string())?;
    let key = load_or_create_key(&checked.config.data_dir).map_err(|error| error.to_string())?;
    let runtime = tokio_runtime()?;
    runtime.block_on(async move {
        joining::learn_peers(&mut checked, join).await?;
        let addresses = transport::AddressBook::new(&checked.peers);
        let (swarm, p2p) = transport::start(key.to_bytes(), checked.listen.clone(), &checked.peers)
            .await
            .map_err(|error| error.to_string())?;
        // Our own address too: a joiner that asks us learns it with the others'.
        addresses.insert(
            chorus_consensus::PeerId(key.verifying_key().to_bytes()),
            p2p.clone(),
        );
        let (listener, http) = bind_http(checked.http).await?;
        let tls = tls_acceptor(&checked.config)?;
        let (inputs, input_receiver) = queues::EngineInputs::new(queues::ENGINE_INPUTS_MAX);
        let (outbound, outbound_receiver) =
            queues::Outbound::new(queues::OUTBOUND_MAX, std::sync::Arc::clone(&inputs.drops));
        // The engine thread publishes its store's head there; subscriptions wait on it.
        let (head, feed) = crate::feed::Feed::new(0);
        let (engine_thread, store) = spawn_engine(
            application,
            &checked,
            &key,
            (input_receiver, outbound, head),
        )?;
        // The application's read models, on a thread of their own over the same store.
        let starter = application.clone();
        let hosted =
            crate::projections::spawn(store, move |store| starter.start_projections(store))?;
        let (reads, reads_receiver) = peer_reads::PeerReads::new();
        tokio::spawn(transport::run(
            swarm,
            addresses.clone(),
            outbound_receiver,
            reads_receiver,
            inputs.clone(),
        ));
        let scheme = if tls.is_some() { "https" } else { "http" };
        say(&format!(
            "node {} p2p {p2p} http {scheme}://{http}",
            hex(&key.verifying_key().to_bytes()),
        ));
        info!(%http, %p2p, "node running");
        let router = http::router(
            inputs,
            (feed, hosted),
            checked.access.clone(),
            http::Network { addresses, reads },
        );
        serve_until_signal(listener, router, tls).await;
        // The engine thread ends when every input sender is gone (the tasks holding them stop
        // with the runtime); each input was made durable as it was handled.
        drop(engine_thread);
        Ok(())
    })
}

/// Binds the HTTP API's address (port 0 picks one); returns the listener and its address.
async fn bind_http(
    address: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr), String> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|error| format!("cannot listen on {address}: {error}"))?;
    let bound = listener
        .local_addr()
        .map_err(|error| format!("http address: {error}"))?;
    Ok((listener, bound))
}

/// Serves the HTTP API until Ctrl-C or SIGTERM. On a signal the server stops taking
/// connections and finishes open requests, but a command waiting for agreement can wait
/// long: they get `SHUTDOWN_GRACE`.
async fn serve_until_signal(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let served = http::serve(listener, router, tls, shutdown_signal());
    let grace = async {
        shutdown_signal().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = served => {}
        () = grace => info!("open requests dropped at shutdown"),
    }
}

/// Starts the engine thread and waits until the engine is built there.
fn spawn_engine(
    application: &Application,
    checked: &config::Checked,
    key: &ed25519_dalek::SigningKey,
    ends: (
        queues::EngineReceiver,
        queues::Outbound,
        crate::feed::HeadSender,
    ),
) -> Result<(std::thread::JoinHandle<()>, Arc<EventStore>), String> {
    // The engine lives on its own thread (its store blocks on fsync), built there: it
    // holds process managers, which need not be `Send`.
    let (started, startup) = std::sync::mpsc::sync_channel(1);
    let engine_checked = checked.clone();
    let engine_key = key.clone();
    let application = application.clone();
    let tick_interval = Duration::from_millis(checked.config.gossip_interval_ms);
    let engine_thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            let policy = match admission::Policy::load(&engine_checked) {
                Ok(policy) => policy,
                Err(error) => {
                    let _ = started.send(Err(format!("admission policy: {error}")));
                    return;
                }
            };
            let engine =
                match runtime::start_engine(&engine_checked, &engine_key, &application, &policy) {
                    Ok(engine) => {
                        let _ = started.send(Ok(engine.shared_store()));
                        engine
                    }
                    Err(error) => {
                        let _ = started.send(Err(error.to_string()));
                        return;
                    }
                };
            if let Err(error) =
                runtime::run_engine(engine, ends, &application, (tick_interval, policy))
            {
                error!(%error, "the engine stopped");
                std::process::exit(2);
            }
        })
        .map_err(|error| format!("cannot start the engine thread: {error}"))?;
    let store = startup
        .recv()
        .map_err(|_| "the engine thread died while starting".to_owned())??;
    Ok((engine_thread, store))
}

/// How long a stopping node lets open HTTP requests finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The TLS acceptor of the HTTP API, if the configuration names a certificate and key.
fn tls_acceptor(config: &NodeConfig) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(certificate), Some(key)) = (&config.tls_certificate, &config.tls_key) else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|error| format!("{}: {error}", certificate.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|error| format!("{}: {error}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|error| format!("{}: {error}", certificate.display()))?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))))
}
