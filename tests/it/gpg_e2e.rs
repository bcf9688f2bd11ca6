//! The real `gpg` (and Debian's `sq`) against the built binary over real sockets. One gpg
//! home (and dirmngr) per client, as HKP.md recommends.
use super::common::{Gpg, TestNode};

fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keyserver(node: &TestNode) -> String {
    format!("hkp://{}", node.addr)
}

#[test]
fn gpg_send_keys_then_recv_keys_by_fingerprint_long_id_short_id_and_subkey() {
    let node = TestNode::start(&[]);
    let alice = Gpg::new(&keyserver(&node), "");
    let (fpr, sub) = alice.gen_key("Alice Example <alice@example.org>");
    eprintln!("--- send-keys");
    ok(
        &alice.run(&["--batch", "--send-keys", &fpr], None),
        "send-keys",
    );
    for (what, query) in [
        ("fingerprint", fpr.clone()),
        ("long key id", fpr[24..].to_string()),
        ("short key id", fpr[32..].to_string()),
        ("subkey fingerprint", sub.clone()),
    ] {
        eprintln!("--- recv-keys by {what}");
        let bob = Gpg::new(&keyserver(&node), "");
        ok(&bob.run(&["--batch", "--recv-keys", &query], None), what);
        assert!(
            bob.has_key(&fpr),
            "{what}: the primary certificate was imported"
        );
        assert_eq!(
            bob.fingerprints(&fpr),
            vec![fpr.clone(), sub.clone()],
            "{what}: with its subkey"
        );
    }
}

#[test]
fn gpg_search_keys_by_address_and_by_name_with_raw_plus_and_angle_brackets() {
    let node = TestNode::start(&[]);
    let jane = Gpg::new(&keyserver(&node), "");
    let (fpr, _) = jane.gen_key("Jane Roe <jane+test@example.org>");
    ok(
        &jane.run(&["--batch", "--send-keys", &fpr], None),
        "send-keys",
    );
    for pattern in [
        "jane+test@example.org",
        "Jane Roe",
        "Jane Roe <jane+test@example.org>",
    ] {
        eprintln!("--- search-keys {pattern:?} (batch lists and exits)");
        let bob = Gpg::new(&keyserver(&node), "");
        let out = bob.run(
            &["--batch", "--with-colons", "--search-keys", pattern],
            None,
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("pub:{fpr}")),
            "{pattern}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("uid:Jane Roe <jane+test@example.org>"),
            "{pattern}: {stdout}"
        );
    }
    eprintln!("--- search-keys and pick entry 1 with --command-fd");
    let bob = Gpg::new(&keyserver(&node), "");
    let out = bob.run(
        &[
            "--command-fd",
            "0",
            "--search-keys",
            "Jane Roe <jane+test@example.org>",
        ],
        Some("1\n"),
    );
    ok(&out, "interactive search-keys");
    assert!(bob.has_key(&fpr));
}

#[test]
fn gpg_refresh_keys_fetches_a_new_user_id() {
    let node = TestNode::start(&[]);
    let alice = Gpg::new(&keyserver(&node), "");
    let (fpr, _) = alice.gen_key("Alice <alice@example.org>");
    ok(
        &alice.run(&["--batch", "--send-keys", &fpr], None),
        "send-keys",
    );
    let bob = Gpg::new(&keyserver(&node), "");
    ok(
        &bob.run(&["--batch", "--recv-keys", &fpr], None),
        "recv-keys",
    );
    eprintln!("--- alice adds a user id and sends again");
    ok(
        &alice.run(
            &[
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-add-uid",
                &fpr,
                "Alice Work <alice@work.example>",
            ],
            None,
        ),
        "quick-add-uid",
    );
    ok(
        &alice.run(&["--batch", "--send-keys", &fpr], None),
        "send-keys again",
    );
    eprintln!("--- bob refreshes");
    ok(
        &bob.run(&["--batch", "--refresh-keys"], None),
        "refresh-keys",
    );
    let out = bob.run(&["--batch", "--with-colons", "--list-keys", &fpr], None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Alice Work <alice@work.example>"));
}

#[test]
fn gpg_locate_keys_through_the_keyserver() {
    let node = TestNode::start(&[]);
    let carol = Gpg::new(&keyserver(&node), "");
    let (fpr, _) = carol.gen_key("Carol <carol@example.org>");
    ok(
        &carol.run(&["--batch", "--send-keys", &fpr], None),
        "send-keys",
    );
    let dave = Gpg::new(&keyserver(&node), "");
    let out = dave.run(
        &[
            "--batch",
            "--auto-key-locate",
            "clear,keyserver",
            "--locate-keys",
            "carol@example.org",
        ],
        None,
    );
    ok(&out, "locate-keys");
    assert!(dave.has_key(&fpr));
}

#[test]
fn sq_fetches_and_sends_keys() {
    let node = TestNode::start(&[]);
    let alice = Gpg::new(&keyserver(&node), "");
    let (fpr, _) = alice.gen_key("Alice <alice@example.org>");
    ok(
        &alice.run(&["--batch", "--send-keys", &fpr], None),
        "send-keys",
    );
    let server = format!("hkp://{}", node.addr);
    eprintln!("--- sq keyserver get by fingerprint and by address");
    for query in [fpr.as_str(), "alice@example.org"] {
        let out = alice.run_program(
            "sq",
            &[
                "keyserver",
                "-p",
                "insecure",
                "--server",
                &server,
                "get",
                query,
            ],
            None,
        );
        ok(&out, "sq keyserver get");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("BEGIN PGP PUBLIC KEY BLOCK"),
            "{query}: {text}"
        );
    }
    eprintln!("--- sq keyserver send");
    let other = Gpg::new(&keyserver(&node), "");
    let (fpr2, _) = other.gen_key("Erin <erin@example.org>");
    let exported = other.run(&["--batch", "--armor", "--export", &fpr2], None);
    let file = other.path().join("erin.asc");
    std::fs::write(&file, &exported.stdout).unwrap();
    let out = other.run_program(
        "sq",
        &[
            "keyserver",
            "-p",
            "insecure",
            "--server",
            &server,
            "send",
            file.to_str().unwrap(),
        ],
        None,
    );
    ok(&out, "sq keyserver send");
    let r = node
        .get(&format!("/pks/lookup?op=get&search=0x{fpr2}"))
        .unwrap();
    assert_eq!(r.status, 200);
}

/// hkps with a private CA: dirmngr needs a TLS name with a dot, so the gpg side runs in a
/// private mount namespace whose /etc/hosts maps keys.test.example to 127.0.0.1.
#[test]
fn gpg_over_hkps_with_a_private_ca() {
    let pki = tempfile::tempdir().unwrap();
    let d = pki.path();
    let sh = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=keyraft-test-ca 2>/dev/null");
    sh("openssl req -newkey rsa:2048 -nodes -keyout node.key -out node.csr -subj /CN=keys.test.example 2>/dev/null");
    std::fs::write(
        d.join("ext"),
        "subjectAltName=DNS:keys.test.example,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    sh("openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out node.pem -days 2 -extfile ext 2>/dev/null");
    let hosts = d.join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost keys.test.example\n").unwrap();

    let tls_port = super::common::free_port();
    let tls = format!("127.0.0.1:{tls_port}");
    let (cert, key) = (d.join("node.pem"), d.join("node.key"));
    let node = TestNode::start(&[
        "--tls-listen",
        &tls,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let ks = format!("hkps://keys.test.example:{tls_port}");
    let ca = format!("hkp-cacert {}\n", d.join("ca.pem").display());
    let in_ns = |g: &Gpg, args: &str| {
        let script = format!(
            "mount --bind {} /etc/hosts && exec gpg {args}",
            hosts.display()
        );
        g.run_program("unshare", &["-m", "sh", "-c", &script], None)
    };
    let alice = Gpg::new(&ks, &ca);
    let (fpr, _) = alice.gen_key("Alice TLS <alice@tls.example>");
    eprintln!("--- send over hkps");
    ok(
        &in_ns(&alice, &format!("--batch --send-keys {fpr}")),
        "hkps send-keys",
    );
    assert_eq!(
        node.get(&format!("/pks/lookup?op=get&search=0x{fpr}"))
            .unwrap()
            .status,
        200
    );
    eprintln!("--- receive over hkps");
    let bob = Gpg::new(&ks, &ca);
    ok(
        &in_ns(&bob, &format!("--batch --recv-keys {fpr}")),
        "hkps recv-keys",
    );
    assert!(bob.has_key(&fpr));
}
