//! HKP over HTTP, in process through the same app factory production uses (`api::app`), over
//! a real RocksDB and a real one-member Raft; plus the raw-character searches through the real
//! server and a real socket.
use std::sync::Arc;
use std::time::Duration;

use actix_web::test as at;
use keyraft::api::{self, ApiSettings, AppState, ServerSettings};
use keyraft::raft::{KeyraftNode, Keyserver, RaftNode, RaftSettings};
use keyraft::store::Store;
use openpgp::cert::prelude::*;
use openpgp::parse::Parse;
use openpgp::serialize::SerializeInto;
use sequoia_openpgp as openpgp;

/// A node in process: store, Raft, Keyserver.
pub struct InProcess {
    pub _dir: tempfile::TempDir,
    pub state: AppState,
    pub store: Store,
}

impl InProcess {
    /// Shut this node down; see [`close`].
    pub async fn close(self) {
        close(self.state, self.store).await;
    }
}

/// Shut Raft down and close the database before the test ends: RocksDB still open while the
/// test process exits races the exit and can abort it ("pthread lock: Invalid argument").
pub async fn close(state: AppState, store: Store) {
    state.keys.raft().shutdown().await;
    drop(state);
    // Bounded: a handle still held elsewhere (a server worker winding down) only costs the wait.
    tokio::task::spawn_blocking(move || store.close(Duration::from_secs(5)))
        .await
        .unwrap();
}

pub async fn in_process(max_body_bytes: usize) -> InProcess {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let raft = RaftNode::start(
        store.clone(),
        1,
        KeyraftNode::default(),
        RaftSettings::default(),
    )
    .await
    .unwrap();
    assert!(raft.initialize_if_fresh().await.unwrap());
    for _ in 0..200 {
        if raft.has_leader_and_applied() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        raft.has_leader_and_applied(),
        "one-member cluster elects itself"
    );
    let keys = Keyserver::new(raft, store.clone(), 1);
    let settings = ApiSettings {
        max_body_bytes,
        ..ApiSettings::default()
    };
    InProcess {
        _dir: dir,
        state: AppState {
            keys,
            settings: Arc::new(settings),
        },
        store,
    }
}

pub fn gen(uid: &str) -> openpgp::Cert {
    CertBuilder::general_purpose(Some(uid))
        .generate()
        .unwrap()
        .0
}

/// gpg's form encoding: every byte that is not alphanumeric is %-escaped.
pub fn gpg_form(armored: &[u8]) -> String {
    let mut s = String::from("keytext=");
    for &b in armored {
        if b.is_ascii_alphanumeric() {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

macro_rules! call {
    ($app:expr, $req:expr) => {{
        let resp = at::call_service(&$app, $req.to_request()).await;
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let body = at::read_body(resp).await.to_vec();
        (status, ct, body)
    }};
}

fn form_post(body: String) -> at::TestRequest {
    at::TestRequest::post()
        .uri("/pks/add")
        .insert_header(("content-type", "application/x-www-form-urlencoded"))
        .set_payload(body)
}

#[actix_web::test]
async fn every_lookup_op_answers_with_its_status_and_content_type() {
    let n = in_process(1 << 20).await;
    let app = at::init_service(api::app(n.state.clone())).await;
    let cert = gen("Jane Doe <jane+test@example.org>");
    let fpr = cert.fingerprint().to_hex();
    let armored = cert.armored().to_vec().unwrap();

    eprintln!("--- submit as gpg does");
    let (s, ct, body) = call!(app, form_post(gpg_form(&armored)));
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    assert!(ct.starts_with("text/plain"));
    assert_eq!(String::from_utf8_lossy(&body), format!("new {fpr}\n"));

    eprintln!("--- again, sq style (raw '='), JSON answer: unchanged");
    let sq_body = format!(
        "keytext={}",
        String::from_utf8_lossy(&armored)
            .replace('\n', "%0A")
            .replace('+', "%2B")
    );
    let (s, ct, body) = call!(app, form_post(sq_body).uri("/pks/add?options=mr"));
    assert_eq!(s, 200);
    assert!(ct.starts_with("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["keys"][0]["status"], "unchanged");
    assert_eq!(v["keys"][0]["fingerprint"], fpr);

    eprintln!("--- op=get by fingerprint, long id, short id, subkey fingerprint");
    let sub = cert
        .keys()
        .subkeys()
        .next()
        .unwrap()
        .key()
        .fingerprint()
        .to_hex();
    let keyid = cert.keyid().to_hex();
    for search in [fpr.clone(), keyid.clone(), keyid[8..].to_string(), sub] {
        let (s, ct, body) = call!(
            app,
            at::TestRequest::get().uri(&format!("/pks/lookup?op=get&options=mr&search=0x{search}"))
        );
        assert_eq!(s, 200, "search 0x{search}");
        assert_eq!(ct, "application/pgp-keys");
        let got = openpgp::Cert::from_bytes(&body).unwrap();
        assert_eq!(got.fingerprint(), cert.fingerprint());
        assert!(!got.is_tsk());
    }

    eprintln!("--- op=index machine-readable, exact");
    let created = cert
        .primary_key()
        .key()
        .creation_time()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (s, ct, body) = call!(
        app,
        at::TestRequest::get().uri("/pks/lookup?op=index&options=mr&search=jane+test@example.org")
    );
    assert_eq!(s, 200);
    assert!(ct.starts_with("text/plain"));
    let text = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "info:1:1");
    let p = openpgp::policy::StandardPolicy::new();
    let expires = cert
        .with_policy(&p, None)
        .unwrap()
        .primary_key()
        .key_expiration_time()
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                .to_string()
        })
        .unwrap_or_default();
    let algo = u8::from(cert.primary_key().key().pk_algo());
    assert_eq!(
        lines[1],
        format!("pub:{fpr}:{algo}:256:{created}:{expires}:")
    );
    assert!(
        lines[2].starts_with("uid:Jane Doe <jane+test@example.org>:"),
        "{}",
        lines[2]
    );
    assert_eq!(lines.len(), 3);

    eprintln!("--- op=index by words, HTML; vindex HTML lists signatures; stats HTML and JSON");
    let (s, ct, body) = call!(
        app,
        at::TestRequest::get().uri("/pks/lookup?op=index&search=jane%20doe")
    );
    assert_eq!(s, 200);
    assert!(ct.starts_with("text/html"));
    assert!(String::from_utf8_lossy(&body).contains(&fpr));
    let (s, ct, body) = call!(
        app,
        at::TestRequest::get().uri(&format!("/pks/lookup?op=vindex&search=0x{fpr}"))
    );
    assert_eq!(s, 200);
    assert!(ct.starts_with("text/html"));
    assert!(
        String::from_utf8_lossy(&body).contains("sig  13"),
        "positive self-certification listed"
    );
    let (s, ct, body) = call!(
        app,
        at::TestRequest::get().uri("/pks/lookup?op=stats&options=mr")
    );
    assert_eq!(s, 200);
    assert!(ct.starts_with("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["certificates"], 1);
    let (s, ct, _) = call!(app, at::TestRequest::get().uri("/pks/lookup?op=stats"));
    assert_eq!((s, ct.starts_with("text/html")), (200, true));

    eprintln!("--- health and readiness");
    let (s, _, _) = call!(app, at::TestRequest::get().uri("/health"));
    assert_eq!(s, 200);
    let (s, _, _) = call!(app, at::TestRequest::get().uri("/ready"));
    assert_eq!(s, 200);
    // Load balancers may check with HEAD (`option httpchk HEAD /ready`).
    for path in ["/health", "/ready"] {
        let (s, _, _) = call!(
            app,
            at::TestRequest::default()
                .method(actix_web::http::Method::HEAD)
                .uri(path)
        );
        assert_eq!(s, 200, "HEAD {path}");
    }
    drop(app);
    n.close().await;
}

/// Statuses for everything a client can get wrong; the stored certificate never changes.
#[actix_web::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let n = in_process(256 << 10).await;
    let app = at::init_service(api::app(n.state.clone())).await;
    let cert = gen("Alice <alice@example.org>");
    let fpr = cert.fingerprint().to_hex();
    let (s, _, _) = call!(app, form_post(gpg_form(&cert.armored().to_vec().unwrap())));
    assert_eq!(s, 200);
    let get = format!("/pks/lookup?op=get&search=0x{fpr}");
    let (_, _, before) = call!(app, at::TestRequest::get().uri(&get));

    // A standard form encoding (spaces as `+`, a real `+` as `%2B`), as an HTML form or
    // Python's urlencode sends it, is understood too.
    let standard: String = String::from_utf8(cert.armored().to_vec().unwrap())
        .unwrap()
        .chars()
        .map(|c| match c {
            ' ' => "+".to_string(),
            c if c.is_ascii_alphanumeric() || "-_.".contains(c) => c.to_string(),
            c => format!("%{:02X}", c as u32),
        })
        .collect();
    let (s, _, body) = call!(app, form_post(format!("keytext={standard}")));
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    // The media type's case does not matter; without a Content-Type, a raw armored body is
    // read as such, and a body with a keytext field as a form.
    let armored_bytes = cert.armored().to_vec().unwrap();
    let shouting = at::TestRequest::post()
        .uri("/pks/add")
        .insert_header((
            "content-type",
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
        ))
        .set_payload(gpg_form(&armored_bytes));
    let untyped = |body: Vec<u8>| at::TestRequest::post().uri("/pks/add").set_payload(body);
    for (name, req) in [
        ("upper-case media type", shouting),
        ("raw armor, no content type", untyped(armored_bytes.clone())),
        (
            "form, no content type",
            untyped(gpg_form(&armored_bytes).into_bytes()),
        ),
    ] {
        let (s, _, body) = call!(app, req);
        assert_eq!(s, 200, "{name}: {}", String::from_utf8_lossy(&body));
    }

    let secret = cert.as_tsk().armored().to_vec().unwrap();
    let armored = cert.armored().to_vec().unwrap();
    let truncated = armored[..armored.len() / 2].to_vec();
    let bomb = compression_bomb();
    let mut other = gen("Other <other@example.org>").armored().to_vec().unwrap();
    other.truncate(other.len() - 40);
    let cases: Vec<(&str, at::TestRequest, u16)> = vec![
        ("secret key", form_post(gpg_form(&secret)), 422),
        ("garbage", form_post("keytext=hello%20world".into()), 422),
        ("truncated armor", form_post(gpg_form(&truncated)), 422),
        ("compression bomb", form_post(gpg_form(&bomb)), 422),
        ("missing keytext", form_post("text=abc".into()), 400),
        (
            "invalid UTF-8 form",
            form_post(String::from_utf8_lossy(b"keytext=\xff").into_owned())
                .set_payload(&b"keytext=\xff\xfe"[..]),
            400,
        ),
        (
            "oversize body",
            form_post("keytext=".to_string() + &"A".repeat(300 << 10)),
            413,
        ),
        ("GET /pks/add", at::TestRequest::get().uri("/pks/add"), 405),
        ("POST /health", at::TestRequest::post().uri("/health"), 405),
        (
            "digest index not a number",
            at::TestRequest::get().uri("/cluster/digest?index=x"),
            400,
        ),
        (
            "DELETE /cluster/routing",
            at::TestRequest::delete().uri("/cluster/routing"),
            405,
        ),
        ("unknown path", at::TestRequest::get().uri("/nope"), 404),
        (
            "unknown op",
            at::TestRequest::get().uri("/pks/lookup?op=frob&search=x"),
            501,
        ),
        (
            "missing op",
            at::TestRequest::get().uri("/pks/lookup?search=x"),
            400,
        ),
        (
            "missing search",
            at::TestRequest::get().uri("/pks/lookup?op=get"),
            400,
        ),
        (
            "bad key id",
            at::TestRequest::get().uri("/pks/lookup?op=get&search=0x12345"),
            400,
        ),
        (
            "invalid UTF-8 search",
            at::TestRequest::get().uri("/pks/lookup?op=index&search=%FF%FE"),
            400,
        ),
        (
            "very long search",
            at::TestRequest::get()
                .uri(&format!("/pks/lookup?op=index&search={}", "a".repeat(5000))),
            400,
        ),
        (
            "nothing matches",
            at::TestRequest::get().uri("/pks/lookup?op=get&search=nobody@example.org"),
            404,
        ),
        (
            "unknown fingerprint",
            at::TestRequest::get().uri(&format!("/pks/lookup?op=get&search=0x{}", "0".repeat(40))),
            404,
        ),
    ];
    // Hundreds of bad items (bare primary keys, no self-signature): the one-line reason names
    // a few and counts the rest.
    let bare = openpgp::Packet::from(cert.primary_key().key().clone())
        .to_vec()
        .unwrap()
        .repeat(800);
    let (s, _, body) = call!(app, form_post(gpg_form(&bare)));
    let text = String::from_utf8_lossy(&body);
    assert_eq!(s, 422, "{}", &text[..text.len().min(300)]);
    assert!(
        text.len() < 2000 && text.contains("and 795 more"),
        "a short reason: {} bytes, {}",
        text.len(),
        &text[..text.len().min(300)]
    );
    for (name, req, want) in cases {
        let (s, ct, body) = call!(app, req);
        let text = String::from_utf8_lossy(&body);
        assert_eq!(s, want, "{name}: {text}");
        assert!(ct.starts_with("text/plain"), "{name}: content type {ct}");
        assert_eq!(
            text.lines().count(),
            1,
            "{name}: one-line reason, got {text:?}"
        );
        assert!(text.len() > 3, "{name}: a reason is given");
    }
    let (s, _, after) = call!(app, at::TestRequest::get().uri(&get));
    assert_eq!(s, 200);
    assert_eq!(before, after, "stored certificate unchanged");
    let (_, _, stats) = call!(
        app,
        at::TestRequest::get().uri("/pks/lookup?op=stats&options=mr")
    );
    let v: serde_json::Value = serde_json::from_slice(&stats).unwrap();
    assert_eq!(v["certificates"], 1, "nothing else was stored");
    drop(app);
    n.close().await;
}

/// A signed admin request larger than actix's default body limit (256 KiB) but within
/// `max_body_bytes` is read and judged (here: refused for its missing signature), not cut off
/// with actix's own 413: gpg-style escaping triples a certificate, so a replace of a 100 KB
/// certificate is already over 256 KiB.
#[actix_web::test]
async fn admin_bodies_get_the_configured_limit_not_actix_default() {
    let n = in_process(1 << 20).await;
    let app = at::init_service(api::app(n.state.clone())).await;
    let big = format!("keytext={}", "%41".repeat(120 << 10));
    let (s, _, body) = call!(
        app,
        at::TestRequest::post()
            .uri("/pks/replace")
            .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
            .set_payload(big)
    );
    let text = String::from_utf8_lossy(&body);
    assert_eq!(s, 403, "{text}");
    assert!(text.contains("keysig"), "{text}");
    let over = format!("keytext={}", "A".repeat(1 << 20));
    let (s, _, body) = call!(
        app,
        at::TestRequest::post()
            .uri("/pks/replace")
            .insert_header(("Content-Type", "application/x-www-form-urlencoded"))
            .set_payload(over)
    );
    assert_eq!(s, 413, "{}", String::from_utf8_lossy(&body));
    drop(app);
    n.close().await;
}

/// An armored compressed-data packet (algorithm 1, raw deflate) that would expand to 16 MiB
/// of zeros. The deflate stream is `tests/it/zeros-16MiB.deflate`, made with Python's
/// `zlib.compressobj(9, zlib.DEFLATED, -15)`: keyraft's Sequoia has no compression support,
/// so nothing here can build one, and nothing in the node will inflate it.
fn compression_bomb() -> Vec<u8> {
    let deflate = include_bytes!("zeros-16MiB.deflate");
    let body = [&[1u8][..], &deflate[..]].concat();
    let mut packet = vec![0xC8, 0xFF];
    packet.extend((body.len() as u32).to_be_bytes());
    packet.extend(body);
    let mut w = openpgp::armor::Writer::new(Vec::new(), openpgp::armor::Kind::PublicKey).unwrap();
    std::io::Write::write_all(&mut w, &packet).unwrap();
    w.finalize().unwrap()
}

/// gpg sends `< > + @ #` raw; they must work through the real HTTP stack, not only a handler.
#[actix_web::test]
async fn raw_characters_gpg_sends_work_through_a_real_socket() {
    let n = in_process(1 << 20).await;
    let cert = gen("Jane Roe <jane+x@example.org>");
    let fpr = cert.fingerprint().to_hex();
    let settings = ServerSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_listen: None,
        tls_cert: None,
        tls_key: None,
        tls_client_ca: None,
        agent_listen: None,
        workers: 1,
        request_timeout: Duration::from_secs(5),
        keep_alive: Duration::from_secs(5),
        max_connections: 100,
    };
    let (server, addrs) = api::server::start(n.state.clone(), settings).await.unwrap();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    let addr = addrs[0];
    let body = gpg_form(&cert.armored().to_vec().unwrap());
    let resp = tokio::task::spawn_blocking(move || {
        keyraft::client::request(
            addr,
            "POST",
            "/pks/add",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    for target in [
        "/pks/lookup?op=index&options=mr&fingerprint=on&search=Jane%20Roe%20<jane+x@example.org>"
            .to_string(),
        "/pks/lookup?op=index&options=mr&search=<jane+x@example.org>".to_string(),
        "/pks/lookup?op=get&options=mr&search=jane+x@example.org&exact=on".to_string(),
        "/pks/lookup?op=index&options=mr&search=jane#roe".to_string(),
        format!("/pks/lookup?op=get&search=0x{fpr}"),
    ] {
        let t = target.clone();
        let resp = tokio::task::spawn_blocking(move || {
            keyraft::client::request(addr, "GET", &t, &[], b"", Duration::from_secs(10))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        if target.contains("op=index") {
            assert!(resp.text().contains(&fpr), "{target}: {}", resp.text());
        }
    }
    eprintln!("--- HTTP/1.1 keep-alive: two requests on one connection, raw '<' in the second");
    let t2 = "GET /pks/lookup?op=index&options=mr&search=<jane+x@example.org> HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let two = format!("GET /pks/lookup?op=get&search=0x{fpr} HTTP/1.1\r\nHost: x\r\n\r\n{t2}");
    let text = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(two.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap();
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(text.contains("BEGIN PGP PUBLIC KEY BLOCK") && text.contains(&format!("pub:{fpr}")));
    handle.stop(false).await;
    n.close().await;
}

/// Writes return their log index; a read can wait for it (`min_index`) or confirm with the
/// leader first (`consistency=linearizable`); a wait that cannot finish answers 503 in bounded
/// time.
#[actix_web::test]
async fn reads_can_wait_for_a_write_index_or_be_linearizable() {
    let n = in_process(1 << 20).await;
    let app = at::init_service(api::app(n.state.clone())).await;
    let cert = gen("Lin <lin@example.org>");
    let resp = at::call_service(
        &app,
        form_post(gpg_form(&cert.armored().to_vec().unwrap())).to_request(),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 200);
    let index: u64 = resp
        .headers()
        .get("x-keyraft-log-index")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(index > 0);
    let fpr = cert.fingerprint().to_hex();
    let (s, _, _) = call!(
        app,
        at::TestRequest::get().uri(&format!(
            "/pks/lookup?op=get&search=0x{fpr}&min_index={index}&consistency=linearizable"
        ))
    );
    assert_eq!(s, 200);
    let (s, _, body) = call!(
        app,
        at::TestRequest::get().uri(&format!(
            "/pks/lookup?op=get&search=0x{fpr}&min_index={}",
            index + 1000
        ))
    );
    assert_eq!(s, 503, "{}", String::from_utf8_lossy(&body));
    drop(app);
    n.close().await;
}

/// `cert` with one more user ID, bound by its own primary key.
fn with_uid(cert: &openpgp::Cert, uid: &str) -> openpgp::Cert {
    use openpgp::packet::{signature::SignatureBuilder, UserID};
    let mut signer = cert
        .primary_key()
        .key()
        .clone()
        .parts_into_secret()
        .unwrap()
        .into_keypair()
        .unwrap();
    let uid = UserID::from(uid);
    let sig = uid
        .bind(
            &mut signer,
            cert,
            SignatureBuilder::new(openpgp::types::SignatureType::PositiveCertification),
        )
        .unwrap();
    cert.clone()
        .insert_packets(vec![openpgp::Packet::from(uid), sig.into()])
        .unwrap()
        .0
}

/// One submission holding the same certificate three times (each copy with a different new
/// user ID) is one item: the union of the copies, merged once into the stored record. Merged
/// copy by copy, each would have merged into the record as it was before the submission, and
/// apply would have seen the second and third copies race the first (conflicts).
#[actix_web::test]
async fn copies_of_one_certificate_in_one_submission_are_one_update() {
    let n = in_process(1 << 20).await;
    let app = at::init_service(api::app(n.state.clone())).await;
    let cert = gen("Alice <alice@example.org>");
    let public = |c: &openpgp::Cert| c.armored().to_vec().unwrap();
    let (s, _, _) = call!(app, form_post(gpg_form(&public(&cert))));
    assert_eq!(s, 200);
    let body = [
        public(&with_uid(&cert, "Alice Two <alice2@example.org>")),
        public(&with_uid(&cert, "Alice Three <alice3@example.org>")),
        public(&cert),
    ]
    .concat();
    let (s, _, report) = call!(app, form_post(gpg_form(&body)).uri("/pks/add?options=mr"));
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(s, 200, "{report}");
    let items = report["keys"]
        .as_array()
        .or(report.as_array())
        .cloned()
        .unwrap_or_default();
    assert_eq!(items.len(), 1, "one item for one fingerprint: {report}");
    assert_eq!(items[0]["status"], "updated", "{report}");
    assert!(items[0].get("reason").is_none(), "no conflict: {report}");
    let fpr = cert.fingerprint().to_hex();
    let (_, _, stored) = call!(
        app,
        at::TestRequest::get().uri(&format!("/pks/lookup?op=get&search=0x{fpr}"))
    );
    let stored = openpgp::Cert::from_bytes(&stored).unwrap();
    let uids: Vec<String> = stored
        .userids()
        .map(|u| String::from_utf8_lossy(u.userid().value()).into_owned())
        .collect();
    assert_eq!(uids.len(), 3, "{uids:?}");
    drop(app);
    n.close().await;
}

/// A search of several words finds the certificates whose user IDs hold every word, whichever
/// word is the common one and whatever the order of the words.
#[actix_web::test]
async fn word_searches_match_every_word_in_any_order() {
    let n = in_process(1 << 20).await;
    let app = at::init_service(api::app(n.state.clone())).await;
    for uid in [
        "Alice Common <alice@example.org>",
        "Bob Common <bob@example.org>",
        "Carol Common <carol@example.org>",
        "Dave Rare <dave@example.org>",
    ] {
        let (s, _, _) = call!(
            app,
            form_post(gpg_form(&gen(uid).armored().to_vec().unwrap()))
        );
        assert_eq!(s, 200);
    }
    for (search, want) in [
        ("common", 3),
        ("common%20alice", 1),
        ("alice%20common", 1),
        ("rare%20common", 0),
        ("common%20example", 3),
        ("dave%20rare%20example", 1),
        ("nobody%20common", 0),
    ] {
        let (s, _, body) = call!(
            app,
            at::TestRequest::get().uri(&format!("/pks/lookup?op=index&options=mr&search={search}"))
        );
        let text = String::from_utf8_lossy(&body);
        let found = text.lines().filter(|l| l.starts_with("pub:")).count();
        if want == 0 {
            assert_eq!(s, 404, "{search}: {text}");
        } else {
            assert_eq!((s, found), (200, want), "{search}: {text}");
        }
    }
    drop(app);
    n.close().await;
}

/// Several matches for one `op=get` come back as one armor block holding all of them.
#[actix_web::test]
async fn get_with_several_matches_returns_every_certificate_in_one_block() {
    let n = in_process(1 << 20).await;
    let app = at::init_service(api::app(n.state.clone())).await;
    let (a, b) = (gen("A <shared@example.org>"), gen("B <shared@example.org>"));
    for c in [&a, &b] {
        let (s, _, _) = call!(app, form_post(gpg_form(&c.armored().to_vec().unwrap())));
        assert_eq!(s, 200);
    }
    let (s, _, body) = call!(
        app,
        at::TestRequest::get().uri("/pks/lookup?op=get&search=shared@example.org")
    );
    assert_eq!(s, 200);
    assert_eq!(
        String::from_utf8_lossy(&body)
            .matches("-----BEGIN PGP PUBLIC KEY BLOCK-----")
            .count(),
        1
    );
    let mut got: Vec<String> = openpgp::cert::CertParser::from_bytes(&body)
        .unwrap()
        .map(|c| c.unwrap().fingerprint().to_hex())
        .collect();
    got.sort();
    let mut want = vec![a.fingerprint().to_hex(), b.fingerprint().to_hex()];
    want.sort();
    assert_eq!(got, want);
    drop(app);
    n.close().await;
}

#[actix_web::test]
async fn cluster_admin_calls_need_the_token_and_report_raft_state() {
    let mut n = in_process(1 << 20).await;
    let mut settings = (*n.state.settings).clone();
    settings.admin_token = Some("t0ken".into());
    n.state.settings = Arc::new(settings);
    let app = at::init_service(api::app(n.state.clone())).await;
    let leave = || at::TestRequest::post().uri("/cluster/leave");

    eprintln!("--- leave without a token, with a wrong one: 401 and nothing changes");
    let (s, _, body) = call!(app, leave());
    assert_eq!(s, 401, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("Authorization"));
    let (s, _, _) = call!(
        app,
        leave().insert_header(("authorization", "Bearer wrong"))
    );
    assert_eq!(s, 401);
    eprintln!("--- with the token: the only voter may not leave (409), unknown names are 404");
    let (s, _, body) = call!(
        app,
        leave().insert_header(("authorization", "Bearer t0ken"))
    );
    assert_eq!(s, 409, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("last voter"));
    let (s, _, _) = call!(
        app,
        leave()
            .insert_header(("authorization", "Bearer t0ken"))
            .set_payload(r#"{"name":"nobody"}"#)
    );
    assert_eq!(s, 404);
    let (s, _, _) = call!(
        app,
        leave()
            .insert_header(("authorization", "Bearer t0ken"))
            .set_payload("{not json")
    );
    assert_eq!(s, 400);
    assert_eq!(n.state.keys.raft().members().len(), 1);

    eprintln!("--- consensus and digest describe the applied state");
    let (s, _, body) = call!(app, at::TestRequest::get().uri("/cluster/consensus"));
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["state"], "Leader");
    assert!(v["term"].as_u64().unwrap() >= 1, "{v}");
    let digest = |body: &[u8]| -> serde_json::Value { serde_json::from_slice(body).unwrap() };
    let (_, _, d1) = call!(app, at::TestRequest::get().uri("/cluster/digest"));
    let (_, _, d1b) = call!(app, at::TestRequest::get().uri("/cluster/digest"));
    assert_eq!(digest(&d1), digest(&d1b), "same state, same digest");
    let armored = gen("Digest <digest@example.org>")
        .armored()
        .to_vec()
        .unwrap();
    let (s, _, _) = call!(app, form_post(gpg_form(&armored)));
    assert_eq!(s, 200);
    let (_, _, d2) = call!(app, at::TestRequest::get().uri("/cluster/digest"));
    let (d1, d2) = (digest(&d1), digest(&d2));
    assert_ne!(d1["sha256"], d2["sha256"], "a write changes the digest");
    assert!(d2["applied_index"].as_u64() > d1["applied_index"].as_u64());

    eprintln!("--- a join with a bad body is 400, not a crash");
    let (s, _, _) = call!(
        app,
        at::TestRequest::post()
            .uri("/cluster/join")
            .set_payload(r#"{"id": "x"}"#)
    );
    assert_eq!(s, 400);
    drop(app);
    n.close().await;
}
