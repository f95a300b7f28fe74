//! `distkv-server cert`: a small certificate authority for a cluster, in the shape
//! CockroachDB users know. It writes `ca.crt`/`ca.key`, `node.crt`/`node.key` and
//! `client.NAME.crt`/`client.NAME.key` into a certificates directory, private keys with
//! mode 0600, and never replaces a file unless asked to.
//!
//! Node certificates carry the URI SAN [`NODE_ROLE_URI`] (the peer port accepts only
//! those) and both server and client authentication; client certificates carry
//! `urn:distkv:role:client:NAME` and client authentication only. Keys are ECDSA P-256.
//!
//! These are development certificates unless `ca.key` is kept safe: whoever holds it can
//! mint node certificates and join the cluster.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use distkv_network::tls::{CLIENT_ROLE_URI_PREFIX, NODE_ROLE_URI};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// Default lifetime of a CA certificate (10 years).
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 366 * 24 * 3600);
/// Default lifetime of node and client certificates (5 years).
pub const CERT_LIFETIME: Duration = Duration::from_secs(5 * 366 * 24 * 3600);

/// The warning every `create-*` prints.
pub const DEVELOPMENT_WARNING: &str = "these certificates are for development unless ca.key is kept safe: whoever holds ca.key can make node certificates and join the cluster (keep it off the nodes)";

/// When a new certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clock skew between hosts) for `lifetime`.
    pub fn for_lifetime(lifetime: Duration) -> Result<Validity, String> {
        let now = OffsetDateTime::now_utc();
        let lifetime = time::Duration::try_from(lifetime)
            .map_err(|_| format!("lifetime {lifetime:?} is too long"))?;
        Ok(Validity {
            not_before: now - time::Duration::hours(1),
            not_after: now
                .checked_add(lifetime)
                .ok_or_else(|| "lifetime is too long".to_string())?,
        })
    }
}

/// What went wrong, naming the file or value and what to do.
pub type CertResult<T> = Result<T, String>;

fn refuse_existing(paths: &[PathBuf], overwrite: bool) -> CertResult<()> {
    if overwrite {
        return Ok(());
    }
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        return Err(format!(
            "{} already exists; pass --overwrite to replace it (connections made with the old one stop working)",
            p.display()
        ));
    }
    Ok(())
}

fn write_file(path: &Path, text: &str, private: bool) -> CertResult<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if private {
        // An existing file keeps its mode on open: make it private either way.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot make {} private (0600): {e}", path.display()))?;
    }
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn ensure_dir(dir: &Path) -> CertResult<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create the certificates directory {}: {e}",
            dir.display()
        )
    })
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
    move |e| format!("cannot {what}: {e}")
}

/// Creates `ca.crt` and `ca.key` in `dir`; returns the files written.
pub fn create_ca(dir: &Path, validity: Validity, overwrite: bool) -> CertResult<Vec<PathBuf>> {
    ensure_dir(dir)?;
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    refuse_existing(&[crt.clone(), key.clone()], overwrite)?;
    let key_pair = KeyPair::generate().map_err(rcgen_error("generate the CA key"))?;
    let mut params = CertificateParams::default();
    // A name of its own (from its key), so another cluster's certificates are "signed by
    // an unknown CA" rather than "badly signed by this one".
    let tag = xxhash_rust::xxh3::xxh3_64(key_pair.public_key_raw());
    params
        .distinguished_name
        .push(DnType::CommonName, format!("DistKV CA {:08x}", tag >> 32));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "DistKV");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params
        .self_signed(&key_pair)
        .map_err(rcgen_error("sign the CA certificate"))?;
    write_file(&key, &key_pair.serialize_pem(), true)?;
    write_file(&crt, &cert.pem(), false)?;
    Ok(vec![crt, key])
}

/// The CA of `dir`, to sign with.
fn load_ca(dir: &Path) -> CertResult<Issuer<'static, KeyPair>> {
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let key_pem = std::fs::read_to_string(&key).map_err(|e| {
        format!(
            "cannot read the CA key {}: {e}; create the CA first with `distkv-server cert create-ca --certs-dir {}` (or copy ca.key there to sign)",
            key.display(),
            dir.display()
        )
    })?;
    let crt_pem = std::fs::read_to_string(&crt)
        .map_err(|e| format!("cannot read the CA certificate {}: {e}", crt.display()))?;
    let key_pair = KeyPair::from_pem(&key_pem)
        .map_err(|e| format!("CA key {} is not a usable private key: {e}", key.display()))?;
    Issuer::from_ca_cert_pem(&crt_pem, key_pair)
        .map_err(|e| format!("CA certificate {} cannot be parsed: {e}", crt.display()))
}

fn leaf(
    dir: &Path,
    name: &str,
    common_name: &str,
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
    validity: Validity,
    overwrite: bool,
) -> CertResult<Vec<PathBuf>> {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    refuse_existing(&[crt.clone(), key.clone()], overwrite)?;
    let issuer = load_ca(dir)?;
    let key_pair = KeyPair::generate().map_err(rcgen_error("generate a key"))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "DistKV");
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = ekus;
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params
        .signed_by(&key_pair, &issuer)
        .map_err(rcgen_error("sign the certificate"))?;
    write_file(&key, &key_pair.serialize_pem(), true)?;
    write_file(&crt, &cert.pem(), false)?;
    Ok(vec![crt, key])
}

fn ia5(text: &str) -> CertResult<rcgen::string::Ia5String> {
    rcgen::string::Ia5String::try_from(text.to_string())
        .map_err(|e| format!("{text:?} cannot go in a certificate: {e}"))
}

/// Creates `node.crt` and `node.key` for the hosts (DNS names and IP addresses) the node
/// is dialled by, signed by the CA in `dir`.
pub fn create_node(
    dir: &Path,
    hosts: &[String],
    validity: Validity,
    overwrite: bool,
) -> CertResult<Vec<PathBuf>> {
    if hosts.is_empty() {
        return Err("name at least one host the node is dialled by (a DNS name or IP address, e.g. 127.0.0.1 localhost)".into());
    }
    let mut sans = Vec::new();
    for host in hosts {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => {
                if bare.is_empty() || bare.contains(':') || bare.contains('/') {
                    return Err(format!(
                        "{host:?} is not a host name or IP address (give hosts without ports)"
                    ));
                }
                sans.push(SanType::DnsName(ia5(bare)?));
            }
        }
    }
    sans.push(SanType::URI(ia5(NODE_ROLE_URI)?));
    leaf(
        dir,
        "node",
        "node",
        sans,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        validity,
        overwrite,
    )
}

/// Creates `client.NAME.crt` and `client.NAME.key`, signed by the CA in `dir`.
pub fn create_client(
    dir: &Path,
    name: &str,
    validity: Validity,
    overwrite: bool,
) -> CertResult<Vec<PathBuf>> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "client name {name:?} must be letters, digits, '-', '_' or '.'"
        ));
    }
    let uri = format!("{CLIENT_ROLE_URI_PREFIX}{name}");
    leaf(
        dir,
        &format!("client.{name}"),
        name,
        vec![SanType::URI(ia5(&uri)?)],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
        validity,
        overwrite,
    )
}

/// One line per certificate in `dir`: file, subject, role, SANs, expiry.
pub fn list(dir: &Path) -> CertResult<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    files.sort();
    let mut out = String::new();
    for path in files {
        let pem =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let Ok((_, block)) = x509_parser::pem::parse_x509_pem(&pem) else {
            out.push_str(&format!("{}: not a PEM certificate\n", path.display()));
            continue;
        };
        let Ok(cert) = block.parse_x509() else {
            out.push_str(&format!(
                "{}: not a valid X.509 certificate\n",
                path.display()
            ));
            continue;
        };
        let mut sans = Vec::new();
        let mut role = if cert.is_ca() {
            "ca".to_string()
        } else {
            "unknown".to_string()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                use x509_parser::extensions::GeneralName;
                match name {
                    GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                    GeneralName::IPAddress(ip) => sans.push(match ip.len() {
                        4 => format!(
                            "IP:{}",
                            IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                        ),
                        16 => format!(
                            "IP:{}",
                            IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                        ),
                        _ => "IP:?".to_string(),
                    }),
                    GeneralName::URI(u) if *u == NODE_ROLE_URI => role = "node".to_string(),
                    GeneralName::URI(u) if u.starts_with(CLIENT_ROLE_URI_PREFIX) => {
                        role = format!("client {}", &u[CLIENT_ROLE_URI_PREFIX.len()..]);
                    }
                    GeneralName::URI(u) => sans.push(format!("URI:{u}")),
                    other => sans.push(format!("{other}")),
                }
            }
        }
        let expires = cert.validity().not_after;
        let expired = if cert.validity().is_valid() {
            ""
        } else {
            " (NOT VALID NOW)"
        };
        out.push_str(&format!(
            "{}\n  subject: {}\n  role:    {role}\n  SANs:    {}\n  expires: {expires}{expired}\n",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default(),
            cert.subject(),
            if sans.is_empty() {
                "-".to_string()
            } else {
                sans.join(", ")
            },
        ));
    }
    if out.is_empty() {
        out = format!("no certificates (*.crt) in {}\n", dir.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use distkv_network::tls::{is_node_certificate, load_certs, Identity};

    fn year() -> Validity {
        Validity::for_lifetime(Duration::from_secs(365 * 24 * 3600)).unwrap()
    }

    #[test]
    fn the_ca_signs_nodes_and_clients_with_their_roles_and_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        create_ca(d, year(), false).unwrap();
        create_node(d, &["127.0.0.1".into(), "localhost".into()], year(), false).unwrap();
        create_client(d, "alice", year(), false).unwrap();
        let node = load_certs(&d.join("node.crt")).unwrap();
        assert!(is_node_certificate(&node[0]));
        let client = load_certs(&d.join("client.alice.crt")).unwrap();
        assert!(!is_node_certificate(&client[0]));
        Identity::load(&d.join("node.crt"), &d.join("node.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "node.key", "client.alice.key"] {
            let mode = std::fs::metadata(d.join(key)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        let listed = list(d).unwrap();
        assert!(listed.contains("role:    node"), "{listed}");
        assert!(listed.contains("role:    client alice"), "{listed}");
        assert!(listed.contains("role:    ca"), "{listed}");
        assert!(listed.contains("IP:127.0.0.1"), "{listed}");
        assert!(listed.contains("DNS:localhost"), "{listed}");
    }

    #[test]
    fn nothing_is_overwritten_without_asking() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        create_ca(d, year(), false).unwrap();
        let before = std::fs::read(d.join("ca.key")).unwrap();
        let err = create_ca(d, year(), false).unwrap_err();
        assert!(err.contains("--overwrite"), "{err}");
        assert_eq!(std::fs::read(d.join("ca.key")).unwrap(), before);
        create_ca(d, year(), true).unwrap();
        assert_ne!(std::fs::read(d.join("ca.key")).unwrap(), before);
    }

    #[test]
    fn a_node_certificate_needs_a_ca_and_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let err = create_node(dir.path(), &["h".into()], year(), false).unwrap_err();
        assert!(err.contains("create-ca"), "{err}");
        create_ca(dir.path(), year(), false).unwrap();
        let err = create_node(dir.path(), &[], year(), false).unwrap_err();
        assert!(err.contains("host"), "{err}");
        let err = create_node(dir.path(), &["h:8080".into()], year(), false).unwrap_err();
        assert!(err.contains("without ports"), "{err}");
        let err = create_client(dir.path(), "a b", year(), false).unwrap_err();
        assert!(err.contains("letters"), "{err}");
    }
}
