//! Observability and routing, in process through the one app factory over a real RocksDB and a
//! real one-member Raft: `/cluster/performance` counts what was done, `/cluster/load` has
//! figures, `PUT /cluster/routing` needs the token, refuses bad values with a one-line reason,
//! and changes what lookups and `/ready` do.
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Service, ServiceResponse};
use actix_web::test as at;
use keyraft::api::{self, ApiSettings, AppState};
use keyraft::raft::{KeyraftNode, Keyserver, RaftNode, RaftSettings};
use keyraft::store::Store;
use sequoia_openpgp::serialize::SerializeInto;
use serde_json::{json, Value};

use crate::http_api::{gen, gpg_form};

const TOKEN: &str = "t0ken";

/// A one-member cluster named `name`, with the admin token [`TOKEN`].
async fn named(name: &str) -> (tempfile::TempDir, AppState, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let me = KeyraftNode {
        name: name.into(),
        ..KeyraftNode::default()
    };
    let raft = RaftNode::start(store.clone(), 1, me, RaftSettings::default())
        .await
        .unwrap();
    assert!(raft.initialize_if_fresh().await.unwrap());
    for _ in 0..200 {
        if raft.has_leader_and_applied() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(raft.has_leader_and_applied());
    let settings = ApiSettings {
        admin_token: Some(TOKEN.into()),
        ..ApiSettings::default()
    };
    let state = AppState {
        keys: Keyserver::new(raft, store.clone(), 1),
        settings: Arc::new(settings),
    };
    (dir, state, store)
}

/// One answer: status, a header's value, body.
struct Answer {
    status: u16,
    headers: actix_web::http::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

async fn call<S, B>(app: &S, req: at::TestRequest) -> Answer
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: actix_web::body::MessageBody,
{
    let resp = at::call_service(app, req.to_request()).await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = at::read_body(resp).await.to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

fn get(uri: &str) -> at::TestRequest {
    at::TestRequest::get().uri(uri)
}

/// `r` with the admin token.
fn as_admin(r: at::TestRequest) -> at::TestRequest {
    r.insert_header(("authorization", format!("Bearer {TOKEN}")))
}

fn put_routing(body: Value, token: Option<&str>) -> at::TestRequest {
    let r = at::TestRequest::put()
        .uri("/cluster/routing")
        .set_payload(body.to_string());
    match token {
        Some(t) => r.insert_header(("authorization", format!("Bearer {t}"))),
        None => r,
    }
}

fn upload(armored: &[u8]) -> at::TestRequest {
    at::TestRequest::post()
        .uri("/pks/add")
        .insert_header(("content-type", "application/x-www-form-urlencoded"))
        .set_payload(gpg_form(armored))
}

#[actix_web::test]
async fn performance_counts_commits_applies_and_lookups() {
    let (_dir, state, store) = named("solo").await;
    let app = at::init_service(api::app(state.clone())).await;

    eprintln!("--- nothing looked up yet");
    let p = call(&app, get("/cluster/performance")).await.json();
    assert_eq!(p["unit"], "microseconds");
    assert_eq!(p["histograms"]["lookup"]["count"], 0, "{p}");

    eprintln!("--- one upload, then 5 gets, an index, a vindex, a miss and a stats");
    let cert = gen("Perf <perf@example.org>");
    let fpr = cert.fingerprint().to_hex();
    let a = call(&app, upload(&cert.armored().to_vec().unwrap())).await;
    assert_eq!(a.status, 200, "{}", a.text());
    for _ in 0..5 {
        let a = call(&app, get(&format!("/pks/lookup?op=get&search=0x{fpr}"))).await;
        assert_eq!(a.status, 200);
    }
    for op in ["index", "vindex"] {
        let a = call(
            &app,
            get(&format!("/pks/lookup?op={op}&search=perf@example.org")),
        )
        .await;
        assert_eq!(a.status, 200, "{op}");
    }
    let miss = "/pks/lookup?op=get&search=nobody@example.org";
    assert_eq!(call(&app, get(miss)).await.status, 404);
    assert_eq!(call(&app, get("/pks/lookup?op=stats")).await.status, 200);

    eprintln!("--- 8 lookups (stats is not one), at least one commit and one apply");
    let p = call(&app, get("/cluster/performance")).await.json();
    let h = &p["histograms"];
    assert_eq!(h["lookup"]["count"], 8, "{p}");
    assert!(h["commit"]["count"].as_u64().unwrap() >= 1, "{p}");
    assert!(h["apply_entry"]["count"].as_u64().unwrap() >= 1, "{p}");
    assert!(h["apply_batch"]["count"].as_u64().unwrap() >= 1, "{p}");
    for name in ["commit", "apply_entry", "apply_batch", "lookup"] {
        let x = &h[name];
        let n = |k: &str| x[k].as_u64().unwrap_or_else(|| panic!("{name}.{k}: {x}"));
        assert!(n("p50_us") <= n("p90_us"), "{name}: {x}");
        assert!(n("p90_us") <= n("p99_us"), "{name}: {x}");
        assert!(n("p99_us") <= n("max_us"), "{name}: {x}");
        let in_buckets: u64 = x["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum();
        assert_eq!(in_buckets, n("count"), "{name}: {x}");
    }
    assert!(h["commit"]["max_us"].as_u64().unwrap() > 0);
    drop(app);
    crate::http_api::close(state, store).await;
}

#[actix_web::test]
async fn load_reports_requests_cpu_and_memory() {
    let (_dir, state, store) = named("solo").await;
    let app = at::init_service(api::app(state.clone())).await;
    for _ in 0..3 {
        assert_eq!(call(&app, get("/health")).await.status, 200);
    }
    assert_eq!(call(&app, get("/no/such/path")).await.status, 404);

    let v = call(&app, get("/cluster/load")).await.json();
    assert_eq!(v["name"], "solo", "{v}");
    assert_eq!(v["state"], "Leader", "{v}");
    let r = &v["requests"];
    assert_eq!(r["total"], 5, "every request counts, this one too: {v}");
    assert_eq!(r["in_flight"], 1, "only this one is in flight: {v}");
    assert_eq!(r["status_2xx"], 3, "{v}");
    assert_eq!(r["status_4xx"], 1, "{v}");
    assert!(r["per_sec_since_start"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["window_secs"].as_f64().is_some(), "{v}");
    if cfg!(target_os = "linux") {
        assert!(v["memory"]["rss_bytes"].as_u64().unwrap() > 1 << 20, "{v}");
        assert!(
            v["cpu"]["percent_of_one_core_since_start"]
                .as_f64()
                .is_some(),
            "{v}"
        );
    }
    assert!(v["cpu"]["cores"].as_u64().unwrap() >= 1);

    eprintln!("--- scope=cluster lists every member (here: this one), scope=x is 400");
    let v = call(&app, get("/cluster/load?scope=cluster")).await.json();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{v}");
    assert_eq!(nodes[0]["reachable"], true, "{v}");
    assert!(nodes[0]["load"]["requests"]["total"].as_u64().unwrap() >= 6);
    let a = call(&app, get("/cluster/load?scope=everywhere")).await;
    assert_eq!(a.status, 400);
    assert!(a.text().contains("scope"), "{}", a.text());
    drop(app);
    crate::http_api::close(state, store).await;
}

#[actix_web::test]
async fn routing_needs_the_token_refuses_bad_values_and_changes_lookups_and_ready() {
    let (_dir, state, store) = named("solo").await;
    let app = at::init_service(api::app(state.clone())).await;
    let cert = gen("Route <route@example.org>");
    let fpr = cert.fingerprint().to_hex();
    assert_eq!(
        call(&app, upload(&cert.armored().to_vec().unwrap()))
            .await
            .status,
        200
    );
    let lookup = format!("/pks/lookup?op=get&search=0x{fpr}");

    eprintln!("--- defaults: local reads, learners serve, weight 100");
    let v = call(&app, get("/cluster/routing")).await.json();
    assert_eq!(
        v,
        json!({"default_consistency": "local", "learners_serve_reads": true, "weights": {}})
    );
    let a = call(&app, get(&lookup)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-keyraft-consistency"), Some("local"));
    let a = call(&app, get("/ready")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-keyraft-weight"), Some("100"));
    assert_eq!(a.text(), "ready weight=100\n");

    eprintln!("--- no token, a wrong token: 401");
    let change = json!({"default_consistency": "linearizable"});
    assert_eq!(
        call(&app, put_routing(change.clone(), None)).await.status,
        401
    );
    assert_eq!(
        call(&app, put_routing(change.clone(), Some("wrong")))
            .await
            .status,
        401
    );

    eprintln!("--- bad values: 400 with a one-line reason, nothing changes");
    for (bad, says) in [
        (json!({"default_consistency": "eventual"}), "linearizable"),
        (
            json!({"learners_serve_reads": "sometimes"}),
            "true or false",
        ),
        (json!({"weights": {"solo": 300}}), "0 to 256"),
        (json!({"weights": {"solo": -1}}), "0 to 256"),
        (json!({"weights": "solo=1"}), "object"),
        (json!({"wieghts": {}}), "unknown routing setting"),
    ] {
        let a = call(&app, put_routing(bad.clone(), Some(TOKEN))).await;
        assert_eq!(a.status, 400, "{bad}: {}", a.text());
        assert!(a.text().contains(says), "{bad}: {}", a.text());
        assert_eq!(a.text().trim_end().lines().count(), 1);
    }
    let a = call(
        &app,
        at::TestRequest::put()
            .uri("/cluster/routing")
            .insert_header(("authorization", format!("Bearer {TOKEN}")))
            .set_payload("{not json"),
    )
    .await;
    assert_eq!(a.status, 400);
    let v = call(&app, get("/cluster/routing")).await.json();
    assert_eq!(v["default_consistency"], "local", "{v}");

    eprintln!("--- linearizable by default: a lookup without consistency= gets it");
    let a = call(&app, put_routing(change, Some(TOKEN))).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(a.header("x-keyraft-log-index").is_some());
    let v = call(&app, get("/cluster/routing")).await.json();
    assert_eq!(v["default_consistency"], "linearizable", "{v}");
    let a = call(&app, get(&lookup)).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-keyraft-consistency"), Some("linearizable"));
    let a = call(&app, get(&format!("{lookup}&consistency=local"))).await;
    assert_eq!(
        a.header("x-keyraft-consistency"),
        Some("local"),
        "explicit wins"
    );

    eprintln!("--- a weight shows in /ready; weight 0 drains it (503) but lookups go on");
    let a = call(
        &app,
        put_routing(json!({"weights": {"solo": 7}}), Some(TOKEN)),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = call(&app, get("/ready")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-keyraft-weight"), Some("7"));
    assert_eq!(a.text(), "ready weight=7\n");
    let a = call(
        &app,
        put_routing(json!({"weights": {"solo": 0}}), Some(TOKEN)),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let a = call(&app, get("/ready")).await;
    assert_eq!(a.status, 503);
    assert!(a.text().contains("drained"), "{}", a.text());
    assert_eq!(call(&app, get(&lookup)).await.status, 200);
    assert_eq!(call(&app, get("/health")).await.status, 200);

    eprintln!("--- null removes a weight; learners_serve_reads=false leaves a voter ready");
    let a = call(
        &app,
        put_routing(
            json!({"weights": {"solo": null}, "learners_serve_reads": false}),
            Some(TOKEN),
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v = call(&app, get("/cluster/routing")).await.json();
    assert_eq!(
        v,
        json!({"default_consistency": "linearizable", "learners_serve_reads": false, "weights": {}})
    );
    let a = call(&app, get("/ready")).await;
    assert_eq!((a.status, a.header("x-keyraft-weight")), (200, Some("100")));

    eprintln!("--- every change is in the audit trail");
    let a = call(&app, get("/cluster/audit?action=routing")).await;
    assert_eq!(a.status, 401, "the audit trail is for admins: {}", a.text());
    let v = call(&app, as_admin(get("/cluster/audit?action=routing")))
        .await
        .json();
    assert_eq!(v["entries"].as_array().unwrap().len(), 4, "{v}");
    assert_eq!(v["entries"][0]["actor"], "admin-token");
    drop(app);
    crate::http_api::close(state, store).await;
}
