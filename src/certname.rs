//! The names an X.509 certificate proves: the DNS names among its subject alternative names.
//!
//! One extraction for every place that authenticates a peer by its certificate: node-to-node
//! mTLS (`rpc` checks that a caller is the member it claims to be) and hkps client
//! certificates (`api` checks that a caller is a named administrator). Only certificates that
//! rustls has already verified against a trusted CA should be passed here; this module does not
//! verify anything itself.
//!
//! A leaf module: it depends on x509-parser and rustls-pki-types only, never on another keyraft
//! module.
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// The DNS names of a DER certificate's subject alternative names (empty if it does not parse
/// or has none).
pub fn dns_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// The names in the leaf certificate a peer presented (empty without a certificate).
pub fn peer_names(certs: Option<&[CertificateDer<'_>]>) -> Vec<String> {
    certs
        .and_then(|c| c.first())
        .map(|c| dns_names(c.as_ref()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_come_from_the_san_and_nothing_else() {
        let mut params =
            rcgen::CertificateParams::new(vec!["ops-alice".into(), "127.0.0.1".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "not-a-san");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(dns_names(cert.der()), vec!["ops-alice".to_string()]);
        let der = CertificateDer::from(cert.der().to_vec());
        assert_eq!(peer_names(Some(&[der])), vec!["ops-alice".to_string()]);
        assert!(peer_names(None).is_empty());
        assert!(dns_names(b"not a certificate").is_empty());
    }
}
