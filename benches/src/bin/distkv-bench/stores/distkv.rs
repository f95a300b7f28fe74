//! The DistKV driver: `Get`, `Put` with the read's causal context, and `BatchPut` for the
//! preload, over one gRPC channel (HTTP/2 connection) per client or shared channels.

use std::time::Duration;

use bytes::Bytes;
use distkv_proto::v1::key_value_client::KeyValueClient;
use distkv_proto::v1::{BatchPutRequest, GetRequest, KeyValuePair, PutRequest, StatusRequest};
use tonic::transport::Channel;

use super::{Conn as AnyConn, Found, OpError};
use crate::cli::{Config, Failure};
use crate::runner::{root_cause, within};
use crate::stats;

/// A client of one DistKV node (`--timeout` is applied by the runner around each call).
#[derive(Clone)]
pub struct Conn {
    kv: KeyValueClient<Channel>,
    /// Consistency level of every request (`--consistency`).
    consistency: i32,
}

fn op_error(status: tonic::Status) -> OpError {
    OpError(stats::error_kind(&status))
}

impl Conn {
    pub async fn get(&mut self, key: Bytes) -> Result<Found, OpError> {
        let get = self.kv.get(GetRequest {
            key,
            consistency: self.consistency,
        });
        let r = get.await.map_err(op_error)?.into_inner();
        Ok(Found {
            found: r.found,
            siblings: r.values.len() > 1,
            context: r.context,
        })
    }

    pub async fn put(&mut self, key: Bytes, value: Bytes, context: Bytes) -> Result<(), OpError> {
        let put = self.kv.put(PutRequest {
            key,
            value,
            context,
            consistency: self.consistency,
        });
        put.await.map_err(op_error)?;
        Ok(())
    }

    pub async fn put_many(&mut self, entries: Vec<(Bytes, Bytes)>) -> Result<(), OpError> {
        let entries = entries
            .into_iter()
            .map(|(key, value)| KeyValuePair {
                key,
                value,
                context: Bytes::new(),
            })
            .collect();
        let call = self.kv.batch_put(BatchPutRequest {
            entries,
            consistency: self.consistency,
        });
        call.await.map_err(op_error)?;
        Ok(())
    }
}

/// Opens the channels of each target (`--connections`, or one per client with
/// `--connection-per-client`) and checks that each target answers `Status`.
pub async fn connect_all(config: &Config) -> Result<Vec<Vec<AnyConn>>, Failure> {
    let args = &config.args;
    let consistency = args.consistency.wire();
    let mut all = Vec::with_capacity(config.targets.len());
    if config.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
        eprintln!("distkv-bench: warning: --tls-insecure-skip-verify: the nodes' certificates are not checked");
    }
    for (index, target) in config.targets.iter().enumerate() {
        let count = args.channels_for_target(index, config.targets.len());
        let mut channels = Vec::with_capacity(count);
        // Certificates are checked against the target's host unless --tls-server-name.
        let tls = match &config.tls {
            None => None,
            Some(options) => {
                let host = target
                    .name
                    .rsplit_once(':')
                    .map_or(target.name.as_str(), |(h, _)| h);
                let options = distkv_network::tls::ClientTlsOptions {
                    server_name: options.server_name.clone().or(Some(host.to_string())),
                    ..options.clone()
                };
                Some(
                    distkv_network::tls::client_connector(&options)
                        .map_err(|e| Failure::usage(e.0))?,
                )
            }
        };
        // The first connection finds an address that answers; the others reuse it.
        let mut candidates = target.addrs.clone();
        for _ in 0..count {
            let mut last_error = String::from("no address");
            let mut connected = None;
            for (i, addr) in candidates.iter().enumerate() {
                let endpoint = Channel::from_shared(format!("http://{addr}"))
                    .map_err(|e| Failure::usage(format!("target {}: {e}", target.name)))?
                    .connect_timeout(args.timeout.min(Duration::from_secs(5)))
                    .tcp_nodelay(true);
                let attempt = match &tls {
                    Some(connector) => endpoint.connect_with_connector(connector.clone()).await,
                    None => endpoint.connect().await,
                };
                match attempt {
                    Ok(channel) => {
                        connected = Some((i, channel));
                        break;
                    }
                    Err(e) => last_error = format!("{addr}: {}", root_cause(&e)),
                }
            }
            let Some((i, channel)) = connected else {
                return Err(Failure::unreachable(format!(
                    "cannot connect to target {} ({last_error}) (is distkv-server running there?)",
                    target.name
                )));
            };
            candidates = vec![candidates[i]];
            channels.push(
                KeyValueClient::new(channel)
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(usize::MAX),
            );
        }
        let mut first = channels[0].clone();
        let status = within(args.timeout, first.status(StatusRequest {}))
            .await
            .map_err(|s| {
                Failure::unreachable(format!(
                    "target {} does not answer as a DistKV node: {} {}",
                    target.name,
                    stats::code_name(s.code()),
                    s.message().lines().next().unwrap_or("")
                ))
            })?;
        eprintln!(
            "distkv-bench: target {} is node {:?} (N={} R={} W={}, {} members, engine {}), {} connection(s) to it",
            target.name,
            status.node_id,
            status.replicas,
            status.read_quorum,
            status.write_quorum,
            status.members.len(),
            status.storage_engine,
            channels.len()
        );
        all.push(
            channels
                .into_iter()
                .map(|kv| AnyConn::Distkv(Conn { kv, consistency }))
                .collect(),
        );
    }
    Ok(all)
}
