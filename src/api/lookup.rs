//! `GET /pks/lookup`: get, index, vindex, stats.
//!
//! A lookup without `consistency=` gets the cluster's routing `default_consistency`; every
//! successful answer says which one it got in `X-Keyraft-Consistency`. The time of each
//! `get`, `index` and `vindex` (from the parsed query to the answer, whatever the status) goes
//! into the node's `lookup` histogram (`/cluster/performance`).
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};

use super::error::ApiError;
use super::format;
use super::query::{parse_lookup, LookupOp, LookupQuery};
use super::AppState;
use crate::raft::{Consistency, Search};

/// The header naming the consistency a lookup was served with.
const CONSISTENCY_HEADER: &str = "x-keyraft-consistency";

/// Handle one lookup. Reads are local RocksDB point lookups and short prefix scans bounded
/// by the result limit; the cheap ones run inline (no thread hop on the hot path), word
/// searches and `vindex` on the blocking pool.
pub async fn lookup(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let q = parse_lookup(req.query_string())?;
    let timed = q.op != LookupOp::Stats;
    let started = Instant::now();
    let r = read(&state, q).await;
    if timed {
        state.keys.raft().metrics().lookup.record(started.elapsed());
    }
    r
}

/// Wait for what the query asks (`min_index`, linearizability), then answer it.
async fn read(state: &web::Data<AppState>, q: LookupQuery) -> Result<HttpResponse, ApiError> {
    if state.keys.is_joining() {
        // An empty or partial replica would answer "not found" for keys the cluster has.
        return Err(crate::raft::RaftError::Joining.into());
    }
    if let Some(r) = state.keys.removal() {
        // Its replica stopped following the cluster: it lacks whatever was written since
        // (revocations included).
        return Err(crate::raft::RaftError::Removed(r.line()).into());
    }
    let raft = state.keys.raft();
    let consistency = match (q.consistency, &q.op) {
        (Some(c), _) => c,
        // Statistics are not a key lookup: local unless asked.
        (None, LookupOp::Stats) => Consistency::Local,
        (None, _) => state.keys.routing()?.default_consistency,
    };
    if let Some(index) = q.min_index {
        raft.wait_applied(index, MAX_READ_WAIT).await.map_err(|_| {
            ApiError::Unavailable(format!(
                "log index {index} not applied on this node in time"
            ))
        })?;
    }
    if consistency == Consistency::Linearizable {
        state.keys.ensure_linearizable().await?;
    }
    // Word searches read many index entries and `vindex` parses up to `result_limit`
    // certificates: off the HTTP workers, so a few of them cannot stall every other request
    // (`/ready` included). Fingerprint, key id and e-mail lookups are point reads: inline.
    let heavy = q.op == LookupOp::Vindex || matches!(q.search, Some(Search::Words(_)));
    // A snapshot install replaces the replica in several batches: an answer read while one
    // ran is refused (503), not served half old, half new.
    let mut resp = if heavy {
        let state = state.clone();
        web::block(move || state.keys.read_consistently(|| answer(&state, q)))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??
    } else {
        state.keys.read_consistently(|| answer(state, q))?
    }
    .into_response();
    resp.headers_mut().insert(
        HeaderName::from_static(CONSISTENCY_HEADER),
        HeaderValue::from_static(consistency.as_str()),
    );
    Ok(resp)
}

/// Longest a read waits for `min_index`.
const MAX_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// A lookup's answer: plain data, so it can be built on another thread (an `HttpResponse`
/// cannot move between threads).
struct Answer {
    content_type: &'static str,
    body: Vec<u8>,
    etag: Option<String>,
}

impl Answer {
    fn new(content_type: &'static str, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            content_type,
            body: body.into(),
            etag: None,
        }
    }

    fn into_response(self) -> HttpResponse {
        let mut r = HttpResponse::Ok();
        if let Some(tag) = self.etag {
            r.insert_header(("ETag", tag));
        }
        r.content_type(self.content_type).body(self.body)
    }
}

fn answer(state: &AppState, q: LookupQuery) -> Result<Answer, ApiError> {
    if q.op == LookupOp::Stats {
        return stats(state, q.mr);
    }
    let search = q.search.expect("parser requires search for this op");
    let limit = state.settings.result_limit;
    if q.op == LookupOp::Get {
        let (mut blocks, etag) = state.keys.find_armored(&search, limit)?;
        let body = match blocks.len() {
            0 => return Err(ApiError::NotFound("no key matches the search".into())),
            // The common case: the stored armored form, sent as is, with the version's ETag
            // (what admin replace/delete take as If-Match).
            1 => blocks.pop().expect("one block").1,
            // Several matches: one armor block holding all of them, since not every client
            // reads past the first block.
            _ => {
                let keys = state.keys.find(&search, limit)?;
                crate::raft::armor_public_keys(keys.iter().map(|k| k.cert.as_slice()))
            }
        };
        return Ok(Answer {
            etag,
            ..Answer::new("application/pgp-keys", body)
        });
    }
    let keys = state.keys.find(&search, limit)?;
    if keys.is_empty() {
        return Err(ApiError::NotFound("no key matches the search".into()));
    }
    match q.op {
        LookupOp::Index | LookupOp::Vindex => {
            let summaries: Vec<_> = keys.iter().map(|k| &k.summary).collect();
            if q.mr {
                return Ok(Answer::new(
                    "text/plain; charset=utf-8",
                    format::mr_index(&summaries, now()),
                ));
            }
            let sigs: Vec<_> = if q.op == LookupOp::Vindex {
                keys.iter().map(crate::raft::vindex_sigs).collect()
            } else {
                Vec::new()
            };
            Ok(Answer::new(
                "text/html; charset=utf-8",
                format::html_index("Search results", &summaries, &sigs, now()),
            ))
        }
        LookupOp::Stats | LookupOp::Get => unreachable!("handled above"),
    }
}

fn stats(state: &AppState, mr: bool) -> Result<Answer, ApiError> {
    let s = state.keys.stats()?;
    let node = state.keys.raft().status();
    if mr {
        let body = serde_json::json!({
            "software": "keyraft",
            "version": env!("CARGO_PKG_VERSION"),
            "certificates": s.certificates,
            "live_data_bytes": s.live_data_bytes,
            "node": node,
        });
        return Ok(Answer::new("application/json", body.to_string()));
    }
    let body = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>keyraft statistics</title></head><body>\n\
         <h1>keyraft {}</h1>\n<table>\n<tr><th>Certificates</th><td>{}</td></tr>\n\
         <tr><th>Live data (bytes, estimate)</th><td>{}</td></tr>\n<tr><th>Raft node</th><td>{}</td></tr>\n\
         <tr><th>Applied index</th><td>{}</td></tr>\n</table>\n</body></html>\n",
        env!("CARGO_PKG_VERSION"),
        s.certificates,
        s.live_data_bytes,
        node.id,
        node.applied_index.unwrap_or(0)
    );
    Ok(Answer::new("text/html; charset=utf-8", body))
}
