//! The Redis driver (build feature `peers`): `GET`, `SET` and for the preload `MSET`,
//! with the `redis` crate's multiplexed tokio connection (one TCP connection, with
//! `TCP_NODELAY` as the gRPC drivers have). Redis here is one node without replication:
//! its durability is whatever the server was started with (see scripts/compare-peers.sh).

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, ConnectionAddr, IntoConnectionInfo, RedisError};

use super::{Conn as AnyConn, Found, OpError};
use crate::cli::{Config, Failure};
use crate::stats;

/// A connection to the Redis server (clones share it).
#[derive(Clone)]
pub struct Conn {
    conn: MultiplexedConnection,
}

/// The class of a Redis error for counting: `REDIS` and the crate's error kind, then the
/// server's detail up to its first `:` (digits folded), e.g. `REDIS Io` or
/// `REDIS Server(ResponseError) OOM command not allowed when used memory > N`.
pub fn error_kind(e: &RedisError) -> String {
    stats::classify(
        &format!("REDIS {:?}", e.kind()),
        e.detail().unwrap_or_default(),
    )
}

fn op_error(e: RedisError) -> OpError {
    OpError(error_kind(&e))
}

impl Conn {
    pub async fn get(&mut self, key: Bytes) -> Result<Found, OpError> {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key[..])
            .query_async(&mut self.conn)
            .await
            .map_err(op_error)?;
        Ok(Found {
            found: value.is_some(),
            siblings: false,
            context: Bytes::new(),
        })
    }

    pub async fn put(&mut self, key: Bytes, value: Bytes) -> Result<(), OpError> {
        redis::cmd("SET")
            .arg(&key[..])
            .arg(&value[..])
            .exec_async(&mut self.conn)
            .await
            .map_err(op_error)
    }

    pub async fn put_many(&mut self, entries: Vec<(Bytes, Bytes)>) -> Result<(), OpError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut mset = redis::cmd("MSET");
        for (key, value) in &entries {
            mset.arg(&key[..]).arg(&value[..]);
        }
        mset.exec_async(&mut self.conn).await.map_err(op_error)
    }

    async fn ping(&mut self) -> Result<String, RedisError> {
        redis::cmd("PING").query_async(&mut self.conn).await
    }
}

/// Opens one connection to `addr` within `timeout`; requests are not timed out here (the
/// runner applies `--timeout` around each).
async fn open(
    addr: std::net::SocketAddr,
    timeout: std::time::Duration,
) -> Result<MultiplexedConnection, RedisError> {
    let info = ConnectionAddr::Tcp(addr.ip().to_string(), addr.port())
        .into_connection_info()?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Opens the connections of each target (`--connections`, or one per client with
/// `--connection-per-client`) and checks that each answers `PING`.
pub async fn connect_all(config: &Config) -> Result<Vec<Vec<AnyConn>>, Failure> {
    let args = &config.args;
    let connect_timeout = args.timeout.min(std::time::Duration::from_secs(5));
    let mut all = Vec::with_capacity(config.targets.len());
    for (index, target) in config.targets.iter().enumerate() {
        let count = args.channels_for_target(index, config.targets.len());
        let mut conns = Vec::with_capacity(count);
        // The first connection finds an address that answers; the others reuse it.
        let mut candidates = target.addrs.clone();
        for _ in 0..count {
            let mut last_error = String::from("no address");
            let mut connected = None;
            for (i, addr) in candidates.iter().enumerate() {
                match open(*addr, connect_timeout).await {
                    Ok(conn) => {
                        connected = Some((i, conn));
                        break;
                    }
                    Err(e) => last_error = format!("{addr}: {e}"),
                }
            }
            let Some((i, conn)) = connected else {
                return Err(Failure::unreachable(format!(
                    "cannot connect to target {} ({last_error}) (is redis-server running there?)",
                    target.name
                )));
            };
            candidates = vec![candidates[i]];
            conns.push(Conn { conn });
        }
        let mut first = conns[0].clone();
        match tokio::time::timeout(args.timeout, first.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(Failure::unreachable(format!(
                    "target {} does not answer PING as a Redis server: {e}",
                    target.name
                )))
            }
            Err(_) => {
                return Err(Failure::unreachable(format!(
                    "target {} did not answer PING within {}",
                    target.name,
                    humantime::format_duration(args.timeout)
                )))
            }
        }
        eprintln!(
            "distkv-bench: target {} answers as a Redis server, {} connection(s) to it",
            target.name,
            conns.len()
        );
        all.push(conns.into_iter().map(AnyConn::Redis).collect());
    }
    Ok(all)
}
