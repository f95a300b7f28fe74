//! TLS on real `distkv-server` processes: a 3-node cluster over mutual TLS, the refusals
//! an operator relies on (plaintext on a TLS port, missing or foreign or expired
//! certificates, client certificates on the peer port, TLS 1.1), the peer service kept
//! off the client port, start-up refusals of bad files, and certificate reload on SIGHUP.
//! Certificates are made by `distkv-server cert` in each test's temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use distkv_proto::v1::peer_client::PeerClient;
use distkv_proto::v1::{peer_request, PeerRequest, PingRequest};
use distkv_tests::{
    binary, connect, connect_tls, free_port, run_client, server_output,
    start_loopback_cluster_with, stderr, stdout, Server,
};
use tonic::transport::Channel;

/// Runs `distkv-server cert ARGS` and checks it succeeded.
fn cert(args: &[&str]) {
    let o = Command::new(binary("distkv-server"))
        .arg("cert")
        .args(args)
        .output()
        .expect("run distkv-server cert");
    assert!(o.status.success(), "cert {args:?}: {}", stderr(&o));
}

/// A CA, a node certificate for 127.0.0.1 and localhost, and client `alice`, in `dir`.
fn make_certs(dir: &Path) -> PathBuf {
    let d = dir.to_str().expect("UTF-8 path");
    cert(&["create-ca", "--certs-dir", d]);
    cert(&["create-node", "--certs-dir", d, "127.0.0.1", "localhost"]);
    cert(&["create-client", "--certs-dir", d, "alice"]);
    dir.to_path_buf()
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_string_lossy().into_owned()
}

/// The node flags for TLS with the certificates of `dir`.
fn node_tls(dir: &Path) -> Vec<String> {
    vec![
        "--tls-enabled".into(),
        "--tls-cert-file".into(),
        path(dir, "node.crt"),
        "--tls-key-file".into(),
        path(dir, "node.key"),
        "--tls-ca-file".into(),
        path(dir, "ca.crt"),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Waits until `server`'s log contains `text`.
fn wait_for_log(server: &Server, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log_text();
        if log.contains(text) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Peer.Call ping to `addr` over the channel `channel`.
async fn ping(channel: Channel) -> Result<(), tonic::Status> {
    PeerClient::new(channel)
        .call(PeerRequest {
            from_node: "intruder".into(),
            body: Some(peer_request::Body::Ping(PingRequest {})),
        })
        .await
        .map(|_| ())
}

/// A channel to `addr` over TLS trusting `ca`, showing `identity` if given.
async fn tls_channel(
    addr: &str,
    ca: PathBuf,
    identity: Option<(PathBuf, PathBuf)>,
) -> anyhow::Result<Channel> {
    let connector =
        distkv_network::tls::client_connector(&distkv_network::tls::ClientTlsOptions {
            ca: Some(ca),
            identity,
            server_name: None,
            insecure_skip_verify: false,
        })?;
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(connector))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_clients_replicates_over_mtls_and_refuses_strangers(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = make_certs(&dir.path().join("certs"));
    let other = make_certs(&dir.path().join("other-ca"));
    let flags = node_tls(&certs);
    std::fs::create_dir_all(dir.path().join("data"))?;
    // The admin port serves HTTPS with the node's certificate too.
    let nodes = tokio::task::block_in_place(|| {
        start_loopback_cluster_with(
            &dir.path().join("data"),
            &strs(&flags),
            &[("DISTKV_TLS__ADMIN", "true")],
        )
    })?;
    let health = https_get(&nodes[0].admin, &certs.join("ca.crt"), "/health/live").await?;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let plain = distkv_tests::http_get(&nodes[0].admin, "/health/live");
    assert!(
        !matches!(plain, Ok((200, _))),
        "plain HTTP was served on the TLS admin port"
    );

    // A write at ALL through one node is read at ALL through another: replication and
    // reads crossed the peer ports over mutual TLS.
    let put = tokio::task::block_in_place(|| {
        nodes[0].client(&["--consistency", "all", "put", "k", "over-tls"])
    });
    assert!(put.status.success(), "{}", stderr(&put));
    let get =
        tokio::task::block_in_place(|| nodes[2].client(&["--consistency", "all", "get", "k"]));
    assert!(get.status.success(), "{}", stderr(&get));
    assert_eq!(stdout(&get).trim(), "over-tls");

    // A plaintext client on the TLS client port: one clear line, and the node says why.
    let plain = tokio::task::block_in_place(|| run_client(&nodes[0].addr, &["get", "k"], None));
    assert_eq!(plain.status.code(), Some(3), "{}", stderr(&plain));
    let err = stderr(&plain);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--tls-enabled"), "{err}");
    let log = wait_for_log(&nodes[0], "plaintext HTTP/2 client");
    assert!(log.contains("plaintext HTTP/2 client"), "{log}");

    // A client that trusts another CA does not accept the node.
    let other_ca = path(&other, "ca.crt");
    let foreign = tokio::task::block_in_place(|| {
        run_client(
            &nodes[0].addr,
            &["--tls-enabled", "--tls-ca-file", &other_ca, "get", "k"],
            None,
        )
    });
    assert_eq!(foreign.status.code(), Some(3), "{}", stderr(&foreign));
    assert!(
        stderr(&foreign).contains("not signed by the CA"),
        "{}",
        stderr(&foreign)
    );

    // The peer port: a client certificate of the cluster's CA is refused...
    let ca = certs.join("ca.crt");
    let alice = Some((
        certs.join("client.alice.crt"),
        certs.join("client.alice.key"),
    ));
    let peer = &nodes[0].peer_addr;
    let refused = ping(tls_channel(peer, ca.clone(), alice).await?).await;
    assert!(
        refused.is_err(),
        "a client certificate opened the peer port"
    );
    let log = wait_for_log(&nodes[0], "not a DistKV node certificate");
    assert!(log.contains("not a DistKV node certificate"), "{log}");
    // ...as is no certificate, and a node certificate of another CA.
    let none = ping(tls_channel(peer, ca.clone(), None).await?).await;
    assert!(
        none.is_err(),
        "the peer port took a client without a certificate"
    );
    let foreign_node = Some((other.join("node.crt"), other.join("node.key")));
    let foreign = ping(tls_channel(peer, ca.clone(), foreign_node).await?).await;
    assert!(foreign.is_err(), "the peer port took another CA's node");
    let log = wait_for_log(&nodes[0], "UnknownIssuer");
    assert!(log.contains("UnknownIssuer"), "{log}");
    // A node certificate of the cluster opens it (the control).
    let node = Some((certs.join("node.crt"), certs.join("node.key")));
    ping(tls_channel(peer, ca.clone(), node.clone()).await?).await?;
    // The peer service is not on the client port, even with a node certificate.
    let on_client_port = ping(tls_channel(&nodes[0].addr, ca.clone(), node).await?).await;
    assert_eq!(
        on_client_port.map_err(|s| s.code()),
        Err(tonic::Code::Unimplemented)
    );

    // The load generator speaks TLS too.
    let ca_file = path(&certs, "ca.crt");
    let bench = tokio::task::block_in_place(|| {
        Command::new(binary("distkv-bench"))
            .args([
                "--tls-enabled",
                "--tls-ca-file",
                &ca_file,
                "--targets",
                &nodes[1].addr,
                "--ops",
                "50",
                "--clients",
                "2",
            ])
            .output()
    })?;
    assert!(bench.status.success(), "{}", stderr(&bench));

    // TLS 1.1 is refused, TLS 1.2 accepted (the control).
    if Command::new("openssl").arg("version").output().is_ok() {
        let s_client = |version: &str| {
            let mut child = Command::new("openssl")
                .args([
                    "s_client",
                    version,
                    "-cipher",
                    "DEFAULT:@SECLEVEL=0",
                    "-connect",
                    &nodes[0].addr,
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn openssl");
            drop(child.stdin.take());
            let o = child.wait_with_output().expect("openssl output");
            format!("{}{}", stdout(&o), stderr(&o))
        };
        // openssl names the version it offered even when the handshake failed; a
        // negotiated session prints "New, <version>, Cipher is <cipher>".
        let v11 = tokio::task::block_in_place(|| s_client("-tls1_1"));
        assert!(
            v11.contains("Cipher is (NONE)") && !v11.contains("New, TLSv1.1"),
            "TLS 1.1 was negotiated: {v11}"
        );
        let v12 = tokio::task::block_in_place(|| s_client("-tls1_2"));
        assert!(
            v12.contains("New, TLSv1.2"),
            "TLS 1.2 was not negotiated: {v12}"
        );
    } else {
        eprintln!("skipping the TLS 1.1 check: openssl is not installed");
    }
    Ok(())
}

/// Certificate files for a client whose certificate expired yesterday, signed by the CA
/// of `dir` (the tool cannot make one, so the test signs it with the same library).
fn expired_client(dir: &Path) -> (PathBuf, PathBuf) {
    let out = dir.join("expired");
    std::fs::create_dir_all(&out).expect("create dir");
    std::fs::copy(dir.join("ca.crt"), out.join("ca.crt")).expect("copy ca.crt");
    std::fs::copy(dir.join("ca.key"), out.join("ca.key")).expect("copy ca.key");
    let now = time::OffsetDateTime::now_utc();
    let validity = distkv_node::certs::Validity {
        not_before: now - time::Duration::days(30),
        not_after: now - time::Duration::days(1),
    };
    distkv_node::certs::create_client(&out, "old", validity, false).expect("sign");
    (out.join("client.old.crt"), out.join("client.old.key"))
}

/// Opens a TLS connection with `cert`/`key` as they are (no expiry check on this side)
/// and says whether the server accepted it: the handshake, then one read, which returns
/// the server's alert if it refused the certificate (TLS 1.3 refuses after the client's
/// half of the handshake).
async fn raw_handshake(addr: &str, ca: &Path, cert: &Path, key: &Path) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| e.to_string())?;
    let roots = distkv_network::tls::load_roots(ca).map_err(|e| e.0)?;
    let mut config = rustls::ClientConfig::builder_with_provider(distkv_network::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_auth_required_takes_only_valid_certificates_of_the_ca() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = make_certs(&dir.path().join("certs"));
    let other = make_certs(&dir.path().join("other-ca"));
    let mut flags = node_tls(&certs);
    flags.extend(["--tls-client-auth".to_string(), "required".to_string()]);
    let node = tokio::task::block_in_place(|| Server::start(&dir.path().join("n"), &strs(&flags)))?;
    let ca = path(&certs, "ca.crt");

    // No certificate: refused, with a line that says what to check.
    let o = tokio::task::block_in_place(|| {
        run_client(
            &node.addr,
            &["--tls-enabled", "--tls-ca-file", &ca, "get", "k"],
            None,
        )
    });
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("certificate"), "{}", stderr(&o));

    // Alice's certificate from the cluster's CA: served.
    let (alice_crt, alice_key) = (
        path(&certs, "client.alice.crt"),
        path(&certs, "client.alice.key"),
    );
    let with = |crt: &str, key: &str| {
        let args = [
            "--tls-enabled",
            "--tls-ca-file",
            &ca,
            "--tls-cert-file",
            crt,
            "--tls-key-file",
            key,
            "put",
            "k",
            "v",
        ];
        tokio::task::block_in_place(|| run_client(&node.addr, &args, None))
    };
    let o = with(&alice_crt, &alice_key);
    assert!(o.status.success(), "{}", stderr(&o));

    // Another CA's client: refused and logged.
    let o = with(
        &path(&other, "client.alice.crt"),
        &path(&other, "client.alice.key"),
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let log = wait_for_log(&node, "UnknownIssuer");
    assert!(log.contains("UnknownIssuer"), "{log}");

    // An expired certificate of the right CA: refused and logged; the same handshake
    // with a valid certificate is the control.
    let (old_crt, old_key) = expired_client(&certs);
    let refused = raw_handshake(&node.addr, &certs.join("ca.crt"), &old_crt, &old_key).await;
    assert!(
        refused.is_err(),
        "an expired client certificate was accepted"
    );
    let log = wait_for_log(&node, "xpired");
    assert!(log.contains("xpired"), "{log}");
    raw_handshake(
        &node.addr,
        &certs.join("ca.crt"),
        &certs.join("client.alice.crt"),
        &certs.join("client.alice.key"),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    // distkv-client itself refuses to present an expired certificate, naming it.
    let o = with(&old_crt.to_string_lossy(), &old_key.to_string_lossy());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("expired"), "{}", stderr(&o));
    Ok(())
}

#[test]
fn a_bad_certificate_or_key_stops_the_node_with_one_line_naming_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = make_certs(&dir.path().join("certs"));
    let other = make_certs(&dir.path().join("other"));
    let (old_crt, old_key) = expired_client(&certs);
    let missing = path(&certs, "nope.crt");
    let cases: Vec<(String, String, &str)> = vec![
        (missing.clone(), path(&certs, "node.key"), "nope.crt"),
        (
            path(&certs, "node.crt"),
            path(&other, "node.key"),
            "does not belong",
        ),
        (
            path(&certs, "client.alice.crt"),
            path(&certs, "client.alice.key"),
            "not a node certificate",
        ),
        (
            old_crt.to_string_lossy().into_owned(),
            old_key.to_string_lossy().into_owned(),
            "expired",
        ),
        (
            path(&certs, "ca.key"),
            path(&certs, "node.key"),
            "no certificate",
        ),
    ];
    for (crt, key, expected) in cases {
        let addr = format!("127.0.0.1:{}", free_port());
        let peer = format!("127.0.0.1:{}", free_port());
        let ca = path(&certs, "ca.crt");
        let args = [
            "--address",
            &addr,
            "--peer-address",
            &peer,
            "--data-dir",
            "data",
            "--tls-enabled",
            "--tls-cert-file",
            &crt,
            "--tls-key-file",
            &key,
            "--tls-ca-file",
            &ca,
        ];
        let o = server_output(&args, &[], dir.path());
        assert!(!o.status.success(), "started with {crt} / {key}");
        let err = stderr(&o);
        let last = err.trim().lines().last().unwrap_or("").to_string();
        assert!(last.contains(expected), "{crt}: {err}");
        assert!(last.contains("tls"), "{crt}: {err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_the_peer_service_is_only_on_the_peer_port() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = tokio::task::block_in_place(|| Server::start(&dir.path().join("n"), &[]))?;
    assert!(
        node.log_text().contains("TLS is off"),
        "no warning that traffic is unprotected"
    );
    // A TLS client on this plaintext port: one line saying so.
    let certs = make_certs(&dir.path().join("certs"));
    let ca = path(&certs, "ca.crt");
    let o = tokio::task::block_in_place(|| {
        run_client(
            &node.addr,
            &["--tls-enabled", "--tls-ca-file", &ca, "get", "k"],
            None,
        )
    });
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("answered in plaintext"), "{err}");
    let client_port = Channel::from_shared(format!("http://{}", node.addr))?
        .connect()
        .await?;
    let hostile = ping(client_port.clone()).await;
    assert_eq!(
        hostile.map_err(|s| s.code()),
        Err(tonic::Code::Unimplemented)
    );
    // Reflection lists only what clients may call.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(client_port)
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner();
    let answer = answers.message().await?.expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"distkv.v1.KeyValue".to_string()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("Peer")), "{names:?}");
    // The peer port answers the peer service (this node has no TLS: any caller can).
    let peer = Channel::from_shared(format!("http://{}", node.peer_addr))?
        .connect()
        .await?;
    ping(peer).await?;
    // ...and not the client API.
    let mut kv = connect(&node.peer_addr).await?;
    let status = kv
        .status(distkv_proto::v1::StatusRequest {})
        .await
        .map(|_| ())
        .map_err(|s| s.code());
    assert_eq!(status, Err(tonic::Code::Unimplemented));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_for_new_connections_and_keeps_open_ones() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let first = make_certs(&dir.path().join("first"));
    let second = make_certs(&dir.path().join("second"));
    // The node reads its files from `live/`; the test swaps what is in them.
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live)?;
    for f in ["node.crt", "node.key", "ca.crt"] {
        std::fs::copy(first.join(f), live.join(f))?;
    }
    let mut node = tokio::task::block_in_place(|| {
        Server::start(&dir.path().join("n"), &strs(&node_tls(&live)))
    })?;
    let mut open = connect_tls(&node.addr, &first.join("ca.crt"), None).await?;
    put(&mut open, "before").await?;

    // New certificates from a second CA; SIGHUP.
    for f in ["node.crt", "node.key", "ca.crt"] {
        std::fs::copy(second.join(f), live.join(f))?;
    }
    let pid = node.pid().expect("running");
    distkv_tests::send_signal(pid, "HUP")?;
    let log = wait_for_log(&node, "certificates reloaded");
    assert!(log.contains("certificates reloaded"), "{log}");
    // The open connection keeps working; new ones get the new certificate.
    put(&mut open, "after-on-the-old-connection").await?;
    assert!(
        connect_and_put(&node.addr, &first.join("ca.crt"))
            .await
            .is_err(),
        "a new connection still got the old certificate"
    );
    connect_and_put(&node.addr, &second.join("ca.crt")).await?;

    // A broken file: the reload fails, says why, and the current certificates stay.
    std::fs::write(live.join("node.crt"), "not a certificate")?;
    distkv_tests::send_signal(pid, "HUP")?;
    let log = wait_for_log(&node, "reload failed");
    assert!(log.contains("reload failed"), "{log}");
    connect_and_put(&node.addr, &second.join("ca.crt")).await?;
    node.signal("TERM")?;
    Ok(())
}

/// `GET path` over HTTPS/1.1 to `addr`, trusting `ca`; the whole response.
async fn https_get(addr: &str, ca: &Path, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let roots = distkv_network::tls::load_roots(ca)?;
    let mut config = rustls::ClientConfig::builder_with_provider(distkv_network::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut response)).await??;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

async fn put(
    client: &mut distkv_proto::v1::key_value_client::KeyValueClient<Channel>,
    value: &str,
) -> anyhow::Result<()> {
    client
        .put(distkv_proto::v1::PutRequest {
            key: b"k".to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        })
        .await?;
    Ok(())
}

async fn connect_and_put(addr: &str, ca: &Path) -> anyhow::Result<()> {
    let mut client = connect_tls(addr, ca, None).await?;
    put(&mut client, "new-connection").await
}
