//! Building and running the gateway: connect the store, load the topics, declare the broker,
//! bind the listener (port 0 works, for tests), then serve until the stop token fires and shut
//! down in order: stop accepting, stop consuming, let in-flight work finish, exit.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    broker::{Broker, ConsumerSet, DeadLetterRecorder, RabbitBroker, Topology, rabbit_consumers},
    camunda::{CamundaClient, Poller, Reporter},
    config::Settings,
    dispatch::Dispatcher,
    events::Events,
    http::{AppState, router},
    intake::Intake,
    metrics::Metrics,
    relay::Relay,
    store::{MongoStore, StoreHealth, TaskStore},
    topics::{NativeDeps, NovaPublicacao, Registry, SpecDefaults},
};

pub struct Application {
    listener: TcpListener,
    /// Set when `TLS_CERT_FILE` is: the API speaks HTTPS only.
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: AppState,
    broker: RabbitBroker,
    dispatcher: Dispatcher,
    reporter: Option<Reporter>,
    stop: CancellationToken,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        tracing::info!(
            mongodb = %settings.mongodb.uri.redacted_uri(),
            rabbitmq = %settings.rabbitmq.url.redacted_uri(),
            exchange = %settings.rabbitmq.exchange,
            mode = ?settings.mode,
            "starting"
        );
        let store = MongoStore::connect(&settings.mongodb).await?;
        store.ensure_indexes().await.map_err(|e| match store.tls_failure() {
            Some(tls) => anyhow::anyhow!("MongoDB at {tls}"),
            None => anyhow::anyhow!("MongoDB at MONGODB_URI: {e}"),
        })?;
        store.measure_clock().await.map_err(|e| anyhow::anyhow!("MongoDB at MONGODB_URI: {e}"))?;
        store.ensure_dead_letter_indexes().await.map_err(|e| anyhow::anyhow!("MongoDB at MONGODB_URI: {e}"))?;
        // Handlers follow redirects only within their URL's origin (topics::redirect_policy).
        // Trusting the system roots plus CA_BUNDLE_FILE (crate::tls).
        let tls_client = || crate::tls::http_client_builder(&settings.tls, None).map_err(anyhow::Error::msg);
        let http = tls_client()?.redirect(crate::topics::redirect_policy()).build()?;
        let http2 = tls_client()?.redirect(crate::topics::redirect_policy()).http2_prior_knowledge().build()?;
        let deps = NativeDeps { database: store.database().clone(), http, http2, tls: settings.tls.clone() };
        let defaults = SpecDefaults { timeout: settings.task_timeout, max_attempts: settings.task_retry_limit };
        let registry = Registry::load(&settings.topics_dir, defaults, &deps)?;
        if registry.get("nova_publicacao").is_some() {
            NovaPublicacao::new(store.database()).ensure_indexes().await?;
        }
        tracing::info!(topics = ?registry.names().collect::<Vec<_>>(), "topics loaded");

        let topology =
            Topology { exchange: settings.rabbitmq.exchange.clone(), delivery_limit: settings.rabbitmq.delivery_limit };
        let broker =
            RabbitBroker::new(settings.rabbitmq.url.clone(), topology, registry.names().map(str::to_owned).collect())
                .with_tls(crate::tls::amqp_tls_config(&settings.tls).map_err(anyhow::Error::msg)?)
                .with_policy(settings.rabbitmq.consumers);
        // An amqps:// peer whose certificate is not trusted is a configuration error: stop here,
        // saying so, rather than retry for ever in the background.
        broker.check_tls().await.map_err(anyhow::Error::msg)?;
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        // One change stream per process feeds /events and status waits; a process that serves
        // no API watches nothing.
        let events = if settings.mode.serves_api() {
            Events::start(store.database().clone(), settings.events.clone(), stop.child_token()).await
        } else {
            Events::disabled()
        };
        // A store that cannot commit a majority write turns /health unhealthy (store::health).
        let store_health =
            StoreHealth::start(store.database().clone(), settings.mongodb.write_timeout, stop.child_token());
        let store: Arc<dyn TaskStore> = Arc::new(store);
        let mut dispatcher =
            Dispatcher::new(store.clone(), registry.clone(), metrics.clone(), settings.limits, stop.child_token());
        let camunda = match &settings.camunda {
            Some(c) => {
                tracing::info!(
                    camunda = %crate::config::redact_uri(&c.url),
                    "report mode: outcomes are reported to Camunda"
                );
                Some(CamundaClient::new(c, &settings.tls)?)
            }
            None => None,
        };
        let reporter = camunda
            .clone()
            .zip(settings.camunda.as_ref())
            .map(|(client, c)| Reporter::new(client, store.clone(), registry.clone(), metrics.clone(), c.report));
        if let Some(reporter) = &reporter {
            dispatcher = dispatcher.with_reporter(reporter.clone());
        }
        let broker_handle: Arc<dyn Broker> = Arc::new(broker.clone());
        let intake = Intake::start(store.clone(), broker_handle.clone(), metrics.clone(), settings.submit_batch_max);
        let addr = SocketAddr::new(settings.host, settings.port);
        let listener =
            TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot bind {addr} (HOST/PORT): {e}"))?;
        let tls = settings.tls.server.as_ref().map(crate::tls::acceptor).transpose().map_err(anyhow::Error::msg)?;
        let auth = crate::auth::Auth::new(&settings.auth).map_err(|e| anyhow::anyhow!("API_KEYS_FILE: {e}"))?;
        if auth.mode() == crate::auth::AuthMode::Open {
            tracing::warn!("AUTH_MODE=open: every route answers anyone who can reach this port, with no API key");
        }
        let (store_for_statistics, settings_statistics) = (store.clone(), settings.statistics);
        let state = AppState {
            store,
            broker: broker_handle,
            registry,
            metrics,
            settings: Arc::new(settings),
            started: Instant::now(),
            camunda,
            intake,
            auth,
            events,
            statistics: crate::statistics::StatisticsCache::new(store_for_statistics, settings_statistics),
            store_health,
        };
        Ok(Self { listener, tls, state, broker, dispatcher, reporter, stop })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Cancelling this token starts a graceful shutdown.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self { listener, tls, state, broker, dispatcher, reporter, stop } = self;
        let settings = state.settings.clone();
        let consumers = ConsumerSet {
            topics: if settings.mode.consumes() { rabbit_consumers(&state.registry) } else { Vec::new() },
            handler: Arc::new(dispatcher.clone()),
            dead_letters: Some(Arc::new(DeadLetterRecorder::new(
                state.store.clone(),
                state.metrics.clone(),
                state.registry.names().map(str::to_owned),
                settings.rabbitmq.consumers.dead_letter_retention,
            ))),
            metrics: state.metrics.clone(),
        };
        if settings.mode.serves_api() {
            state.statistics.warm();
        }
        let broker_task = tokio::spawn(broker.run(consumers, stop.clone(), settings.shutdown_grace));
        let relay = Relay {
            store: state.store.clone(),
            broker: state.broker.clone() as Arc<dyn Broker>,
            metrics: state.metrics.clone(),
            interval: settings.relay_interval,
            reporter,
            resend: Some(crate::resend::Resender::new(
                state.store.clone(),
                state.broker.clone(),
                state.registry.names().map(str::to_owned),
                settings.resend.clone(),
                state.metrics.clone(),
            )),
        };
        let relay_task = tokio::spawn(relay.run(stop.clone()));
        // Finished tasks past their retention are marked for the store's TTL index to delete.
        tokio::spawn(
            crate::retention::RetentionSweep {
                store: state.store.clone(),
                registry: state.registry.clone(),
                settings: settings.retention,
            }
            .run(stop.clone()),
        );
        let poller_task = match (&state.camunda, &settings.camunda, settings.mode.consumes()) {
            (Some(client), Some(c), true) => Some(tokio::spawn(
                Poller {
                    client: client.clone(),
                    store: state.store.clone(),
                    broker: state.broker.clone(),
                    metrics: state.metrics.clone(),
                    registry: state.registry.clone(),
                    limits: settings.limits,
                    worker_id: c.worker_id.clone(),
                    replica: bson::oid::ObjectId::new().to_hex(),
                }
                .run(stop.clone()),
            )),
            _ => None,
        };
        // The handler is installed here, before the port answers, so a SIGHUP never finds the
        // process without one (its default action ends the process).
        #[cfg(unix)]
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        #[cfg(unix)]
        tokio::spawn(reload_keys_on_sighup(state.auth.clone(), hangups, stop.clone()));
        tracing::info!(port = listener.local_addr().map(|a| a.port()).unwrap_or(0), https = tls.is_some(), "listening");
        let http_stop = stop.clone();
        let intake = state.intake.clone();
        let metrics = state.metrics.clone();
        match tls {
            Some(acceptor) => {
                let listener = crate::tls::TlsListener::new(listener, acceptor);
                crate::guard::serve(listener, router(state), &settings.guard, metrics, http_stop).await;
            }
            None => crate::guard::serve(listener, router(state), &settings.guard, metrics, http_stop).await,
        }
        // HTTP has stopped accepting; the poller unlocks what never started, consumers drain
        // (storing what was published straight to the exchange), the intake settles what it owes,
        // the relay stops.
        if let Some(poller) = poller_task {
            let _ = poller.await;
        }
        intake.settle(settings.shutdown_grace).await;
        let _ = broker_task.await;
        dispatcher.release_in_flight().await;
        let _ = relay_task.await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Reads the API key file again on every SIGHUP, until `stop`; requests in flight meanwhile see
/// the old keys or the new ones. A bad file is logged and the keys in use stay.
#[cfg(unix)]
async fn reload_keys_on_sighup(
    auth: crate::auth::Auth,
    hangups: Option<tokio::signal::unix::Signal>,
    stop: CancellationToken,
) {
    let Some(mut hangups) = hangups else { return };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hangups.recv() => match auth.reload() {
                Ok(keys) => tracing::info!(keys, "SIGHUP: API keys reloaded"),
                Err(error) => tracing::error!(%error, "SIGHUP: API key file not reloaded; the keys in use stay"),
            },
        }
    }
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
