//! Admin client certificates over hkps: a real `keyraft serve` with `--tls-client-ca` and
//! `--admin-cert-names`, certificates made by `keyraft cert`, and a real rustls client. An
//! admin-named certificate authorises `PUT /cluster/routing` without a token (and the audit trail
//! names it); another name from the same CA, no certificate, or a token sent over plain HTTP
//! are refused or accepted exactly as configured; lookups without a certificate still work; a
//! certificate from another CA is refused during the handshake.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use keyraft::client::request;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sequoia_openpgp::serialize::SerializeInto;

use crate::common::{free_port, TestNode};
use crate::http_api::gen;

const TOKEN: &str = "t0ken-for-admin-cert-tests";
/// The DNS name in the hkps server certificate.
const SERVER_NAME: &str = "keys-test";

fn keyraft(args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_keyraft"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "keyraft {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `keyraft cert issue --ca CA --name NAME --out DIR/NAME`; the output directory.
fn issue(ca: &Path, name: &str, dir: &Path) -> PathBuf {
    let out = dir.join(name);
    keyraft(&[
        "cert",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--name",
        name,
        "--out",
        out.to_str().unwrap(),
    ]);
    out
}

/// A status line and body read over TLS; `Err` when the handshake or the exchange failed.
fn hkps(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&Path>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(dir) => {
            let chain = CertificateDer::pem_file_iter(dir.join("node.pem"))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(dir.join("node.key")).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(SERVER_NAME).unwrap())
            .unwrap();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())
        .and_then(|_| tls.write_all(body))
        .and_then(|_| tls.flush())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // actix may close without close_notify after `Connection: close`: keep what arrived.
    if let Err(e) = tls.read_to_end(&mut raw) {
        if raw.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(e.to_string());
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no response head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    Ok((status, body.to_string()))
}

#[test]
fn an_admin_client_certificate_authorises_mutating_cluster_calls_over_hkps() {
    let pki = tempfile::tempdir().unwrap();
    let d = pki.path();
    let ca = d.join("ca");
    keyraft(&["cert", "init", ca.to_str().unwrap()]);
    let server = issue(&ca, SERVER_NAME, d);
    let alice = issue(&ca, "ops-alice", d);
    let mallory = issue(&ca, "ops-mallory", d);
    let other_ca = d.join("other-ca");
    keyraft(&["cert", "init", other_ca.to_str().unwrap()]);
    let stranger = issue(&other_ca, "ops-alice", &d.join("other"));
    let token = d.join("admin.token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let ca_pem = ca.join("ca.pem");

    let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = TestNode::start(&[
        "--tls-listen",
        &tls_addr.to_string(),
        "--tls-cert",
        server.join("node.pem").to_str().unwrap(),
        "--tls-key",
        server.join("node.key").to_str().unwrap(),
        "--tls-client-ca",
        ca_pem.to_str().unwrap(),
        "--admin-cert-names",
        "ops-alice,ops-carol",
        "--admin-token-file",
        token.to_str().unwrap(),
    ]);
    let json = [("Content-Type", "application/json")];
    let put = |client: Option<&Path>, weight: u16| {
        let body = format!("{{\"weights\": {{\"somewhere\": {weight}}}}}");
        hkps(
            tls_addr,
            &ca_pem,
            client,
            "PUT",
            "/cluster/routing",
            &json,
            body.as_bytes(),
        )
    };

    eprintln!("--- (a) the admin-named certificate, no token: accepted");
    let (status, body) = put(Some(&alice), 7).expect("an answer");
    assert_eq!(status, 200, "{body}");
    let routing = node.get("/cluster/routing").unwrap();
    assert!(
        routing.text().contains("\"somewhere\":7"),
        "{}",
        routing.text()
    );
    let audit = node
        .get_as_admin("/cluster/audit?action=routing", TOKEN)
        .unwrap()
        .text();
    assert!(
        audit.contains("\"actor\":\"cert:ops-alice\""),
        "the audit trail names the certificate: {audit}"
    );

    eprintln!("--- (b) a certificate from the same CA with another name: 401");
    let (status, body) = put(Some(&mallory), 8).expect("an answer");
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("ops-mallory") && body.contains("admin client certificate"),
        "{body}"
    );
    assert_eq!(body.trim_end().lines().count(), 1, "one line: {body}");

    eprintln!("--- (c) no certificate, no token: 401 naming both ways");
    let (status, body) = put(None, 9).expect("an answer");
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("Bearer") && body.contains("admin client certificate over hkps"),
        "{body}"
    );
    let routing = node.get("/cluster/routing").unwrap().text();
    assert!(routing.contains("\"somewhere\":7"), "unchanged: {routing}");

    eprintln!("--- a certificate from another CA: the handshake fails");
    assert!(
        put(Some(&stranger), 10).is_err(),
        "rustls refuses a client certificate that does not chain to tls_client_ca"
    );

    eprintln!("--- the token still works, over hkps and over plain HTTP");
    let bearer = format!("Bearer {TOKEN}");
    let with_token = [
        ("Content-Type", "application/json"),
        ("Authorization", bearer.as_str()),
    ];
    let body = br#"{"weights": {"somewhere": 11}}"#;
    let (status, text) = hkps(
        tls_addr,
        &ca_pem,
        None,
        "PUT",
        "/cluster/routing",
        &with_token,
        body,
    )
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let r = request(
        node.addr,
        "PUT",
        "/cluster/routing",
        &with_token,
        br#"{"weights": {"somewhere": 12}}"#,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(
        node.addr,
        "PUT",
        "/cluster/routing",
        &json,
        body,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    let audit = node
        .get_as_admin("/cluster/audit?action=routing", TOKEN)
        .unwrap()
        .text();
    assert!(audit.contains("\"actor\":\"admin-token\""), "{audit}");

    eprintln!("--- (d) lookups over hkps need no certificate");
    let cert = gen("Hkps Reader <reader@example.org>");
    let fpr = cert.fingerprint().to_hex();
    let r = node.post_keys(&cert.armored().to_vec().unwrap()).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let (status, body) = hkps(
        tls_addr,
        &ca_pem,
        None,
        "GET",
        &format!("/pks/lookup?op=get&search=0x{fpr}"),
        &[],
        b"",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("BEGIN PGP PUBLIC KEY BLOCK"), "{body}");
}
