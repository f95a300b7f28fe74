//! The files in `deploy/` without a container engine: every YAML and JSON file parses;
//! every command line and environment of the Dockerfile, the compose services and the
//! Kubernetes StatefulSet is accepted by the real `distkv-server --print-config` (no
//! unknown `DISTKV_*` variable, the identity and addresses they mean to set); the probes
//! and scrape targets point at the admin port; and every metric the Grafana dashboard
//! queries is in a running node's `/metrics`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use distkv_tests::{http_get, server_output, start_loopback_cluster, stderr, stdout};
use serde_norway::Value as Yaml;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Every YAML document of `path`, with `<<` merge keys applied.
fn yaml_documents(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let mut v = Yaml::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
            v.apply_merge()
                .unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
            v
        })
        .collect()
}

use serde::Deserialize as _;

fn yaml(path: &str) -> Vec<Yaml> {
    yaml_documents(&deploy_dir().join(path))
}

fn text(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, found {other:?}"),
    }
}

fn strings(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(text).collect())
        .unwrap_or_default()
}

/// Runs `distkv-server --print-config ARGS` with `env`, the image's data directory
/// swapped for a temporary one; fails on a refusal or any warning (such as an unknown
/// `DISTKV_*` variable). Returns the printed configuration.
fn accepted(what: &str, args: &[String], env: &BTreeMap<String, String>) -> toml::Value {
    let data = tempfile::tempdir().unwrap();
    let swap = |s: &str| s.replace("/var/lib/distkv", &data.path().display().to_string());
    let mut all: Vec<String> = args.iter().map(|a| swap(a)).collect();
    all.push("--print-config".into());
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), swap(v))).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let out = server_output(&all, &env, data.path());
    assert!(
        out.status.success() && stderr(&out).trim().is_empty(),
        "{what}: distkv-server {all:?} with {env:?} was refused or warned: {}",
        stderr(&out)
    );
    toml::from_str(&stdout(&out)).unwrap()
}

fn printed(config: &toml::Value, key: &str) -> String {
    config[key].as_str().unwrap_or_default().to_string()
}

#[test]
fn every_yaml_and_json_file_parses() {
    let mut all = Vec::new();
    files(&deploy_dir(), &mut all);
    let mut parsed = 0;
    for path in all {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                assert!(
                    !yaml_documents(&path).is_empty(),
                    "{} is empty",
                    path.display()
                );
                parsed += 1;
            }
            Some("json") => {
                let text = std::fs::read_to_string(&path).unwrap();
                serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
                parsed += 1;
            }
            _ => {}
        }
    }
    assert!(
        parsed >= 10,
        "only {parsed} YAML/JSON files found in deploy/"
    );
}

/// The environment the Dockerfile's `ENV` lines give every container of the image.
fn image_env() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let mut env = BTreeMap::new();
    for line in joined.lines().filter(|l| l.starts_with("ENV ")) {
        for pair in line[4..].split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
            env.insert(k.to_string(), v.to_string());
        }
    }
    env
}

#[test]
fn the_dockerfile_runs_a_non_root_node_with_a_health_check() {
    let text = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    assert!(
        joined.matches("\nFROM ").count() >= 1 && joined.contains(" AS build"),
        "multi-stage"
    );
    assert!(joined.contains("USER 10001"), "runs as a non-root user");
    assert!(joined.contains("VOLUME /var/lib/distkv"));
    assert!(
        joined.contains("HEALTHCHECK") && joined.contains("http://127.0.0.1:9001/health/ready")
    );
    let mut env = image_env();
    assert!(env.contains_key("DISTKV_ADDRESS"));
    let entry = joined
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .expect("an ENTRYPOINT");
    assert_eq!(entry, r#"ENTRYPOINT ["distkv-server"]"#);
    // As the header's `docker run` line starts it.
    env.insert("DISTKV_ADVERTISE_ADDRESS".into(), "127.0.0.1:7001".into());
    let config = accepted("Dockerfile", &[], &env);
    assert_eq!(printed(&config, "address"), "0.0.0.0:7001");
    assert_eq!(
        printed(&config, "admin_address"),
        "0.0.0.0:9001",
        "the health check's port"
    );
}

#[test]
fn compose_nodes_advertise_their_service_names() {
    let doc = &yaml("docker-compose.yml")[0];
    let services = doc["services"].as_mapping().unwrap();
    let mut nodes = Vec::new();
    for (name, svc) in services {
        let name = text(name);
        if svc["image"].as_str() != Some("distkv:latest") {
            continue;
        }
        let args = strings(&svc["command"]);
        // The service's environment over the image's.
        let mut env = image_env();
        env.extend(
            svc["environment"]
                .as_mapping()
                .unwrap()
                .iter()
                .map(|(k, v)| (text(k), text(v))),
        );
        let config = accepted(&format!("compose service {name}"), &args, &env);
        assert_eq!(
            printed(&config, "advertise_address"),
            format!("{name}:7001"),
            "{name} advertises its service name, not 0.0.0.0"
        );
        assert_eq!(printed(&config, "admin_address"), "0.0.0.0:9001");
        let seeds: Vec<String> = config["seed_nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        // Other nodes dial its peer port, which the seed lists name.
        assert_eq!(
            printed(&config, "peer_advertise_address"),
            format!("{name}:8001")
        );
        let me = format!("{}={name}:8001", printed(&config, "node_id"));
        assert!(
            seeds.contains(&me),
            "{name}: the seed list {seeds:?} names it as {me}"
        );
        nodes.push(name);
    }
    assert_eq!(nodes.len(), 3);
    for (svc, profile) in [("prometheus", "prometheus"), ("grafana", "grafana")] {
        let profiles = strings(&doc["services"][svc]["profiles"]);
        assert!(profiles.contains(&profile.to_string()) && profiles.contains(&"monitoring".into()));
    }
    let prom = &yaml("prometheus/prometheus.yml")[0];
    let targets = strings(&prom["scrape_configs"][0]["static_configs"][0]["targets"]);
    let expected: Vec<String> = nodes.iter().map(|n| format!("{n}:9001")).collect();
    assert_eq!(
        targets, expected,
        "Prometheus scrapes every node's admin port"
    );
}

#[test]
fn the_statefulset_is_accepted_by_the_binary() {
    let mut by_kind: BTreeMap<String, Yaml> = BTreeMap::new();
    for file in [
        "configmap.yaml",
        "service.yaml",
        "statefulset.yaml",
        "pdb.yaml",
    ] {
        for doc in yaml(&format!("k8s/{file}")) {
            let key = format!("{}/{}", text(&doc["kind"]), text(&doc["metadata"]["name"]));
            by_kind.insert(key, doc);
        }
    }
    let kustomize = &yaml("k8s/kustomization.yaml")[0];
    assert_eq!(strings(&kustomize["resources"]).len(), 4);
    let headless = &by_kind["Service/distkv-headless"];
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    assert!(by_kind.contains_key("PodDisruptionBudget/distkv"));
    let sts = &by_kind["StatefulSet/distkv"];
    assert_eq!(sts["spec"]["serviceName"].as_str(), Some("distkv-headless"));
    assert!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"].is_sequence());
    let replicas = sts["spec"]["replicas"].as_u64().unwrap();
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    let config_map = &by_kind["ConfigMap/distkv"]["data"];

    // Each pod gets its own name: check every one as Kubernetes would expand it.
    for pod in 0..replicas {
        let pod_name = format!("distkv-{pod}");
        // The image's environment, then the ConfigMap's, then the container's own.
        let mut env = image_env();
        env.extend(
            config_map
                .as_mapping()
                .unwrap()
                .iter()
                .map(|(k, v)| (text(k), text(v))),
        );
        for e in container["env"].as_sequence().unwrap() {
            let name = text(&e["name"]);
            let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod_name.clone(),
                Some("metadata.namespace") => "default".to_string(),
                Some(other) => panic!("unexpected fieldRef {other}"),
                None => {
                    let mut v = text(&e["value"]);
                    for (k, val) in &env {
                        v = v.replace(&format!("$({k})"), val);
                    }
                    assert!(
                        !v.contains("$("),
                        "{name} refers to an undefined variable: {v}"
                    );
                    v
                }
            };
            env.insert(name, value);
        }
        let config = accepted(&pod_name, &strings(&container["args"]), &env);
        assert_eq!(
            printed(&config, "node_id"),
            pod_name,
            "node id from the pod name"
        );
        assert_eq!(
            printed(&config, "advertise_address"),
            format!("{pod_name}.distkv-headless.default.svc.cluster.local:7001")
        );
        assert_eq!(
            config["seed_nodes"].as_array().unwrap().len() as u64,
            replicas,
            "one seed per replica"
        );
        assert_eq!(printed(&config, "admin_address"), "0.0.0.0:9001");
    }
    let admin_port = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some("admin"))
        .and_then(|p| p["containerPort"].as_u64());
    assert_eq!(admin_port, Some(9001));
    for (probe, path) in [
        ("livenessProbe", "/health/live"),
        ("readinessProbe", "/health/ready"),
        ("startupProbe", "/health/live"),
    ] {
        assert_eq!(
            container[probe]["httpGet"]["path"].as_str(),
            Some(path),
            "{probe}"
        );
        assert_eq!(
            container[probe]["httpGet"]["port"].as_str(),
            Some("admin"),
            "{probe}"
        );
    }
}

/// The metric names (`distkv_*`) a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("distkv_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let text =
        std::fs::read_to_string(deploy_dir().join("grafana/dashboards/distkv.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut queried = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            queried.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    queried.sort();
    queried.dedup();
    assert!(queried.len() >= 20, "{queried:?}");

    let dir = tempfile::tempdir().unwrap();
    let nodes = start_loopback_cluster(dir.path(), &[]).unwrap();
    let out = nodes[0].client(&["put", "k", "v"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Peers are heard from within a ping round or two.
    let mut exported = String::new();
    for _ in 0..50 {
        exported = http_get(&nodes[0].admin, "/metrics").unwrap().1;
        if exported.contains("distkv_peer_last_heard_seconds{") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let series: Vec<&str> = exported
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split([' ', '{']).next())
        .collect();
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| !series.contains(&name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no node exports: {missing:?}"
    );
}
