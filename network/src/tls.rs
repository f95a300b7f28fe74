//! TLS for the client port, the peer port and the clients of both: rustls with the `ring`
//! provider, TLS 1.2 and 1.3 only, HTTP/2 negotiated by ALPN.
//!
//! Roles: a *node* certificate carries the URI SAN [`NODE_ROLE_URI`] (the certificate tool
//! sets it); the peer port accepts only node certificates from the cluster CA, in both
//! directions (mutual TLS). A *client* certificate from the same CA lacks that SAN, so it
//! opens the client port (when client authentication asks for one) but never the peer
//! port.
//!
//! Every loader names the file and the problem, so a node with a bad certificate stops at
//! start-up with one clear line. [`Reloadable`] holds the configuration new connections
//! use, so certificates can be replaced while open connections keep theirs.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// The URI subject-alternative name that marks a node certificate.
pub const NODE_ROLE_URI: &str = "urn:distkv:role:node";
/// Prefix of the URI SAN of a client certificate (followed by the client's name).
pub const CLIENT_ROLE_URI_PREFIX: &str = "urn:distkv:role:client:";

/// A TLS file or setting that cannot be used; the message names the file and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The crypto provider every configuration here uses (ring; never aws-lc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const ALPN_H2: &[u8] = b"h2";

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| {
        TlsError(format!(
            "cannot read the {what} {}: {e}; check the path and its permissions",
            path.display()
        ))
    })
}

/// The certificates of a PEM file, leaf first.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, "certificate file")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsError(format!(
                "certificate file {} is not valid PEM: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "certificate file {} holds no certificate (expected a PEM \"BEGIN CERTIFICATE\" block)",
            path.display()
        )));
    }
    for (i, cert) in certs.iter().enumerate() {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| {
            TlsError(format!(
                "certificate {} of {} is not a valid X.509 certificate: {e}",
                i + 1,
                path.display()
            ))
        })?;
        let validity = parsed.validity();
        let now = x509_parser::time::ASN1Time::now();
        if now > validity.not_after {
            return Err(TlsError(format!(
                "certificate {} of {} expired on {}; make a new one (distkv-server cert create-node/create-client/create-ca)",
                i + 1,
                path.display(),
                validity.not_after
            )));
        }
        if now < validity.not_before {
            return Err(TlsError(format!(
                "certificate {} of {} is not valid before {}; check this host's clock",
                i + 1,
                path.display(),
                validity.not_before
            )));
        }
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, "private key file")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        TlsError(format!(
            "private key file {} holds no usable private key: {e} (expected a PEM \"PRIVATE KEY\" block)",
            path.display()
        ))
    })
}

/// The trust anchors of a PEM file of CA certificates.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let certs = load_certs(path)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            TlsError(format!(
                "CA file {} holds a certificate that cannot be a trust anchor: {e}",
                path.display()
            ))
        })?;
    }
    Ok(Arc::new(roots))
}

/// Whether `cert` carries the node role.
pub fn is_node_certificate(cert: &CertificateDer<'_>) -> bool {
    uris(cert).iter().any(|u| u == NODE_ROLE_URI)
}

/// The URI subject-alternative names of `cert` (empty when it cannot be parsed).
fn uris(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// A certificate and its key, checked to belong together.
#[derive(Clone)]
pub struct Identity {
    /// The chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl Identity {
    /// Loads and checks a certificate and key pair.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Identity, TlsError> {
        let certs = load_certs(cert_file)?;
        let key = load_key(key_file)?;
        let signing = provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| {
                TlsError(format!(
                    "private key file {} holds a key rustls cannot use: {e}",
                    key_file.display()
                ))
            })?;
        let certified = rustls::sign::CertifiedKey::new(certs.clone(), signing);
        if let Err(e) = certified.keys_match() {
            return Err(TlsError(format!(
                "the key in {} does not belong to the certificate in {}: {e}",
                key_file.display(),
                cert_file.display()
            )));
        }
        Ok(Identity {
            certs,
            key: Arc::new(key),
        })
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

/// Who must show a certificate on the client port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A client certificate is asked for; one that is shown must chain to the CA.
    Optional,
    /// Every client must show a certificate from the CA.
    Required,
}

/// The files of a node's TLS set-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTlsFiles {
    /// The node certificate (PEM; leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster CA (PEM).
    pub ca: PathBuf,
    /// What the client port asks of clients.
    pub client_auth: ClientAuth,
}

/// The three configurations of a node: its client port, its peer port, and its calls to
/// peers.
pub struct NodeTls {
    /// The client port (client authentication per [`ClientAuth`]).
    pub client_port: Arc<ServerConfig>,
    /// The peer port: mutual TLS with node certificates only.
    pub peer_port: Arc<ServerConfig>,
    /// Calls to peers: present the node certificate; accept only node certificates.
    pub peer_client: Arc<ClientConfig>,
    /// The admin HTTP port: the client port's certificate and client authentication,
    /// speaking HTTP/1.1 as well as HTTP/2 (for scrapers and probes).
    pub admin_port: Arc<ServerConfig>,
}

impl NodeTls {
    /// Loads and checks every file; the node certificate must carry the node role.
    pub fn load(files: &NodeTlsFiles) -> Result<NodeTls, TlsError> {
        let identity = Identity::load(&files.cert, &files.key)?;
        if !is_node_certificate(&identity.certs[0]) {
            return Err(TlsError(format!(
                "certificate file {} is not a node certificate (it lacks the SAN {NODE_ROLE_URI}); make one with `distkv-server cert create-node`",
                files.cert.display()
            )));
        }
        let roots = load_roots(&files.ca)?;
        let p = provider();
        let bad_ca = |e: rustls::Error| {
            TlsError(format!(
                "CA file {} cannot verify certificates: {e}",
                files.ca.display()
            ))
        };
        let client_verifier: Option<Arc<dyn ClientCertVerifier>> = match files.client_auth {
            ClientAuth::None => None,
            ClientAuth::Optional => Some(
                WebPkiClientVerifier::builder_with_provider(roots.clone(), p.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| bad_ca(rustls::Error::General(e.to_string())))?,
            ),
            ClientAuth::Required => Some(
                WebPkiClientVerifier::builder_with_provider(roots.clone(), p.clone())
                    .build()
                    .map_err(|e| bad_ca(rustls::Error::General(e.to_string())))?,
            ),
        };
        let bad_cert = |e: rustls::Error| {
            TlsError(format!(
                "certificate {} with key {} cannot be served: {e}",
                files.cert.display(),
                files.key.display()
            ))
        };
        let builder = ServerConfig::builder_with_provider(p.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(bad_cert)?;
        let mut client_port = match client_verifier {
            None => builder.with_no_client_auth(),
            Some(v) => builder.with_client_cert_verifier(v),
        }
        .with_single_cert(identity.certs.clone(), identity.key())
        .map_err(bad_cert)?;
        let mut admin_port = client_port.clone();
        admin_port.alpn_protocols = vec![ALPN_H2.to_vec(), b"http/1.1".to_vec()];
        client_port.alpn_protocols = vec![ALPN_H2.to_vec()];

        let node_clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), p.clone())
            .build()
            .map_err(|e| bad_ca(rustls::Error::General(e.to_string())))?;
        let mut peer_port = ServerConfig::builder_with_provider(p.clone())
            .with_protocol_versions(VERSIONS)
            .map_err(bad_cert)?
            .with_client_cert_verifier(Arc::new(NodeClients(node_clients)))
            .with_single_cert(identity.certs.clone(), identity.key())
            .map_err(bad_cert)?;
        peer_port.alpn_protocols = vec![ALPN_H2.to_vec()];

        let node_servers = WebPkiServerVerifier::builder_with_provider(roots, p.clone())
            .build()
            .map_err(|e| bad_ca(rustls::Error::General(e.to_string())))?;
        let mut peer_client = ClientConfig::builder_with_provider(p)
            .with_protocol_versions(VERSIONS)
            .map_err(bad_cert)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NodeServers(node_servers)))
            .with_client_auth_cert(identity.certs.clone(), identity.key())
            .map_err(bad_cert)?;
        peer_client.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(NodeTls {
            client_port: Arc::new(client_port),
            peer_port: Arc::new(peer_port),
            peer_client: Arc::new(peer_client),
            admin_port: Arc::new(admin_port),
        })
    }
}

/// What a client (`distkv-client`, `distkv-bench`, tests) uses to reach a TLS port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsOptions {
    /// CA to trust (PEM). Required unless `insecure_skip_verify`.
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for ports that ask for one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Name to check the server's certificate against instead of the host dialled.
    pub server_name: Option<String>,
    /// Accept any server certificate (development only: anyone in the middle can read
    /// and change the traffic).
    pub insecure_skip_verify: bool,
}

/// A client configuration for `options`.
pub fn client_config(options: &ClientTlsOptions) -> Result<Arc<ClientConfig>, TlsError> {
    let p = provider();
    let builder = ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError(format!("cannot set up TLS: {e}")))?;
    let builder = if options.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(p)))
    } else {
        let ca = options.ca.as_ref().ok_or_else(|| {
            TlsError(
                "TLS needs the CA that signed the server's certificate: pass --tls-ca-file (or --tls-insecure-skip-verify for a test set-up)".to_string(),
            )
        })?;
        let roots = load_roots(ca)?;
        builder.with_root_certificates(roots)
    };
    let mut config = match &options.identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let id = Identity::load(cert, key)?;
            builder
                .with_client_auth_cert(id.certs.clone(), id.key())
                .map_err(|e| {
                    TlsError(format!(
                        "client certificate {} with key {} cannot be used: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
        }
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A connector for `options`: their client configuration, checking the server's
/// certificate against `options.server_name` when set.
pub fn client_connector(options: &ClientTlsOptions) -> Result<TlsConnector, TlsError> {
    let connector = TlsConnector::new(Reloadable::new(client_config(options)?));
    match &options.server_name {
        Some(name) => connector.with_server_name(name),
        None => Ok(connector),
    }
}

/// The peer port's client verifier: the cluster CA's WebPKI check, then the node role.
#[derive(Debug)]
struct NodeClients(Arc<dyn ClientCertVerifier>);

/// The peer client's server verifier: the cluster CA's WebPKI check (host name
/// included), then the node role.
#[derive(Debug)]
struct NodeServers(Arc<WebPkiServerVerifier>);

fn not_a_node() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(io::Error::other(format!(
            "not a DistKV node certificate (no SAN {NODE_ROLE_URI}): only nodes may use the peer port"
        ))),
    )))
}

impl ClientCertVerifier for NodeClients {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        if !is_node_certificate(end_entity) {
            return Err(not_a_node());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl ServerCertVerifier for NodeServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if !is_node_certificate(end_entity) {
            return Err(not_a_node());
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any server certificate but still checks the handshake signatures (so the
/// connection is at least to the holder of the certificate's key).
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The configuration new connections use; replacing it leaves open connections alone.
pub struct Reloadable<T>(RwLock<Arc<T>>);

impl<T> Reloadable<T> {
    /// Holds `value`.
    pub fn new(value: Arc<T>) -> Arc<Self> {
        Arc::new(Reloadable(RwLock::new(value)))
    }

    /// What the next connection uses.
    pub fn current(&self) -> Arc<T> {
        self.0.read().clone()
    }

    /// Replaces it for connections made from now on.
    pub fn replace(&self, value: Arc<T>) {
        *self.0.write() = value;
    }
}

impl<T> fmt::Debug for Reloadable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reloadable")
    }
}

/// A tonic connector that dials TCP and speaks TLS with the current client configuration.
/// The server's certificate is checked against `server_name` when set, else against the
/// host of the address dialled.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<Reloadable<ClientConfig>>,
    server_name: Option<ServerName<'static>>,
    handshake_timeout: Duration,
}

impl TlsConnector {
    /// A connector with `config`, checking certificates against the host dialled.
    pub fn new(config: Arc<Reloadable<ClientConfig>>) -> Self {
        TlsConnector {
            config,
            server_name: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// Checks the server's certificate against `name` instead of the host dialled.
    pub fn with_server_name(mut self, name: &str) -> Result<Self, TlsError> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| TlsError(format!("invalid TLS server name {name:?}: {e}")))?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// Connects to `host:port` (`host` may be a bracketed IPv6 address).
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((bare, port)).await?;
        tcp.set_nodelay(true)?;
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(bare.to_string()).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{bare} is not a valid TLS server name: {e}"),
                )
            })?,
        };
        let connector = tokio_rustls::TlsConnector::from(self.config.current());
        match tokio::time::timeout(self.handshake_timeout, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(explain_client_handshake(e)),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "TLS handshake with {host}:{port} took longer than {:?}",
                    self.handshake_timeout
                ),
            )),
        }
    }
}

/// Adds what to do to the common handshake failures.
fn explain_client_handshake(e: io::Error) -> io::Error {
    let text = e.to_string();
    let hint = if text.contains("InvalidContentType") || text.contains("corrupt message") {
        "; the server answered in plaintext: it has no TLS on this port (drop --tls-enabled, or enable TLS on the node)"
    } else if text.contains("UnknownIssuer") || text.contains("BadSignature") {
        "; the server's certificate was not signed by the CA given (check --tls-ca-file)"
    } else if text.contains("NotValidForName") {
        "; the server's certificate does not name the address dialled (use the name it was made for, or --tls-server-name)"
    } else if text.contains("CertificateRequired") || text.contains("certificate required") {
        "; the server requires a client certificate (pass --tls-cert-file and --tls-key-file)"
    } else if text.contains("Expired") {
        "; a certificate has expired: make a new one"
    } else {
        ""
    };
    io::Error::new(e.kind(), format!("TLS handshake failed: {text}{hint}"))
}

impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{uri} has no host"))
            })?;
            let port = uri.port_u16().unwrap_or(443);
            let stream = this.connect(host, port).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// The expiry time of the first certificate of a PEM file, for logs and `cert list`.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let secs = parsed.validity().not_after.timestamp();
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}
