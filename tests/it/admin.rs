//! Administrator writes against a real node process: Hockeypuck-style `/pks/delete` signed
//! with the real gpg by a key in the admin keyring (and refused when signed by anyone else),
//! the JSON admin API with `If-Match` against the `ETag` of `op=get`, conflict policies
//! changed through the API, and the audit trail telling the story. A signed request is used
//! once: its replay is 409, a signature made outside the window is 403, and both refusals are
//! audited.
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyraft::client::{request, Response};

use crate::common::{Gpg, TestNode};

/// The admin token of the node under test.
const TOKEN: &str = "admin-t0ken";

fn form(fields: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = String::new();
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        for &b in *v {
            if b.is_ascii_alphanumeric() {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out.into_bytes()
}

fn post(n: &TestNode, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request(
        n.addr,
        "POST",
        target,
        headers,
        body,
        Duration::from_secs(30),
    )
    .unwrap()
}

fn put(n: &TestNode, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    request(
        n.addr,
        "PUT",
        target,
        headers,
        body,
        Duration::from_secs(30),
    )
    .unwrap()
}

/// A detached armored signature by `signer` over `text`.
fn sign(gpg: &Gpg, signer: &str, text: &[u8]) -> Vec<u8> {
    sign_with(gpg, signer, text, &[])
}

/// The same with extra gpg options first (e.g. `--faked-system-time`).
fn sign_with(gpg: &Gpg, signer: &str, text: &[u8], extra: &[&str]) -> Vec<u8> {
    let path = gpg.path().join("keytext");
    std::fs::write(&path, text).unwrap();
    let sig = gpg.path().join("keytext.asc");
    let _ = std::fs::remove_file(&sig);
    let args: Vec<&str> = extra
        .iter()
        .copied()
        .chain([
            "--batch",
            "--yes",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--local-user",
            signer,
            "--armor",
            "--detach-sign",
            "--output",
            sig.to_str().unwrap(),
            path.to_str().unwrap(),
        ])
        .collect();
    let out = gpg.run(&args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(sig).unwrap()
}

/// Wait (bounded: 20 s) for an audit entry of `action` whose outcome starts with `prefix`
/// (refusals are audited in the background).
fn wait_audit(n: &TestNode, action: &str, prefix: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = n
            .get_as_admin(&format!("/cluster/audit?action={action}"), TOKEN)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let hit = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["outcome"].as_str().is_some_and(|o| o.starts_with(prefix)));
        if let Some(e) = hit {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {action} entry starting with {prefix:?}: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn signed_and_token_admin_writes_conflict_policies_and_the_audit_trail() {
    eprintln!("--- an admin key and a user key, made by gpg");
    let gpg = Gpg::new("hkp://127.0.0.1:1", "");
    let (admin, _) = gpg.gen_key("Keyserver Admin <admin@example.org>");
    let (bob, _) = gpg.gen_key("Bob <bob@example.org>");
    let (mallory, _) = gpg.gen_key("Mallory <mallory@example.org>");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let old_admin = {
        let made = (now - 3 * 3600).to_string();
        let uid = "Old Admin <old-admin@example.org>";
        let out = gpg.run(
            &[
                "--faked-system-time",
                &made,
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-gen-key",
                uid,
                "ed25519",
                "sign",
                "never",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        gpg.fingerprints(uid)[0].clone()
    };
    let export = |who: &str| gpg.run(&["--armor", "--export", who], None).stdout;
    let conf_dir = tempfile::tempdir().unwrap();
    let keyring = conf_dir.path().join("admins.asc");
    std::fs::write(&keyring, [export(&admin), export(&old_admin)].concat()).unwrap();
    let token = conf_dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = conf_dir.path().join("hkp.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nadmin_keyring = {:?}\nadmin_token_file = {:?}\n",
            keyring.display().to_string(),
            token.display().to_string()
        ),
    )
    .unwrap();
    let node = TestNode::start(&["--config", config.to_str().unwrap()]);
    for who in [&bob, &mallory] {
        let r = node.post_keys(&export(who)).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let get = |fpr: &str| {
        node.get(&format!("/pks/lookup?op=get&search=0x{fpr}"))
            .unwrap()
    };
    let etag = get(&mallory)
        .header("etag")
        .expect("op=get answers an ETag")
        .to_string();
    eprintln!("--- mallory's certificate changes: her old ETag is stale");
    let out = gpg.run(
        &[
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-add-uid",
            &mallory,
            "Mallory Two <mallory2@example.org>",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = node.post_keys(&export(&mallory)).unwrap();
    assert!(r.text().contains("updated"), "{}", r.text());
    assert_ne!(get(&mallory).header("etag"), Some(etag.as_str()));

    eprintln!("--- /pks/delete signed by a non-admin key, or unsigned: 403, nothing changes");
    let keytext = [&b"/pks/delete\n"[..], &export(&bob)].concat();
    let forged = sign(&gpg, &mallory, &keytext);
    let ct = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = post(
        &node,
        "/pks/delete",
        &ct,
        &form(&[("keytext", &keytext), ("keysig", &forged)]),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let r = post(&node, "/pks/delete", &ct, &form(&[("keytext", &keytext)]));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(get(&bob).status, 200);

    eprintln!("--- signed by an admin key two hours ago: 403, outside the window; audited");
    let two_hours_ago = (now - 2 * 3600).to_string();
    let old_sig = sign_with(
        &gpg,
        &old_admin,
        &keytext,
        &["--faked-system-time", &two_hours_ago],
    );
    let r = post(
        &node,
        "/pks/delete",
        &ct,
        &form(&[("keytext", &keytext), ("keysig", &old_sig)]),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("more than the 3600 s allowed"),
        "{}",
        r.text()
    );
    assert_eq!(get(&bob).status, 200);
    let e = wait_audit(&node, "delete", "refused: signature made at");
    assert_eq!(e["actor"], format!("admin-key {old_admin}"));
    assert_eq!(e["fingerprint"], bob.as_str());

    eprintln!("--- signed by the admin key: deleted");
    let sig = sign(&gpg, &admin, &keytext);
    let r = post(
        &node,
        "/pks/delete",
        &ct,
        &form(&[("keytext", &keytext), ("keysig", &sig)]),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&bob).status, 404);

    eprintln!("--- the same signed request again: 409, signature already used; audited");
    let r = post(
        &node,
        "/pks/delete",
        &ct,
        &form(&[("keytext", &keytext), ("keysig", &sig)]),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.text().trim(), "signature already used");
    let e = wait_audit(&node, "delete", "refused: signature already used");
    assert_eq!(e["actor"], format!("admin-key {admin}"));

    eprintln!("--- JSON admin delete: a stale If-Match is 412, the current ETag deletes");
    let bearer = format!("Bearer {TOKEN}");
    let auth = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    let body = format!(r#"{{"fingerprint":"{mallory}","reason":"GDPR"}}"#);
    let r = post(
        &node,
        "/cluster/admin/delete?options=mr",
        &[auth[0], auth[1], ("If-Match", &etag)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 412, "{}", r.text());
    assert_eq!(get(&mallory).status, 200);
    let mallory_tag = get(&mallory).header("etag").unwrap().to_string();
    let r = post(
        &node,
        "/cluster/admin/delete",
        &[auth[0], auth[1], ("If-Match", &mallory_tag)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&mallory).status, 404);
    let r = post(&node, "/cluster/admin/delete", &[auth[1]], body.as_bytes());
    assert_eq!(r.status, 401);

    eprintln!("--- policies: read, change with the token, refuse nonsense");
    let p: serde_json::Value =
        serde_json::from_slice(&node.get("/cluster/conflicts/policies").unwrap().body).unwrap();
    assert_eq!(p["add"], "merge");
    assert_eq!(p["add_after_delete"], "manual");
    let r = put(
        &node,
        "/cluster/conflicts/policies",
        &auth,
        br#"{"add":"manual"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = put(
        &node,
        "/cluster/conflicts/policies",
        &auth,
        br#"{"add":"coin-flip"}"#,
    );
    assert_eq!(r.status, 400);
    let r = put(
        &node,
        "/cluster/conflicts/policies",
        &[auth[1]],
        br#"{"add":"merge"}"#,
    );
    assert_eq!(r.status, 401);
    let p: serde_json::Value =
        serde_json::from_slice(&node.get("/cluster/conflicts/policies").unwrap().body).unwrap();
    assert_eq!(p["add"], "manual");
    assert_eq!(
        node.get("/cluster/conflicts").unwrap().status,
        401,
        "conflicts name uploaders: admins only"
    );
    let c: serde_json::Value =
        serde_json::from_slice(&node.get_as_admin("/cluster/conflicts", TOKEN).unwrap().body)
            .unwrap();
    assert!(
        c["conflicts"].as_array().unwrap().is_empty(),
        "no race happened: {c}"
    );
    let status = |target: &str| node.get_as_admin(target, TOKEN).unwrap().status;
    assert_eq!(status("/cluster/conflicts/77"), 404);
    assert_eq!(status("/cluster/conflicts/x"), 400);
    assert_eq!(node.get("/cluster/conflicts/77").unwrap().status, 401);

    eprintln!("--- the audit trail tells the story");
    let r = node.get("/cluster/audit?format=jsonl").unwrap();
    assert_eq!(
        r.status, 401,
        "the audit trail names uploaders: admins only"
    );
    let r = node
        .get_as_admin("/cluster/audit?format=jsonl", TOKEN)
        .unwrap();
    assert_eq!(r.status, 200);
    let all: Vec<serde_json::Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        all[0]["action"], "membership",
        "the bootstrap is audited: {all:?}"
    );
    assert!(all[0]["outcome"].as_str().unwrap().starts_with("voters ["));
    let lines: Vec<serde_json::Value> = all
        .into_iter()
        .filter(|e| e["action"] != "membership")
        .collect();
    let story: Vec<(String, String)> = lines
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let window = story[3].1.clone();
    assert!(window.starts_with("refused: signature made at"), "{window}");
    assert_eq!(
        story,
        vec![
            ("add".to_string(), "new".to_string()),
            ("add".into(), "new".into()),
            ("add".into(), "updated".into()),
            ("delete".into(), window),
            ("delete".into(), "deleted".into()),
            ("delete".into(), "refused: signature already used".into()),
            (
                "delete".into(),
                format!("If-Match failed (current {})", mallory_tag)
            ),
            ("delete".into(), "deleted".into()),
            (
                "policies".into(),
                lines[8]["outcome"].as_str().unwrap().to_string()
            ),
        ],
        "{lines:?}"
    );
    assert_eq!(lines[4]["actor"], format!("admin-key {admin}"));
    assert_eq!(lines[7]["actor"], "admin-token");
    assert!(lines[8]["outcome"]
        .as_str()
        .unwrap()
        .contains("add: Manual"));
    assert!(lines[0]["actor"]
        .as_str()
        .unwrap()
        .starts_with("hkp 127.0.0.1"));

    eprintln!("--- paging through the trail, one entry at a time, with next_from");
    // Three certificates in one submission: three entries at one log index.
    let three: Vec<u8> = crate::common::debian_certs()
        .into_iter()
        .take(3)
        .flat_map(|(_, c)| c)
        .collect();
    assert_eq!(node.post_keys(&three).unwrap().status, 200);
    let whole: serde_json::Value = serde_json::from_slice(
        &node
            .get_as_admin("/cluster/audit?limit=1000", TOKEN)
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(whole["next_from"].is_null(), "one page holds it all");
    let whole = whole["entries"].as_array().unwrap().clone();
    let mut paged = Vec::new();
    let mut from = "0".to_string();
    for _ in 0..=whole.len() {
        let r = node
            .get_as_admin(&format!("/cluster/audit?limit=1&from={from}"), TOKEN)
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        paged.extend(v["entries"].as_array().unwrap().iter().cloned());
        match v["next_from"].as_str() {
            Some(next) => {
                assert_eq!(r.header("x-keyraft-next-from"), Some(next));
                from = next.to_string();
            }
            None => break,
        }
    }
    assert_eq!(paged, whole, "pages of one entry add up to the whole trail");
    let last = &whole[whole.len() - 1];
    assert_eq!(
        whole.iter().filter(|e| e["index"] == last["index"]).count(),
        3,
        "the three certificates of one submission: {last}"
    );
    let r = node.get_as_admin("/cluster/audit?from=1.x", TOKEN).unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
}
