//! The command line: `keyraft serve`, `import`, `export`, `cert`, `leave`.
//!
//! Part of the `main` layer: it parses arguments and calls `node` (serve), the HTTP client
//! (import: a client of a running node, so bulk loads take the same Raft path as every
//! write), or the store read-only (export).
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::sync::Mutex;

use sequoia_openpgp::armor::{Reader, ReaderMode};

use crate::config::Config;
use crate::pgp::{armor_blocks, CertSplitter};

/// keyraft: a Raft-replicated OpenPGP keyserver speaking HKP.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once at start-up: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: HKP (and hkps) listeners over a Raft-replicated RocksDB store. A node with
    /// an empty data directory initialises a one-member cluster; a restart resumes it.
    Serve {
        /// Configuration file (see docs/configuration.md). Without it, built-in defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Data directory (overrides node.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HKP listen address (overrides hkp.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// hkps listen address (overrides hkp.tls_listen; needs tls_cert and tls_key).
        #[arg(long)]
        tls_listen: Option<SocketAddr>,
        /// PEM certificate chain for hkps (overrides hkp.tls_cert).
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        /// PEM private key for hkps (overrides hkp.tls_key).
        #[arg(long)]
        tls_key: Option<PathBuf>,
        /// PEM bundle of the CA issuing hkps client certificates (overrides hkp.tls_client_ca).
        #[arg(long)]
        tls_client_ca: Option<PathBuf>,
        /// This node's unique name (overrides cluster.name; default: the host name).
        #[arg(long)]
        name: Option<String>,
        /// Node-to-node gRPC listener (overrides cluster.raft_listen).
        #[arg(long)]
        raft_listen: Option<SocketAddr>,
        /// Address peers use to reach the gRPC listener (overrides cluster.advertise).
        #[arg(long)]
        advertise: Option<String>,
        /// HTTP (HKP) addresses of members to join on first start, comma-separated (overrides
        /// cluster.join).
        #[arg(long, value_delimiter = ',')]
        join: Vec<String>,
        /// File with the cluster secret (overrides cluster.secret_file).
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Directory with ca.pem, node.pem, node.key for mTLS between nodes, as written by
        /// `keyraft cert issue` (overrides cluster.tls_dir).
        #[arg(long)]
        cluster_tls_dir: Option<PathBuf>,
        /// Node-to-node traffic without TLS: local experiments only.
        #[arg(long)]
        insecure_plaintext: bool,
        /// Local IP for outgoing node-to-node connections (overrides cluster.source_ip).
        #[arg(long)]
        source_ip: Option<std::net::IpAddr>,
        /// File with the bearer token for mutating /cluster calls (overrides
        /// cluster.admin_token_file).
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
        /// Names of hkps client certificates allowed to make mutating /cluster calls,
        /// comma-separated (overrides cluster.admin_cert_names; needs --tls-client-ca).
        #[arg(long, value_delimiter = ',')]
        admin_cert_names: Vec<String>,
    },
    /// Create the cluster CA and node certificates for mTLS between nodes.
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
    /// Remove a member from the cluster gracefully (POST /cluster/leave): leadership moves
    /// first if it leads. Stop the removed node afterwards.
    Leave {
        /// HKP address of any member.
        #[arg(long, default_value = "127.0.0.1:11371")]
        server: String,
        /// File with the admin token.
        #[arg(long)]
        token_file: PathBuf,
        /// Name of the member to remove (default: the member at --server).
        #[arg(long)]
        name: Option<String>,
    },
    /// Bulk-load keyring dumps (binary or armored) into a running node through /pks/add, in
    /// batches, with a progress bar and a summary of new/updated/unchanged/rejected.
    Import {
        /// HKP address of the node.
        #[arg(long, default_value = "127.0.0.1:11371")]
        server: String,
        /// Certificates per batch (one Raft entry each; at most 10,000).
        #[arg(long, default_value_t = 200)]
        batch: usize,
        /// Maximum bytes per batch.
        #[arg(long, default_value_t = 4 << 20)]
        batch_bytes: usize,
        /// Hide the progress bar.
        #[arg(long)]
        quiet: bool,
        /// Keyring files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Fault injection for tests of `/cluster/repair`: remove one certificate from a STOPPED
    /// node's replica directly, bypassing Raft, so that this replica differs from the others.
    #[command(hide = true)]
    FaultDropCert {
        /// Data directory of the stopped node.
        #[arg(long)]
        data_dir: PathBuf,
        /// Primary fingerprint (hex).
        fingerprint: String,
    },
    /// Write every stored certificate as a binary keyring (a dump `import` reads back). Opens
    /// the data directory read-only, so it works while the node runs.
    Export {
        /// Data directory of the node.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// Output file (default: standard output).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// `keyraft cert` actions.
#[derive(Debug, Subcommand)]
pub enum CertAction {
    /// Create a new cluster CA: DIR/ca.pem and DIR/ca.key (never overwrites).
    Init {
        /// Directory for the CA.
        dir: PathBuf,
    },
    /// Issue a node certificate from the CA: OUT/ca.pem, OUT/node.pem, OUT/node.key.
    Issue {
        /// Directory of the CA (from `keyraft cert init`).
        #[arg(long)]
        ca: PathBuf,
        /// The node's name (its --name); becomes the certificate's DNS name.
        #[arg(long)]
        name: String,
        /// Output directory (the node's --cluster-tls-dir).
        #[arg(long)]
        out: PathBuf,
        /// Extra DNS names or IP addresses for the certificate.
        #[arg(long)]
        san: Vec<String>,
    },
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            data_dir,
            listen,
            tls_listen,
            tls_cert,
            tls_key,
            tls_client_ca,
            name,
            raft_listen,
            advertise,
            join,
            secret_file,
            cluster_tls_dir,
            insecure_plaintext,
            source_ip,
            admin_token_file,
            admin_cert_names,
        } => {
            let mut c = Config::load_unvalidated(config.as_deref(), std::env::vars())?;
            c.node.data_dir = data_dir.unwrap_or(c.node.data_dir);
            c.hkp.listen = listen.unwrap_or(c.hkp.listen);
            c.hkp.tls_listen = tls_listen.or(c.hkp.tls_listen);
            c.hkp.tls_cert = tls_cert.or(c.hkp.tls_cert);
            c.hkp.tls_key = tls_key.or(c.hkp.tls_key);
            c.hkp.tls_client_ca = tls_client_ca.or(c.hkp.tls_client_ca);
            c.cluster.name = name.unwrap_or(c.cluster.name);
            c.cluster.raft_listen = raft_listen.or(c.cluster.raft_listen);
            c.cluster.advertise = advertise.or(c.cluster.advertise);
            if !join.is_empty() {
                c.cluster.join = join;
            }
            c.cluster.secret_file = secret_file.or(c.cluster.secret_file);
            c.cluster.tls_dir = cluster_tls_dir.or(c.cluster.tls_dir);
            c.cluster.insecure_plaintext |= insecure_plaintext;
            c.cluster.source_ip = source_ip.or(c.cluster.source_ip);
            c.cluster.admin_token_file = admin_token_file.or(c.cluster.admin_token_file);
            if !admin_cert_names.is_empty() {
                c.cluster.admin_cert_names = admin_cert_names;
            }
            c.validate()?;
            serve(c)
        }
        Command::Import {
            server,
            batch,
            batch_bytes,
            quiet,
            files,
        } => import(
            &server,
            batch.clamp(1, crate::pgp::MAX_SUBMISSION_ITEMS),
            batch_bytes,
            quiet,
            &files,
        ),
        Command::Export { data_dir, output } => export(&data_dir, output.as_deref()),
        Command::Cert { action } => cert(action),
        Command::FaultDropCert {
            data_dir,
            fingerprint,
        } => fault_drop_cert(&data_dir, &fingerprint),
        Command::Leave {
            server,
            token_file,
            name,
        } => leave(&server, &token_file, name.as_deref()),
    }
}

fn cert(action: CertAction) -> anyhow::Result<()> {
    let written = match action {
        CertAction::Init { dir } => crate::rpc::certs::init_ca(&dir)?,
        CertAction::Issue { ca, name, out, san } => {
            crate::rpc::certs::issue(&ca, &name, &san, &out)?
        }
    };
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(())
}

fn resolve(server: &str) -> anyhow::Result<SocketAddr> {
    server
        .trim_start_matches("http://")
        .trim_start_matches("hkp://")
        .trim_end_matches('/')
        .to_socket_addrs()
        .with_context(|| format!("resolving {server}"))?
        .next()
        .context("no address")
}

fn leave(server: &str, token_file: &Path, name: Option<&str>) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading {}", token_file.display()))?;
    let body = match name {
        Some(n) => serde_json::json!({ "name": n }).to_string(),
        None => String::new(),
    };
    let auth = format!("Bearer {}", token.trim());
    let r = crate::client::request(
        resolve(server)?,
        "POST",
        "/cluster/leave",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
        Duration::from_secs(60),
    )?;
    if r.status != 200 {
        bail!("{server} answered {}: {}", r.status, r.text().trim());
    }
    println!("{}", r.text().trim());
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.node.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let node = crate::node::Node::start(&config).await?;
        node.run().await
    })
}

/// Import totals.
#[derive(Debug, Default)]
struct Totals {
    new: u64,
    updated: u64,
    unchanged: u64,
    rejected: u64,
    reasons: std::collections::BTreeMap<String, u64>,
}

fn import(
    server: &str,
    batch: usize,
    batch_bytes: usize,
    quiet: bool,
    files: &[PathBuf],
) -> anyhow::Result<()> {
    let addr = resolve(server)?;
    let total_bytes: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total_bytes)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
        )
        .expect("valid template"),
    );
    let started = Instant::now();
    let totals = Mutex::new(Totals::default());
    let mut certs = 0u64;
    // Two batches in flight: the node validates one while it commits and applies the other.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
    let rx = Mutex::new(rx);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let next = rx.lock().expect("not poisoned").recv();
                        let Ok(body) = next else { return Ok(()) };
                        post_batch(addr, &body, &totals)?;
                    }
                })
            })
            .collect();
        let mut consumed = 0u64;
        let mut feed = || -> anyhow::Result<()> {
            for file in files {
                let mut pending = Vec::new();
                let mut in_batch = 0usize;
                for chunk in keyring_chunks(file)? {
                    let chunk = chunk.with_context(|| format!("reading {}", file.display()))?;
                    consumed += chunk.len() as u64;
                    certs += 1;
                    pending.extend_from_slice(&chunk);
                    in_batch += 1;
                    if in_batch >= batch || pending.len() >= batch_bytes {
                        tx.send(std::mem::take(&mut pending))
                            .context("import workers stopped")?;
                        in_batch = 0;
                    }
                    bar.set_position(consumed.min(total_bytes));
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_message(format!("{certs} certs, {:.0} certs/s", certs as f64 / secs));
                }
                if in_batch > 0 {
                    tx.send(pending).context("import workers stopped")?;
                }
            }
            Ok(())
        };
        let fed = feed();
        drop(tx);
        for w in workers {
            w.join().expect("import worker panicked")?;
        }
        fed
    })?;
    bar.finish();
    let totals = totals.into_inner().expect("not poisoned");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "imported {certs} certificates ({:.1} MB) in {secs:.2} s: {:.0} certs/s, {:.1} MB/s",
        total_bytes as f64 / 1e6,
        certs as f64 / secs.max(1e-3),
        total_bytes as f64 / 1e6 / secs.max(1e-3)
    );
    println!(
        "new {}, updated {}, unchanged {}, rejected {}",
        totals.new, totals.updated, totals.unchanged, totals.rejected
    );
    for (reason, n) in &totals.reasons {
        println!("  rejected {n}: {reason}");
    }
    Ok(())
}

/// Certificate-sized chunks of a keyring file, binary or armored: binary files are streamed;
/// armored dumps are read whole and de-armored block by block.
fn keyring_chunks(
    path: &Path,
) -> anyhow::Result<Box<dyn Iterator<Item = std::io::Result<Vec<u8>>>>> {
    let mut file = BufReader::new(
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
    );
    let head = std::io::BufRead::fill_buf(&mut file)?;
    let armored = head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'-');
    if !armored {
        return Ok(Box::new(CertSplitter::new(file)));
    }
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    let mut binary = Vec::new();
    for block in armor_blocks(&text) {
        let mut r = Reader::from_bytes(block, ReaderMode::Tolerant(None));
        r.read_to_end(&mut binary)
            .with_context(|| format!("de-armoring {}", path.display()))?;
    }
    Ok(Box::new(CertSplitter::new(std::io::Cursor::new(binary))))
}

fn post_batch(addr: SocketAddr, body: &[u8], totals: &Mutex<Totals>) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(200);
    for attempt in 0..5 {
        let r = crate::client::request(
            addr,
            "POST",
            "/pks/add?options=mr",
            &[("Content-Type", "application/pgp-keys")],
            body,
            Duration::from_secs(120),
        );
        match r {
            Ok(resp) if resp.status == 200 => {
                let v: serde_json::Value =
                    serde_json::from_slice(&resp.body).context("server answer is not JSON")?;
                let mut totals = totals.lock().expect("not poisoned");
                for k in v["keys"].as_array().into_iter().flatten() {
                    match k["status"].as_str() {
                        Some("new") => totals.new += 1,
                        Some("updated") => totals.updated += 1,
                        Some("unchanged") => totals.unchanged += 1,
                        _ => {
                            totals.rejected += 1;
                            let reason = k["reason"].as_str().unwrap_or("unknown").to_string();
                            *totals.reasons.entry(reason).or_default() += 1;
                        }
                    }
                }
                return Ok(());
            }
            Ok(resp) if resp.status == 422 => {
                let mut totals = totals.lock().expect("not poisoned");
                totals.rejected += 1;
                *totals
                    .reasons
                    .entry(resp.text().trim().to_string())
                    .or_default() += 1;
                return Ok(());
            }
            Ok(resp) if resp.status == 503 && attempt < 4 => {}
            Ok(resp) => bail!("server answered {}: {}", resp.status, resp.text().trim()),
            Err(e) if attempt < 4 => tracing::warn!("batch failed ({e}), retrying"),
            Err(e) => return Err(e).context("posting a batch"),
        }
        std::thread::sleep(delay);
        delay *= 2;
    }
    bail!("server unavailable")
}

fn fault_drop_cert(data_dir: &Path, fingerprint: &str) -> anyhow::Result<()> {
    let fpr = hex::decode(fingerprint.trim()).context("fingerprint must be hex")?;
    let store = crate::store::Store::open(data_dir)?;
    let mut batch = store.begin_apply();
    anyhow::ensure!(
        batch.delete_cert(&fpr)?,
        "no certificate {fingerprint} in {}",
        data_dir.display()
    );
    batch.commit()?;
    eprintln!(
        "dropped {fingerprint} from {} (bypassing Raft)",
        data_dir.display()
    );
    Ok(())
}

fn export(data_dir: &Path, output: Option<&Path>) -> anyhow::Result<()> {
    // Next to a running node, a file the open lists can be gone by the time it is read (the
    // node flushes and compacts): open again, a bounded number of times.
    let mut tries = 0;
    let store = loop {
        match crate::store::Store::open_read_only(data_dir) {
            Ok(s) => break s,
            Err(e) if tries < 9 => {
                tries += 1;
                tracing::debug!("export: opening the database again after: {e}");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut n = 0u64;
    store.for_each_cert(|r| {
        n += 1;
        out.write_all(&r.cert)
    })?;
    out.flush()?;
    eprintln!("exported {n} certificates");
    Ok(())
}
