//! Node-local observability (JSON): `GET /cluster/load` and `GET /cluster/performance`.
//!
//! `/cluster/load` reports this node's request rate (about the last 10 s, and since start),
//! requests in flight, CPU (percent of one core) and memory (RSS). With `?scope=cluster` the
//! answering node also asks every other member for its own figures (`GET /cluster/load` at the
//! member's advertised HTTP address, all at once; [`MEMBER_TIMEOUT`] per socket step and twice
//! that for the whole exchange, name resolution included) and lists a member
//! that does not answer as `"reachable": false` with the reason instead of failing.
//!
//! `/cluster/performance` reports the latency histograms since start: commit (proposal to
//! applied on this node), apply per entry and per batch, and lookups; per histogram the count,
//! mean, p50, p90, p99, max and the non-empty buckets, all in microseconds.
//!
//! Figures come from [`crate::metrics`] through the raft facade; nothing here is replicated.
use std::net::ToSocketAddrs;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::query::pairs;
use super::AppState;
use crate::raft::Member;

/// How long `scope=cluster` waits for each member.
pub const MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

/// `local` (the default) or `cluster`.
fn scope(req: &HttpRequest) -> Result<bool, ApiError> {
    match pairs(req.query_string()).find(|(k, _)| k == "scope") {
        None => Ok(false),
        Some((_, v)) if v == b"local" => Ok(false),
        Some((_, v)) if v == b"cluster" => Ok(true),
        Some(_) => Err(ApiError::BadRequest(
            "scope is \"local\" or \"cluster\"".into(),
        )),
    }
}

/// This node's load figures.
fn local_load(state: &AppState) -> Value {
    let raft = state.keys.raft();
    let m = raft.metrics();
    let mut v = serde_json::to_value(m.load.report()).unwrap_or_else(|_| json!({}));
    v["id"] = json!(raft.id());
    v["name"] = json!(raft.me().name);
    v["state"] = json!(raft.status().state);
    v["lookups_total"] = json!(m.lookup.count());
    v["writes_total"] = json!(m.commit.count());
    v
}

/// `GET /cluster/load[?scope=local|cluster]`.
pub async fn load(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let here = local_load(&state);
    if !scope(&req)? {
        return Ok(HttpResponse::Ok().json(here));
    }
    let raft = state.keys.raft();
    let me = raft.id();
    let members = raft.members();
    let answers = futures::future::join_all(members.iter().map(|m| {
        let here = here.clone();
        async move {
            if m.id == me {
                return member_entry(m, Ok(here));
            }
            let answer = fetch_load(m.node.http_addr.clone()).await.and_then(|v| {
                // A wildcard or stale address may reach another node (or this one).
                match v["id"].as_u64() {
                    Some(id) if id == m.id => Ok(v),
                    other => Err(format!("answered by node {other:?}, not {}", m.id)),
                }
            });
            member_entry(m, answer)
        }
    }))
    .await;
    Ok(HttpResponse::Ok().json(json!({
        "answered_by": me,
        "timeout_ms": MEMBER_TIMEOUT.as_millis() as u64,
        "nodes": answers,
    })))
}

fn member_entry(m: &Member, r: Result<Value, String>) -> Value {
    let mut e = json!({
        "id": m.id,
        "name": m.node.name,
        "http_addr": m.node.http_addr,
        "voter": m.voter,
    });
    match r {
        Ok(load) => {
            e["reachable"] = json!(true);
            e["load"] = load;
        }
        Err(reason) => {
            e["reachable"] = json!(false);
            e["error"] = json!(reason);
        }
    }
    e
}

/// A member's own `/cluster/load`, over plain HTTP at its advertised address.
async fn fetch_load(http_addr: String) -> Result<Value, String> {
    let host = http_addr
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    if host.is_empty() {
        return Err("no HTTP address in the membership".into());
    }
    let work = tokio::task::spawn_blocking(move || {
        let addr = host
            .to_socket_addrs()
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))?;
        let r = crate::client::request(
            addr,
            "GET",
            "/cluster/load?scope=local",
            &[],
            b"",
            MEMBER_TIMEOUT,
        )
        .map_err(|e| format!("{host}: {e}"))?;
        if r.status != 200 {
            return Err(format!("{host}: HTTP {}", r.status));
        }
        serde_json::from_slice::<Value>(&r.body).map_err(|e| format!("{host}: {e}"))
    });
    // The socket timeouts bound each step; this bounds name resolution and the whole exchange.
    match tokio::time::timeout(MEMBER_TIMEOUT * 2, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", MEMBER_TIMEOUT * 2)),
    }
}

/// `GET /cluster/performance`: this node's latency histograms since start.
pub async fn performance(state: web::Data<AppState>) -> HttpResponse {
    let raft = state.keys.raft();
    let m = raft.metrics();
    HttpResponse::Ok().json(json!({
        "id": raft.id(),
        "name": raft.me().name,
        "unit": "microseconds",
        "uptime_secs": m.load.report().uptime_secs,
        "histograms": m.performance(),
    }))
}
