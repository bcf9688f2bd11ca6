//! `keyraft cert`: a private cluster CA and node certificates for mTLS between nodes (rcgen,
//! ECDSA P-256). A node certificate carries the node's name as a DNS subject alternative name;
//! peers check that name, so a certificate proves which node answers.
//!
//! Files: `ca.pem` and `ca.key` in the CA directory; `ca.pem`, `node.pem` and `node.key` in a
//! node's TLS directory. Keys are written with mode 0600; nothing is ever overwritten.
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Validity of the CA, in days.
const CA_DAYS: i64 = 3650;
/// Validity of node certificates, in days.
const NODE_DAYS: i64 = 825;

/// Write `contents` to a new file `path` (never replacing one) with `mode`.
fn create(path: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// Valid from a day ago (tolerating clock skew between nodes) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

/// A node name usable as a DNS SAN: letters, digits, `-` and `.`, 1 to 63 characters.
pub fn valid_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
}

/// Create a new CA in `dir`: `ca.pem` and `ca.key`. Returns the paths written.
pub fn init_ca(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert_path.exists() || key_path.exists() {
        bail!(
            "{} already holds a CA; refusing to overwrite it",
            dir.display()
        );
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "keyraft cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key)?;
    create(&key_path, &key.serialize_pem(), 0o600)?;
    create(&cert_path, &cert.pem(), 0o644)?;
    Ok(vec![cert_path, key_path])
}

/// Issue a certificate for node `name` (plus `extra_sans`) from the CA in `ca_dir` into
/// `out`: `ca.pem` (a copy), `node.pem`, `node.key`. Returns the paths written.
pub fn issue(
    ca_dir: &Path,
    name: &str,
    extra_sans: &[String],
    out: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    if !valid_node_name(name) {
        bail!(
            "node name {name:?} must be 1-63 letters, digits, '-' or '.' (it becomes a DNS name)"
        );
    }
    let ca_pem = std::fs::read_to_string(ca_dir.join("ca.pem"))
        .with_context(|| format!("reading {}/ca.pem", ca_dir.display()))?;
    let ca_key = std::fs::read_to_string(ca_dir.join("ca.key"))
        .with_context(|| format!("reading {}/ca.key", ca_dir.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key).context("parsing ca.key")?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("parsing ca.pem")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let paths = [
        out.join("ca.pem"),
        out.join("node.pem"),
        out.join("node.key"),
    ];
    if let Some(p) = paths.iter().find(|p| p.exists()) {
        bail!("{} exists; refusing to overwrite it", p.display());
    }
    let mut sans = vec![name.to_string()];
    sans.extend(extra_sans.iter().cloned());
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, NODE_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    create(&paths[0], &ca_pem, 0o644)?;
    create(&paths[1], &cert.pem(), 0o644)?;
    create(&paths[2], &key.serialize_pem(), 0o600)?;
    Ok(paths.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_the_node_name_and_chain_to_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        init_ca(&ca).unwrap();
        assert!(init_ca(&ca).is_err(), "never overwrites a CA");
        let out = dir.path().join("n1");
        issue(&ca, "n1", &["n1.example.org".into()], &out).unwrap();
        assert!(issue(&ca, "n1", &[], &out).is_err(), "never overwrites");
        assert!(issue(&ca, "bad name", &[], &dir.path().join("x")).is_err());
        let tls = super::super::tls::ClusterTls::load(&out, "n1").unwrap();
        assert_eq!(
            tls.node_names(),
            vec!["n1".to_string(), "n1.example.org".into()]
        );
        assert!(super::super::tls::ClusterTls::load(&out, "n2").is_err());
        let mode = std::fs::metadata(out.join("node.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }
}
