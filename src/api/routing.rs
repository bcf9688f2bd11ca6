//! `GET|PUT /cluster/routing`: the replicated routing settings (see [`crate::raft::Routing`]):
//! `default_consistency`, `learners_serve_reads` and per-node `weights`.
//!
//! `PUT` needs the admin token and takes a JSON merge patch: the fields given replace the
//! current ones, the others stay; inside `weights` each name given is set, and `null` removes
//! it (back to the default weight). Every value is checked here, and a bad one is answered 400
//! with a one-line reason; a valid change is proposed as one Raft command, so every node uses
//! it from that log index on. Concurrent patches of different fields both take effect (see
//! [`super::settings_write`]).
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use super::cluster_admin::{authorize, parse};
use super::error::ApiError;
use super::settings_write::read_modify_write;
use super::AppState;
use crate::raft::command::ApplyOutcome;
use crate::raft::routing::MAX_WEIGHT;
use crate::raft::{Consistency, Op, Routing};

/// `GET /cluster/routing`: the settings this replica has applied.
pub async fn get(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.keys.routing()?))
}

/// `PUT /cluster/routing` with e.g. `{"default_consistency": "linearizable",
/// "learners_serve_reads": false, "weights": {"n1": 0, "n2": null}}`.
pub async fn put(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let actor = authorize(&req, &state)?;
    let patch: Map<String, Value> = parse(&body)?;
    let (routing, outcome, index) = read_modify_write(
        &state,
        &actor,
        |state| Ok(state.keys.routing()?),
        |mut routing| {
            apply_patch(&mut routing, patch.clone())?;
            routing.validate().map_err(ApiError::BadRequest)?;
            Ok(routing)
        },
        |routing, expect| Op::SetRouting {
            routing,
            expect: Some(expect),
        },
    )
    .await?;
    match outcome {
        ApplyOutcome::RoutingSet => Ok(HttpResponse::Ok()
            .insert_header(("X-Keyraft-Log-Index", index.to_string()))
            .json(json!({ "routing": routing, "log_index": index }))),
        ApplyOutcome::Rejected { reason, .. } => Err(ApiError::BadRequest(reason)),
        other => Err(ApiError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

/// Merge `patch` into `r`, checking each value.
fn apply_patch(r: &mut Routing, patch: Map<String, Value>) -> Result<(), ApiError> {
    let bad = |s: String| Err(ApiError::BadRequest(s));
    for (k, v) in patch {
        match k.as_str() {
            "default_consistency" => {
                r.default_consistency = match v.as_str() {
                    Some("local") => Consistency::Local,
                    Some("linearizable") => Consistency::Linearizable,
                    _ => return bad("default_consistency is \"local\" or \"linearizable\"".into()),
                }
            }
            "learners_serve_reads" => match v.as_bool() {
                Some(b) => r.learners_serve_reads = b,
                None => return bad("learners_serve_reads is true or false".into()),
            },
            "weights" => {
                let Value::Object(weights) = v else {
                    return bad(format!(
                        "weights is an object of node name to 0..={MAX_WEIGHT} (null removes)"
                    ));
                };
                for (name, w) in weights {
                    match w {
                        Value::Null => {
                            r.weights.remove(&name);
                        }
                        w => match w.as_u64().filter(|w| *w <= u64::from(MAX_WEIGHT)) {
                            Some(w) => {
                                r.weights.insert(name, w as u16);
                            }
                            None => {
                                return bad(format!(
                                    "weight of {name:?} must be an integer from 0 to \
                                     {MAX_WEIGHT} (or null), not {w}"
                                ))
                            }
                        },
                    }
                }
            }
            other => {
                return bad(format!(
                    "unknown routing setting {other:?} (default_consistency, \
                     learners_serve_reads, weights)"
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(r: &mut Routing, v: Value) -> Result<(), ApiError> {
        let Value::Object(m) = v else { panic!() };
        apply_patch(r, m)
    }

    #[test]
    fn patches_merge_and_bad_values_are_refused() {
        let mut r = Routing::default();
        patch(
            &mut r,
            json!({"default_consistency": "linearizable", "weights": {"n1": 0, "n2": 256}}),
        )
        .unwrap();
        assert_eq!(r.default_consistency, Consistency::Linearizable);
        assert!(r.learners_serve_reads);
        patch(
            &mut r,
            json!({"learners_serve_reads": false, "weights": {"n1": null}}),
        )
        .unwrap();
        assert!(!r.learners_serve_reads);
        assert_eq!(r.weights.len(), 1);
        assert_eq!(r.weight_of("n1"), crate::raft::routing::DEFAULT_WEIGHT);
        assert_eq!(r.weight_of("n2"), 256);
        for bad in [
            json!({"default_consistency": "eventual"}),
            json!({"learners_serve_reads": "no"}),
            json!({"weights": [1]}),
            json!({"weights": {"n1": 257}}),
            json!({"weights": {"n1": -1}}),
            json!({"weights": {"n1": 1.5}}),
            json!({"colour": "blue"}),
        ] {
            let before = r.clone();
            let e = patch(&mut r.clone(), bad.clone()).unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{bad}: {e:?}");
            assert!(!e.to_string().contains('\n'));
            assert_eq!(r, before);
        }
    }
}
