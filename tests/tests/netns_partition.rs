//! A network partition between real `distkv-server` processes, each in its own network
//! namespace made by this test (root only; skipped otherwise). The namespaces hang off a
//! bridge in the test's namespace, so the test reaches every node; the partition is made
//! by blackhole routes between the nodes, so clients still reach each side.

use std::process::Command;
use std::time::Duration;

use distkv_proto::v1::{Consistency, GetRequest, PutRequest};
use distkv_tests::{connect, hints_pending, member_args, wait_for_no_hints, Server};

/// The namespaces, bridge and links of the test; removed on drop.
struct Net {
    tag: String,
    subnet: String,
    nodes: usize,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Net {
    fn ns(&self, i: usize) -> String {
        format!("dk{}n{i}", self.tag)
    }

    fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    fn bridge(&self) -> String {
        format!("dk{}br", self.tag)
    }

    /// Makes `nodes` namespaces on a bridge; `None` when this process may not (not root,
    /// or no `ip`).
    fn create(nodes: usize) -> Option<Net> {
        let tag = format!("{}", std::process::id() % 100_000);
        let subnet = format!("10.213.{}", std::process::id() % 250);
        let net = Net { tag, subnet, nodes };
        if ip(&["netns", "add", &net.ns(0)]).is_err() {
            return None;
        }
        let setup = || -> anyhow::Result<()> {
            let br = net.bridge();
            ip(&["link", "add", &br, "type", "bridge"])?;
            ip(&["addr", "add", &format!("{}.254/24", net.subnet), "dev", &br])?;
            ip(&["link", "set", &br, "up"])?;
            for i in 0..nodes {
                let ns = net.ns(i);
                if i > 0 {
                    ip(&["netns", "add", &ns])?;
                }
                let (inner, outer) = (format!("dk{}i{i}", net.tag), format!("dk{}o{i}", net.tag));
                ip(&[
                    "link", "add", &inner, "type", "veth", "peer", "name", &outer,
                ])?;
                ip(&["link", "set", &inner, "netns", &ns])?;
                ip(&["link", "set", &outer, "master", &br])?;
                ip(&["link", "set", &outer, "up"])?;
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{}/24", net.addr(i)),
                    "dev",
                    &inner,
                ])?;
                ip(&["-n", &ns, "link", "set", &inner, "up"])?;
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            }
            Ok(())
        };
        match setup() {
            Ok(()) => Some(net),
            Err(e) => {
                eprintln!("skipping: cannot build the test network: {e}");
                None
            }
        }
    }

    /// Cuts (or restores) traffic between node `i` and every other node, both ways.
    fn isolate(&self, i: usize, cut: bool) -> anyhow::Result<()> {
        let verb = if cut { "add" } else { "del" };
        for j in 0..self.nodes {
            if j != i {
                ip(&[
                    "-n",
                    &self.ns(i),
                    "route",
                    verb,
                    "blackhole",
                    &format!("{}/32", self.addr(j)),
                ])?;
                ip(&[
                    "-n",
                    &self.ns(j),
                    "route",
                    verb,
                    "blackhole",
                    &format!("{}/32", self.addr(i)),
                ])?;
            }
        }
        Ok(())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

async fn put(addr: &str, key: &str, value: &str, level: Consistency) -> anyhow::Result<()> {
    let mut c = connect(addr).await?;
    let req = PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        context: Default::default(),
        consistency: level as i32,
    };
    c.put(req).await?;
    Ok(())
}

async fn get(addr: &str, key: &str, level: Consistency) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let mut c = connect(addr)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let req = GetRequest {
        key: key.as_bytes().to_vec().into(),
        consistency: level as i32,
    };
    Ok(c.get(req)
        .await?
        .into_inner()
        .values
        .into_iter()
        .map(|v| v.to_vec())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_catches_up_after_the_partition_heals() -> anyhow::Result<()> {
    let Some(net) = Net::create(3) else {
        eprintln!("skipping: network namespaces need root and iproute2");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let addrs: Vec<String> = (0..3).map(|i| format!("{}:7000", net.addr(i))).collect();
    let peers: Vec<String> = (0..3).map(|i| format!("{}:8000", net.addr(i))).collect();
    let mut servers = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let args = member_args(&peers, i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = format!("n{i}");
        let ns = net.ns(i);
        let data = dir.path().join(&id);
        let server = tokio::task::block_in_place(|| {
            Server::start_in_netns(&ns, addr, &peers[i], &data, &args)
        })?;
        servers.push(server);
    }

    for i in 0..100 {
        put(
            &addrs[i % 3],
            &format!("before-{i}"),
            "v",
            Consistency::Quorum,
        )
        .await?;
    }

    net.isolate(2, true)?;
    // The majority side keeps taking quorum writes; n2 alone has no quorum but still
    // serves ONE.
    for i in 0..100 {
        put(
            &addrs[i % 2],
            &format!("during-{i}"),
            "majority",
            Consistency::Quorum,
        )
        .await?;
    }
    let err = get(&addrs[2], "before-1", Consistency::Quorum)
        .await
        .expect_err("n2 alone has no read quorum");
    assert!(
        err.message().contains("quorum not reached"),
        "{}",
        err.message()
    );
    assert_eq!(
        get(&addrs[2], "before-1", Consistency::One).await?,
        vec![b"v".to_vec()]
    );
    put(&addrs[2], "minority", "n2-only", Consistency::One).await?;
    assert!(get(&addrs[0], "during-5", Consistency::Quorum)
        .await
        .is_ok());

    // Hints are stored once a replica's call fails, which through a blackhole takes the
    // connect timeout: wait for all of them (100 for n2, one each for n0 and n1).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut held = 0;
        for a in &addrs {
            held += hints_pending(a).await?;
        }
        if held >= 102 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "only {held} of 102 hints stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    net.isolate(2, false)?;
    wait_for_no_hints(&addrs, Duration::from_secs(90)).await?;
    // Both sides' writes are everywhere: read each key at ONE from the other side.
    for i in 0..100 {
        assert_eq!(
            get(&addrs[2], &format!("during-{i}"), Consistency::One).await?,
            vec![b"majority".to_vec()],
            "during-{i} on n2"
        );
    }
    assert_eq!(
        get(&addrs[0], "minority", Consistency::One).await?,
        vec![b"n2-only".to_vec()]
    );
    assert_eq!(
        get(&addrs[1], "minority", Consistency::One).await?,
        vec![b"n2-only".to_vec()]
    );
    drop(servers);
    drop(net);
    Ok(())
}
