//! What the TLS tests stand on: a test CA made with rcgen (no key is checked in), HTTPS servers
//! behind it (optionally asking for a client certificate), a second SecantusDB speaking TLS, and
//! gateway settings built by hand for the tests whose gateway must fail to start.

use std::{
    collections::HashMap,
    net::TcpListener as StdListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use worker_api_gateway::{config::Settings, startup::Application};

use crate::helpers::{env, key_file, unique};

/// A certificate and its key, as files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Issued {
    /// Certificate then key in one file, the way MongoDB's `tlsCertificateKeyFile` wants them.
    pub fn combined(&self) -> PathBuf {
        let path = self.cert.with_extension("combined.pem");
        let pem = [std::fs::read(&self.cert).expect("cert written"), std::fs::read(&self.key).expect("key written")];
        std::fs::write(&path, pem.concat()).expect("temp dir is writable");
        path
    }
}

/// A test CA in a folder of its own, issuing server and client certificates.
pub struct Pki {
    pub dir: PathBuf,
    /// The CA certificate, PEM: what a client must be told to trust.
    pub ca_file: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(&format!("pki_{name}")));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, format!("worker-api-gateway {name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA certificate");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("temp dir is writable");
        Self { dir, ca_file, ca }
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self, stem: &str) -> Issued {
        issue(&self.ca, &self.dir, stem, &["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate.
    pub fn client(&self, stem: &str) -> Issued {
        issue(&self.ca, &self.dir, stem, &["worker-api-gateway"], ExtendedKeyUsagePurpose::ClientAuth)
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("the CA certificate parses");
        roots
    }
}

/// A client certificate signed by the CA of `scripts/services.sh` (`SERVICES_TLS_CA`, its key
/// beside it), which the shared RabbitMQ's TLS listener verifies client certificates against.
pub fn services_client_cert(dir: &Path) -> Issued {
    let ca_file = PathBuf::from(env("SERVICES_TLS_CA"));
    let ca_pem = std::fs::read_to_string(&ca_file).expect("services CA readable");
    let key_pem = std::fs::read_to_string(ca_file.with_file_name("ca.key")).expect("services CA key readable (root)");
    let key = KeyPair::from_pem(&key_pem).expect("services CA key parses");
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).expect("services CA parses");
    issue(&issuer, dir, "services-client", &["worker-api-gateway"], ExtendedKeyUsagePurpose::ClientAuth)
}

fn issue(
    issuer: &Issuer<'_, KeyPair>,
    dir: &Path,
    stem: &str,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> Issued {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("names");
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, issuer).expect("certificate");
    let issued = Issued { cert: dir.join(format!("{stem}.pem")), key: dir.join(format!("{stem}.key")) };
    std::fs::write(&issued.cert, cert.pem()).expect("temp dir is writable");
    std::fs::write(&issued.key, key.serialize_pem()).expect("temp dir is writable");
    issued
}

/// Serves `app` over HTTPS with a certificate from `pki`; with `client_certs`, the handshake
/// requires a client certificate issued by the same CA. Answers `https://127.0.0.1:PORT`.
pub async fn https_server(app: axum::Router, pki: &Pki, client_certs: bool) -> String {
    let issued = pki.server(&unique("server"));
    let certs = worker_api_gateway::tls::read_certs(&issued.cert).expect("server cert");
    let key = worker_api_gateway::tls::read_key(&issued.key).expect("server key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().expect("TLS");
    let builder = if client_certs {
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(pki.roots()), provider)
            .build()
            .expect("client verifier");
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(certs, key).expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = tcp.local_addr().expect("addr").port();
    let listener = worker_api_gateway::tls::TlsListener::new(tcp, Arc::new(config).into());
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("https://127.0.0.1:{port}")
}

/// A second SecantusDB, TLS only, on a port and in a storage folder of its own; killed on drop.
pub struct TlsMongo {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl TlsMongo {
    /// Started with the server certificate from `pki`; `require_client_cert` rejects clients
    /// without a certificate from the same CA. Waits until the port accepts connections.
    pub async fn start(pki: &Pki, require_client_cert: bool) -> Self {
        let dir = std::env::temp_dir().join(unique("secantus_tls"));
        std::fs::create_dir_all(dir.join("data")).expect("temp dir is writable");
        let config = dir.join("secantusd.toml");
        std::fs::write(&config, "# empty: every setting is a flag\n").expect("temp dir is writable");
        let server = pki.server("mongo-server");
        let port = StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let log = std::fs::File::create(dir.join("secantus.log")).expect("log file");
        let mut command = Command::new(PathBuf::from(env("SERVICES_DIR")).join("venv/bin/secantusd-py"));
        command
            .arg("--config")
            .arg(&config)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--storage-path"])
            .arg(dir.join("data"))
            .arg("--tls-cert-file")
            .arg(&server.cert)
            .arg("--tls-key-file")
            .arg(&server.key)
            .arg("--tls-ca-file")
            .arg(&pki.ca_file);
        if require_client_cert {
            command.arg("--tls-require-client-cert");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("secantusd-py starts (scripts/services.sh installs it)");
        let mongo = Self { port, child, dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            let log = std::fs::read_to_string(mongo.dir.join("secantus.log")).unwrap_or_default();
            assert!(tokio::time::Instant::now() < deadline, "SecantusDB with TLS did not listen within 60 s:\n{log}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        mongo
    }
}

impl Drop for TlsMongo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Settings for a gateway on port 0 against the test services (as `spawn_app_with` makes them),
/// with `extra` on top.
pub fn gateway_settings(extra: &[(&str, String)]) -> (Settings, String) {
    let database = unique("tls");
    let mut vars: HashMap<String, String> = HashMap::from([
        ("PORT".into(), "0".into()),
        ("HOST".into(), "127.0.0.1".into()),
        ("MONGODB_URI".into(), env("MONGODB_URI")),
        ("MONGODB_DATABASE".into(), database.clone()),
        ("MONGODB_MAX_POOL_SIZE".into(), "4".into()),
        ("MONGODB_TIMEOUT_MS".into(), "3000".into()),
        ("RABBITMQ_URL".into(), env("RABBITMQ_URL")),
        ("RABBITMQ_EXCHANGE".into(), unique("tls")),
        ("TOPICS_DIR".into(), format!("{}/topics", env!("CARGO_MANIFEST_DIR"))),
        ("API_KEYS_FILE".into(), key_file("").display().to_string()),
    ]);
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    (Settings::from_vars(&vars).expect("test settings are valid"), database)
}

/// The error `Application::build` stops with; panics if it starts.
pub async fn build_error(settings: Settings) -> String {
    match tokio::time::timeout(Duration::from_secs(30), Application::build(settings)).await {
        Err(_) => panic!("Application::build neither started nor failed within 30 s"),
        Ok(Ok(_)) => panic!("the gateway started; it should have refused to"),
        Ok(Err(e)) => format!("{e:#}"),
    }
}

/// Drops a database on the shared MongoDB-wire server (what a failed build may have created).
pub async fn drop_database(name: &str) {
    if let Ok(client) = mongodb::Client::with_uri_str(env("MONGODB_URI")).await {
        let _ = client.database(name).drop().await;
    }
}
