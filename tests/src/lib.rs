//! Harness for black-box tests: start real `distkv-server` processes on free loopback
//! ports, talk to them over gRPC or through `distkv-client`, and stop them with signals.
//!
//! Every process started here is killed when its [`Server`] is dropped, so a failing test
//! leaves nothing running.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod artifacts;
pub use artifacts::plugin_library;
use distkv_proto::v1::key_value_client::KeyValueClient;
use distkv_proto::v1::StatusRequest;
use tonic::transport::Channel;

/// Path of a binary of the workspace (`distkv-server`, `distkv-client`, `distkv-bench`). Under
/// `cargo test` the binaries are brought up to date once per test process (a no-op
/// when `cargo test --workspace` already built them), so a test never runs a stale one.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = target_dir();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").ok();
        let missing = ["distkv-server", "distkv-client", "distkv-bench"]
            .iter()
            .any(|b| !dir.join(b).exists());
        if cargo.is_some() || missing {
            let mut cmd = Command::new(cargo.unwrap_or_else(|| "cargo".to_string()));
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "distkv-node",
                "--bins",
                "-p",
                "distkv-benches",
                "--bin",
                "distkv-bench",
            ]);
            if dir.file_name().is_some_and(|p| p == "release") {
                cmd.arg("--release");
            }
            let status = cmd
                .status()
                .expect("run cargo build for the distkv binaries");
            assert!(
                status.success(),
                "cargo build of distkv-server, distkv-client and distkv-bench failed"
            );
        }
    });
    dir.join(name)
}

/// `target/<profile>`: the directory holding this test's `deps/` folder.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let deps = exe.parent().expect("test executable lives in a directory");
    deps.parent().expect("deps/ has a parent").to_path_buf()
}

/// A free TCP port on 127.0.0.1 (free when asked; the OS may reuse it later, which the
/// short window between this call and the server's bind makes unlikely).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local address").port()
}

/// A running `distkv-server` process.
pub struct Server {
    child: Option<Child>,
    /// `127.0.0.1:PORT` it listens on for clients.
    pub addr: String,
    /// `HOST:PORT` it listens on for peers (what the other nodes' seed lists name).
    pub peer_addr: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// `127.0.0.1:PORT` of its admin HTTP port (`/metrics`, `/health/*`): a free port
    /// given as `DISTKV_ADMIN_ADDRESS`, so that the default (client port + 2000) never
    /// collides between tests; a test's own `--admin-address` or env wins over it.
    pub admin: String,
    /// Its arguments after `--address` and `--data-dir` (reused by [`Server::restart`]).
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
    netns: Option<String>,
}

/// The TLS flags among a node's arguments: `(ca, Some((cert, key)))` when it serves TLS.
fn tls_of(args: &[String]) -> Option<(PathBuf, Option<(PathBuf, PathBuf)>)> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    if !args.iter().any(|a| a == "--tls-enabled") {
        return None;
    }
    let ca = value("--tls-ca-file")?;
    Some((ca, value("--tls-cert-file").zip(value("--tls-key-file"))))
}

impl Server {
    /// Starts a node on a free port with its data in `data_dir`, plus `args`, and waits
    /// until it answers.
    pub fn start(data_dir: &Path, args: &[&str]) -> Result<Server> {
        Self::start_with_env(data_dir, args, &[])
    }

    /// Like [`Server::start`], with extra environment variables.
    pub fn start_with_env(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<Server> {
        let addr = format!("127.0.0.1:{}", free_port());
        Self::start_at(&addr, data_dir, args, envs)
    }

    /// Starts a node listening on `addr` for clients and on a free port for peers
    /// (unless `args` name one with `--peer-address`).
    pub fn start_at(
        addr: &str,
        data_dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Server> {
        let peer = match args.iter().position(|a| *a == "--peer-address") {
            Some(i) => args
                .get(i + 1)
                .context("--peer-address needs a value")?
                .to_string(),
            None => format!("127.0.0.1:{}", free_port()),
        };
        Self::start_member(addr, &peer, data_dir, args, envs)
    }

    /// Starts a node listening on `addr` for clients and `peer_addr` for peers.
    pub fn start_member(
        addr: &str,
        peer_addr: &str,
        data_dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Server> {
        let mut server = Server {
            child: None,
            addr: addr.to_string(),
            peer_addr: peer_addr.to_string(),
            data_dir: data_dir.to_path_buf(),
            admin: format!("127.0.0.1:{}", free_port()),
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: data_dir.with_extension("log"),
            netns: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Starts a node inside network namespace `netns` (made by the caller), listening on
    /// `addr` for clients and `peer_addr` for peers there. `ip netns exec` execs the
    /// server, so signals reach it directly.
    pub fn start_in_netns(
        netns: &str,
        addr: &str,
        peer_addr: &str,
        data_dir: &Path,
        args: &[&str],
    ) -> Result<Server> {
        let mut server = Server {
            child: None,
            addr: addr.to_string(),
            peer_addr: peer_addr.to_string(),
            data_dir: data_dir.to_path_buf(),
            admin: format!("127.0.0.1:{}", free_port()),
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: Vec::new(),
            log: data_dir.with_extension("log"),
            netns: Some(netns.to_string()),
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary("distkv-server"));
                c
            }
            None => Command::new(binary("distkv-server")),
        };
        cmd.arg("--address")
            .arg(&self.addr)
            .arg("--peer-address")
            .arg(&self.peer_addr)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env_remove("RUST_LOG")
            .env("DISTKV_ADMIN_ADDRESS", &self.admin)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().context("spawn distkv-server")?);
        self.wait_ready(Duration::from_secs(20))
    }

    /// Waits until the node answers a Status call.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "distkv-server exited with {status} before answering; log:\n{}",
                        self.log_text()
                    );
                }
            }
            let addr = self.addr.clone();
            let tls = tls_of(&self.args);
            let ok = rt.block_on(async move {
                let client = match &tls {
                    // The node's own certificate also opens its client port when it asks
                    // clients for one.
                    Some((ca, identity)) => connect_tls(&addr, ca, identity.clone()).await,
                    None => connect(&addr).await,
                };
                let Ok(mut c) = client else {
                    return false;
                };
                c.status(StatusRequest {}).await.is_ok()
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "distkv-server at {} did not answer within {timeout:?}; log:\n{}",
                    self.addr,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (e.g. "TERM", "KILL", "INT") and waits for the exit.
    pub fn signal(&mut self, signal: &str) -> Result<ExitStatus> {
        let mut child = self.child.take().context("server is not running")?;
        let status = send_signal(child.id(), signal)?;
        if !status.success() {
            bail!("kill -{signal} failed");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "server did not exit within 30 s of SIG{signal}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded by `timeout`) for the server to exit on its own; kills it and fails
    /// if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("server is not running")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "server did not exit within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the node again with the same address, data directory and arguments.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("server is still running");
        }
        self.spawn()
    }

    /// Runs `distkv-client --server ADDR ARGS...` (with `--tls-enabled --tls-ca-file CA`
    /// when the node serves TLS).
    pub fn client(&self, args: &[&str]) -> Output {
        match tls_of(&self.args) {
            Some((ca, _)) => {
                let ca = ca.to_string_lossy().into_owned();
                let mut all = vec!["--tls-enabled", "--tls-ca-file", ca.as_str()];
                all.extend_from_slice(args);
                run_client(&self.addr, &all, None)
            }
            None => run_client(&self.addr, args, None),
        }
    }

    /// Runs `distkv-client` with `stdin` as its standard input.
    pub fn client_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_client(&self.addr, args, Some(stdin))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET http://addr/path` over a plain HTTP/1.1 connection: the status code and the
/// body. For the admin port, without an HTTP client dependency.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)
        .with_context(|| format!("connect to the admin port {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP header in the answer to GET {path}: {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status code in {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

/// The payload of an HTTP/1.1 chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Sends `kill -SIGNAL pid` through the shell's built-in kill (no kill binary needed).
pub fn send_signal(pid: u32, signal: &str) -> std::io::Result<ExitStatus> {
    Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{signal} {pid}"))
        .status()
}

/// Runs `distkv-client --server addr args...` and returns its output.
pub fn run_client(addr: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(binary("distkv-client"));
    cmd.arg("--server")
        .arg(addr)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("spawn distkv-client");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(data).expect("write client stdin");
    }
    child.wait_with_output().expect("wait for distkv-client")
}

/// A gRPC client of the node at `addr`, with no message size limit.
pub async fn connect(addr: &str) -> Result<KeyValueClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect()
        .await?;
    Ok(KeyValueClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// A gRPC client of the TLS client port at `addr`, trusting `ca` and showing `identity`
/// (certificate and key files) when given.
pub async fn connect_tls(
    addr: &str,
    ca: &Path,
    identity: Option<(PathBuf, PathBuf)>,
) -> Result<KeyValueClient<Channel>> {
    let connector =
        distkv_network::tls::client_connector(&distkv_network::tls::ClientTlsOptions {
            ca: Some(ca.to_path_buf()),
            identity,
            server_name: None,
            insecure_skip_verify: false,
        })?;
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect_with_connector(connector)
        .await?;
    Ok(KeyValueClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// The flags that make node `i` of the cluster whose peer addresses are `peer_addrs` a
/// member with id `n{i}`, with N=3, R=2, W=2 and every node as a seed.
pub fn member_args(peer_addrs: &[String], i: usize) -> Vec<String> {
    let seeds = peer_addrs
        .iter()
        .enumerate()
        .map(|(j, a)| format!("n{j}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    [
        "--node-id",
        &format!("n{i}"),
        "--seed-nodes",
        &seeds,
        "--replicas",
        "3",
        "--read-quorum",
        "2",
        "--write-quorum",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts a three-node cluster (N=3, R=2, W=2) on free loopback ports, node `i` with id
/// `n{i}` and its data in `dir/n{i}`, each with the extra environment `envs`.
pub fn start_loopback_cluster(dir: &Path, envs: &[(&str, &str)]) -> Result<Vec<Server>> {
    start_loopback_cluster_with(dir, &[], envs)
}

/// Like [`start_loopback_cluster`], with extra flags for every node.
pub fn start_loopback_cluster_with(
    dir: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> Result<Vec<Server>> {
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let peers: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let servers = (0..3)
        .map(|i| {
            let mut args = member_args(&peers, i);
            args.extend(extra.iter().map(|s| s.to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Server::start_member(
                &addrs[i],
                &peers[i],
                &dir.join(format!("n{i}")),
                &args,
                envs,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    wait_cluster_ready(&servers, Duration::from_secs(20))?;
    Ok(servers)
}

/// Waits until a read at ALL through every node succeeds: every node reaches every other
/// over the peer port (a node started before the others may have backed off from them
/// for a moment). Bounded by `timeout`.
pub fn wait_cluster_ready(servers: &[Server], timeout: Duration) -> Result<()> {
    use distkv_proto::v1::{Consistency, GetRequest};
    let deadline = Instant::now() + timeout;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for server in servers {
        loop {
            let tls = tls_of(&server.args);
            let addr = server.addr.clone();
            let answered = rt.block_on(async move {
                let client = match &tls {
                    Some((ca, identity)) => connect_tls(&addr, ca, identity.clone()).await,
                    None => connect(&addr).await,
                };
                client?
                    .get(GetRequest {
                        key: b"distkv-tests-cluster-ready".to_vec().into(),
                        consistency: Consistency::All as i32,
                    })
                    .await?;
                anyhow::Ok(())
            });
            match answered {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => bail!(
                    "the cluster is not ready after {timeout:?}: a read at ALL through {} failed: {e}",
                    server.addr
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    Ok(())
}

/// The number of hints the node at `addr` holds for other nodes (from its Status).
pub async fn hints_pending(addr: &str) -> Result<u64> {
    let s = connect(addr)
        .await?
        .status(StatusRequest {})
        .await?
        .into_inner();
    let stat = s.storage_stats.iter().find(|s| s.name == "hints.pending");
    Ok(stat.map(|s| s.value.parse()).transpose()?.unwrap_or(0))
}

/// Waits until no node of `addrs` holds a hint, or fails after `timeout`.
pub async fn wait_for_no_hints(addrs: &[String], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut pending = 0;
        for a in addrs {
            pending += hints_pending(a).await?;
        }
        if pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{pending} hints still pending after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `distkv-server` with `args` and waits for it to exit (for start-up errors and
/// `--print-config`).
pub fn server_output(args: &[&str], envs: &[(&str, &str)], cwd: &Path) -> Output {
    let mut cmd = Command::new(binary("distkv-server"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn distkv-server");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("poll distkv-server").is_some() {
            return child
                .wait_with_output()
                .expect("collect distkv-server output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child
                .wait_with_output()
                .expect("collect distkv-server output");
            panic!(
                "distkv-server {args:?} did not exit within 20 s (it should have refused to start); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
