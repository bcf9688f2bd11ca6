//! Applying one committed command to the state machine. Deterministic: the only time is
//! the proposer's, the only inputs are the command and the committed state, and every
//! collection iterated is ordered.
//!
//! Versions: every certificate (and tombstone) carries a version vector. A write carries the
//! version its proposer had stored (its base). If the base descends from what is stored now,
//! the write applies and the origin's counter advances. Otherwise the proposer had not seen an
//! earlier update: a conflict, settled by the policy for that kind of write (see
//! [`super::records::Policies`]) and recorded in the conflicts table. Every item also leaves a
//! line in the audit trail.
use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::Cert;

use super::cert_row::{Incoming, Prepared, Row};

use super::command::{ApplyOutcome, Command, CommandV1, Op, Response};
use super::records::{self, AuditEntry, ConflictRecord, Policy, Resolution, Side, Tombstone};
use crate::pgp;
use crate::store::{ApplyBatch, CertRecord, StoreError, VersionVector};

/// Apply `cmd`, committed at log `index`, into `batch`. Errors are storage errors only
/// (they stop the node); per-item problems become [`ApplyOutcome::Rejected`].
///
/// A command whose request id was applied before (a retry after a leader change, a lost
/// reply or a timeout) is not applied again: it gets the first application's answer, kept
/// with the request id, or [`ApplyOutcome::Duplicate`] when none was kept.
pub fn apply_command(
    batch: &mut ApplyBatch,
    cmd: &Command,
    index: u64,
) -> Result<Response, StoreError> {
    let Command::V1(c) = cmd;
    if let Some(answer) = batch.earlier_answer(c.request_id)? {
        return Ok(super::codec::decode(&answer).unwrap_or_else(|_| Response {
            outcomes: vec![ApplyOutcome::Duplicate],
        }));
    }
    let response = apply_once(batch, c, index)?;
    // How long which answer is kept is the store's business (`ApplyBatch::record_request`).
    let answer = super::codec::encode(&response).unwrap_or_default();
    batch.record_request(c.request_id, index, &answer)?;
    Ok(response)
}

/// Apply a command seen for the first time.
fn apply_once(batch: &mut ApplyBatch, c: &CommandV1, index: u64) -> Result<Response, StoreError> {
    records::prune_audit(batch, index, records::policies(batch)?.audit_keep)?;
    super::replay::prune(batch, c.time)?;
    let mut ctx = Ctx {
        c,
        index,
        seq: 0,
        policies: records::policies(batch)?,
    };
    if let Some(refused) = super::replay::admit(batch, &mut ctx)? {
        return Ok(refused);
    }
    let mut outcomes = Vec::new();
    match &c.op {
        Op::Submit {
            certs,
            limits,
            bases,
            prepared,
        } => {
            for (i, bytes) in certs.iter().enumerate() {
                let pre = prepared.get(i).and_then(Option::as_ref);
                let o = apply_submit(batch, &mut ctx, bytes, bases.get(i), pre, limits)?;
                ctx.audit(batch, "add", &o);
                outcomes.push(o);
            }
        }
        Op::Delete {
            fingerprints,
            bases,
            if_match,
            reason,
        } => {
            for (i, fpr) in fingerprints.iter().enumerate() {
                let o = match pgp::Fingerprint::from_hex(fpr) {
                    Some(f) => super::apply_admin::apply_delete(
                        batch,
                        &mut ctx,
                        &f.0,
                        bases.get(i),
                        if_match.as_deref(),
                        reason,
                    )?,
                    None => ApplyOutcome::Rejected {
                        fingerprint: fpr.clone(),
                        reason: "not a fingerprint".into(),
                    },
                };
                ctx.audit(batch, "delete", &o);
                outcomes.push(o);
            }
        }
        Op::Replace {
            cert,
            base,
            if_match,
            limits,
        } => {
            let o = super::apply_admin::apply_replace(
                batch,
                &mut ctx,
                cert,
                base,
                if_match.as_deref(),
                limits,
            )?;
            ctx.audit(batch, "replace", &o);
            outcomes.push(o);
        }
        Op::SetPolicies { policies, expect } => {
            let changed = match expect {
                Some(e) => *e != records::policies(batch)?,
                None => false,
            };
            let o = if changed {
                settings_changed()
            } else {
                records::set_policies(batch, policies);
                ApplyOutcome::PoliciesSet
            };
            let line = match &o {
                ApplyOutcome::PoliciesSet => format!("{policies:?}"),
                other => describe(other).1,
            };
            ctx.audit_line(batch, "policies", None, line);
            outcomes.push(o);
        }
        Op::SetRouting { routing, expect } => {
            let changed = match expect {
                Some(e) => *e != records::routing(batch)?,
                None => false,
            };
            let o = if changed {
                settings_changed()
            } else {
                match routing.validate() {
                    Ok(()) => {
                        records::set_routing(batch, routing);
                        ApplyOutcome::RoutingSet
                    }
                    Err(reason) => ApplyOutcome::Rejected {
                        fingerprint: String::new(),
                        reason,
                    },
                }
            };
            let line = match &o {
                ApplyOutcome::RoutingSet => format!("{routing:?}"),
                other => describe(other).1,
            };
            ctx.audit_line(batch, "routing", None, line);
            outcomes.push(o);
        }
        Op::Resolve {
            id,
            choose,
            note,
            limits,
        } => {
            let limits = limits.unwrap_or_default();
            let o = super::apply_admin::apply_resolve(batch, &mut ctx, *id, choose, note, &limits)?;
            ctx.audit(batch, "resolve", &o);
            outcomes.push(o);
        }
        Op::Checkpoint => {
            ctx.audit_line(batch, "checkpoint", None, "repair checkpoint".into());
            outcomes.push(ApplyOutcome::Checkpointed);
        }
        Op::AuditRefusal {
            action,
            reason,
            fingerprints,
            suppressed,
        } => {
            let mut line = format!("refused: {reason}");
            if *suppressed > 0 {
                line.push_str(&format!(
                    " ({suppressed} earlier refusals not audited: rate limit)"
                ));
            }
            if fingerprints.is_empty() {
                ctx.audit_line(batch, action, None, line.clone());
            }
            for f in fingerprints {
                ctx.audit_line(batch, action, Some(f.clone()), line.clone());
            }
            outcomes.push(ApplyOutcome::Noted);
        }
    }
    Ok(Response { outcomes })
}

/// Per-command state while applying.
pub(super) struct Ctx<'a> {
    pub(super) c: &'a CommandV1,
    pub(super) index: u64,
    seq: u16,
    pub(super) policies: records::Policies,
}

impl Ctx<'_> {
    fn next_id(&mut self) -> u64 {
        self.seq = self.seq.saturating_add(1);
        (self.index << 16) | u64::from(self.seq)
    }

    fn audit(&mut self, batch: &mut ApplyBatch, action: &str, o: &ApplyOutcome) {
        let (fpr, line) = describe(o);
        self.audit_line(batch, action, fpr, line);
    }

    pub(super) fn audit_line(
        &mut self,
        batch: &mut ApplyBatch,
        action: &str,
        fingerprint: Option<String>,
        outcome: String,
    ) {
        self.seq = self.seq.saturating_add(1);
        records::put_audit(
            batch,
            &AuditEntry {
                index: self.index,
                seq: self.seq,
                time: self.c.time,
                actor: self.c.actor.clone(),
                origin: self.c.origin,
                action: action.into(),
                fingerprint,
                outcome,
            },
        );
    }

    /// The version after this command wrote over `current`, given its `base`.
    pub(super) fn next_version(
        &self,
        current: &VersionVector,
        base: Option<&VersionVector>,
    ) -> VersionVector {
        let mut v = base.map_or_else(|| current.clone(), |b| current.join(b));
        v.increment(self.c.origin);
        v
    }

    pub(super) fn side(&self, cert: Option<Vec<u8>>, base: Option<&VersionVector>) -> Side {
        Side {
            version: base.cloned().unwrap_or_default(),
            origin: self.c.origin,
            time: self.c.time,
            cert,
            actor: self.c.actor.clone(),
        }
    }

    /// Record a conflict and return its outcome.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn conflict(
        &mut self,
        batch: &mut ApplyBatch,
        fingerprint: &str,
        kind: &str,
        policy: Policy,
        current: Side,
        incoming: Side,
        resolved_as: Option<&str>,
    ) -> ApplyOutcome {
        let id = self.next_id();
        let status = if resolved_as.is_some() {
            "resolved"
        } else {
            "open"
        };
        records::put_conflict(
            batch,
            &ConflictRecord {
                id,
                fingerprint: fingerprint.to_string(),
                kind: kind.into(),
                policy,
                status: status.into(),
                index: self.index,
                time: self.c.time,
                current,
                incoming,
                resolution: resolved_as.map(|r| Resolution {
                    choose: r.into(),
                    by: "policy".into(),
                    note: String::new(),
                    actor: "raft".into(),
                    index: self.index,
                    time: self.c.time,
                }),
            },
        );
        ApplyOutcome::Conflict {
            fingerprint: fingerprint.to_string(),
            id,
            policy,
            status: status.into(),
        }
    }
}

/// A settings change refused: the settings it was based on are no longer in force.
fn settings_changed() -> ApplyOutcome {
    ApplyOutcome::Rejected {
        fingerprint: String::new(),
        reason: super::command::SETTINGS_CHANGED.into(),
    }
}

pub(super) fn describe(o: &ApplyOutcome) -> (Option<String>, String) {
    match o {
        ApplyOutcome::New { fingerprint } => (Some(fingerprint.clone()), "new".into()),
        ApplyOutcome::Updated { fingerprint } => (Some(fingerprint.clone()), "updated".into()),
        ApplyOutcome::Unchanged { fingerprint } => (Some(fingerprint.clone()), "unchanged".into()),
        ApplyOutcome::Deleted { fingerprint } => (Some(fingerprint.clone()), "deleted".into()),
        ApplyOutcome::NotFound { fingerprint } => (Some(fingerprint.clone()), "not found".into()),
        ApplyOutcome::Replaced { fingerprint } => (Some(fingerprint.clone()), "replaced".into()),
        ApplyOutcome::Rejected {
            fingerprint,
            reason,
        } => (Some(fingerprint.clone()), format!("rejected: {reason}")),
        ApplyOutcome::Conflict {
            fingerprint,
            id,
            policy,
            status,
        } => (
            Some(fingerprint.clone()),
            format!("conflict {id} ({status}, policy {policy:?})"),
        ),
        ApplyOutcome::Stale {
            fingerprint,
            current,
        } => (
            Some(fingerprint.clone()),
            format!("stale, refused (current {current})"),
        ),
        ApplyOutcome::PreconditionFailed {
            fingerprint,
            current,
        } => (
            Some(fingerprint.clone()),
            format!("If-Match failed (current {current})"),
        ),
        ApplyOutcome::PoliciesSet => (None, "policies set".into()),
        ApplyOutcome::RoutingSet => (None, "routing set".into()),
        ApplyOutcome::Resolved { id, fingerprint } => {
            (Some(fingerprint.clone()), format!("conflict {id} resolved"))
        }
        ApplyOutcome::Duplicate => (None, "duplicate".into()),
        ApplyOutcome::Checkpointed => (None, "checkpoint".into()),
        ApplyOutcome::SignatureRefused { reason, .. } => (None, format!("refused: {reason}")),
        ApplyOutcome::Noted => (None, "noted".into()),
    }
}

/// Store `row` with `version`.
pub(super) fn store_cert(
    batch: &mut ApplyBatch,
    ctx: &Ctx,
    row: Row,
    created_at: Option<u64>,
    version: VersionVector,
) -> Result<(), StoreError> {
    let time = ctx.c.time;
    batch.put_rendered(&row.fpr, pgp::armor_public_keys([row.bytes.as_slice()]));
    batch.delete(crate::store::Table::Tombstones, &row.fpr);
    batch.put_cert(CertRecord {
        fingerprint: row.fpr,
        cert: row.bytes,
        summary: row.summary,
        terms: row.terms,
        created_at: created_at.unwrap_or(time),
        updated_at: time,
        updated_index: ctx.index,
        version,
        origin: ctx.c.origin,
    })
}

/// A command's certificate bytes, or the outcome that rejects them.
pub(super) fn parse_cert(bytes: &[u8]) -> Result<Cert, ApplyOutcome> {
    Cert::from_bytes(bytes).map_err(|e| ApplyOutcome::Rejected {
        fingerprint: String::new(),
        reason: e.to_string(),
    })
}

/// The primary fingerprint of a command's certificate (its first packet only), or the
/// outcome that rejects it.
pub(super) fn primary_fingerprint(bytes: &[u8]) -> Result<pgp::Fingerprint, ApplyOutcome> {
    pgp::primary_fingerprint(bytes).map_err(|e| ApplyOutcome::Rejected {
        fingerprint: String::new(),
        reason: e.to_string(),
    })
}

fn apply_submit(
    batch: &mut ApplyBatch,
    ctx: &mut Ctx,
    bytes: &[u8],
    base: Option<&VersionVector>,
    prepared: Option<&Prepared>,
    limits: &pgp::Limits,
) -> Result<ApplyOutcome, StoreError> {
    let fpr = match primary_fingerprint(bytes) {
        Ok(f) => f.0,
        Err(rejected) => return Ok(rejected),
    };
    let fingerprint = hex::encode_upper(&fpr);
    let incoming = Incoming {
        fpr: &fpr,
        bytes,
        prepared,
        limits,
        time: ctx.c.time,
    };
    let rejected = |e: pgp::PgpError| ApplyOutcome::Rejected {
        fingerprint: fingerprint.clone(),
        reason: e.to_string(),
    };
    let stored = batch.get_cert(&fpr)?;
    if stored.is_none() {
        if let Some(t) = records::tombstone(batch, &fpr)? {
            let fresh = base.is_none_or(|b| b.descends(&t.version));
            let policy = ctx.policies.add_after_delete;
            let revive = fresh
                || policy == Policy::Merge
                || (policy == Policy::LastWriterWins && ctx.c.time > t.time);
            if !fresh && policy == Policy::Reject {
                return Ok(ApplyOutcome::Stale {
                    fingerprint,
                    current: t.version.etag(),
                });
            }
            if revive {
                let Some(row) = incoming.merge_into(None).map_err(rejected).ok().flatten() else {
                    return Ok(ApplyOutcome::Unchanged { fingerprint });
                };
                let merged = row.bytes.clone();
                let version = ctx.next_version(&t.version, base);
                store_cert(batch, ctx, row, None, version)?;
                if fresh {
                    return Ok(ApplyOutcome::New { fingerprint });
                }
                let current = tomb_side(&t);
                let inc = ctx.side(Some(merged), base);
                let how = policy_name(policy);
                return Ok(ctx.conflict(
                    batch,
                    &fingerprint,
                    "add_after_delete",
                    policy,
                    current,
                    inc,
                    Some(how),
                ));
            }
            let current = tomb_side(&t);
            let inc = ctx.side(Some(bytes.to_vec()), base);
            let resolved = (policy == Policy::LastWriterWins).then_some("last-writer-wins");
            return Ok(ctx.conflict(
                batch,
                &fingerprint,
                "add_after_delete",
                policy,
                current,
                inc,
                resolved,
            ));
        }
    }
    let Some(rec) = stored else {
        return Ok(match incoming.merge_into(None) {
            Ok(Some(row)) => {
                let version = ctx.next_version(&VersionVector::default(), base);
                store_cert(batch, ctx, row, None, version)?;
                ApplyOutcome::New { fingerprint }
            }
            Ok(None) => ApplyOutcome::Unchanged { fingerprint },
            Err(e) => rejected(e),
        });
    };
    let fresh = base.is_none_or(|b| b.descends(&rec.version));
    let policy = ctx.policies.add;
    if fresh || policy == Policy::Merge {
        return Ok(match incoming.merge_into(Some(&rec)) {
            Ok(Some(row)) => {
                let version = ctx.next_version(&rec.version, base);
                store_cert(batch, ctx, row, Some(rec.created_at), version)?;
                if fresh {
                    ApplyOutcome::Updated { fingerprint }
                } else {
                    let (cur, inc) = (cert_side(&rec), ctx.side(Some(bytes.to_vec()), base));
                    ctx.conflict(batch, &fingerprint, "add", policy, cur, inc, Some("merge"))
                }
            }
            Ok(None) => ApplyOutcome::Unchanged { fingerprint },
            Err(e) => rejected(e),
        });
    }
    let (cur, inc) = (cert_side(&rec), ctx.side(Some(bytes.to_vec()), base));
    match policy {
        Policy::Reject => Ok(ApplyOutcome::Stale {
            fingerprint,
            current: rec.version.etag(),
        }),
        Policy::Manual => Ok(ctx.conflict(batch, &fingerprint, "add", policy, cur, inc, None)),
        Policy::LastWriterWins | Policy::Merge => {
            if incoming_wins(ctx, &rec) {
                let row = match incoming.merge_into(None) {
                    Ok(Some(x)) => x,
                    Ok(None) => return Ok(ApplyOutcome::Unchanged { fingerprint }),
                    Err(e) => return Ok(rejected(e)),
                };
                let version = ctx.next_version(&rec.version, base);
                store_cert(batch, ctx, row, Some(rec.created_at), version)?;
            }
            Ok(ctx.conflict(
                batch,
                &fingerprint,
                "add",
                policy,
                cur,
                inc,
                Some("last-writer-wins"),
            ))
        }
    }
}

pub(super) fn incoming_wins(ctx: &Ctx, rec: &CertRecord) -> bool {
    (ctx.c.time, ctx.c.origin) > (rec.updated_at, rec.origin)
}

pub(super) fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::Merge => "merge",
        Policy::LastWriterWins => "last-writer-wins",
        Policy::Reject => "reject",
        Policy::Manual => "manual",
    }
}

pub(super) fn cert_side(rec: &CertRecord) -> Side {
    Side {
        version: rec.version.clone(),
        origin: rec.origin,
        time: rec.updated_at,
        cert: Some(rec.cert.clone()),
        actor: String::new(),
    }
}

pub(super) fn tomb_side(t: &Tombstone) -> Side {
    Side {
        version: t.version.clone(),
        origin: t.origin,
        time: t.time,
        cert: None,
        actor: t.actor.clone(),
    }
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
