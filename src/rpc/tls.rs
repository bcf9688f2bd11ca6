//! mTLS between nodes: the cluster CA, this node's certificate and key, the server and client
//! configurations built from them. The names a peer's certificate carries are read by
//! [`crate::certname`], shared with the hkps admin client certificates.
//!
//! Every node presents its certificate as server and as client; both sides require a
//! certificate from the cluster CA. A client dials a peer expecting the peer's node name (from
//! the membership) as the TLS server name, so it always reaches the node it meant to.
use std::path::Path;

use anyhow::{bail, Context};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::certname::dns_names;

/// The TLS material of one node, loaded from `--cluster-tls-dir`.
#[derive(Clone)]
pub struct ClusterTls {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    names: Vec<String>,
}

impl ClusterTls {
    /// Read `ca.pem`, `node.pem` and `node.key` from `dir` and check that the node certificate
    /// names `node_name`.
    pub fn load(dir: &Path, node_name: &str) -> anyhow::Result<ClusterTls> {
        let read = |f: &str| {
            std::fs::read(dir.join(f)).with_context(|| format!("reading {}/{f}", dir.display()))
        };
        let (ca_pem, cert_pem, key_pem) = (read("ca.pem")?, read("node.pem")?, read("node.key")?);
        let ca = CertificateDer::pem_slice_iter(&ca_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{}/ca.pem: {e}", dir.display()))?;
        if ca.is_empty() {
            bail!("{}/ca.pem holds no certificate", dir.display());
        }
        let leaf = CertificateDer::pem_slice_iter(&cert_pem)
            .next()
            .ok_or_else(|| anyhow::anyhow!("{}/node.pem holds no certificate", dir.display()))?
            .map_err(|e| anyhow::anyhow!("{}/node.pem: {e}", dir.display()))?;
        PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| anyhow::anyhow!("{}/node.key: {e}", dir.display()))?;
        let names = dns_names(leaf.as_ref());
        if !names.iter().any(|n| n == node_name) {
            bail!(
                "{}/node.pem is issued for {names:?}, not for this node's name {node_name:?} \
                 (issue one with `keyraft cert issue --name {node_name}`)",
                dir.display()
            );
        }
        Ok(ClusterTls {
            ca_pem,
            cert_pem,
            key_pem,
            names,
        })
    }

    /// The DNS names this node's certificate carries.
    pub fn node_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// Server side: present this node's certificate, require one from the cluster CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// Client side, dialling the node named `peer`: trust only the cluster CA, expect `peer`
    /// in the server's certificate, present this node's certificate.
    pub fn client(&self, peer: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(self.identity())
            .domain_name(peer)
    }
}
