//! Applying administrator writes and conflict resolutions: delete (leaving a tombstone),
//! replace, and resolve. Same rules as [`super::apply`]: deterministic, the proposer's time
//! only, every race settled by the policy in force and recorded.
use sequoia_openpgp::parse::Parse;
use sequoia_openpgp::Cert;

use super::apply::{cert_side, incoming_wins, policy_name, primary_fingerprint, store_cert, Ctx};
use super::cert_row::{merged_row, Incoming};
use super::command::ApplyOutcome;
use super::records::{self, Policy, Resolution, Side, Tombstone};
use crate::pgp;
use crate::store::{ApplyBatch, CertRecord, StoreError, VersionVector};

/// Remove the stored certificate and leave a tombstone with `version`.
fn bury(
    batch: &mut ApplyBatch,
    ctx: &Ctx,
    fpr: &[u8],
    version: VersionVector,
    reason: &str,
) -> Result<(), StoreError> {
    batch.delete_cert(fpr)?;
    records::put_tombstone(
        batch,
        fpr,
        &Tombstone {
            version,
            time: ctx.c.time,
            index: ctx.index,
            origin: ctx.c.origin,
            actor: ctx.c.actor.clone(),
            reason: reason.to_string(),
        },
    );
    Ok(())
}

pub(super) fn apply_delete(
    batch: &mut ApplyBatch,
    ctx: &mut Ctx,
    fpr: &[u8],
    base: Option<&VersionVector>,
    if_match: Option<&str>,
    reason: &str,
) -> Result<ApplyOutcome, StoreError> {
    let fingerprint = hex::encode_upper(fpr);
    let Some(rec) = batch.get_cert(fpr)? else {
        return Ok(ApplyOutcome::NotFound { fingerprint });
    };
    if let Some(tag) = if_match {
        if tag != rec.version.etag() {
            return Ok(ApplyOutcome::PreconditionFailed {
                fingerprint,
                current: rec.version.etag(),
            });
        }
    }
    let fresh = base.is_none_or(|b| b.descends(&rec.version));
    let version = ctx.next_version(&rec.version, base);
    if fresh {
        bury(batch, ctx, fpr, version, reason)?;
        return Ok(ApplyOutcome::Deleted { fingerprint });
    }
    let policy = ctx.policies.delete;
    let (cur, inc) = (cert_side(&rec), ctx.side(None, base));
    match policy {
        Policy::Reject => Ok(ApplyOutcome::Stale {
            fingerprint,
            current: rec.version.etag(),
        }),
        Policy::Manual => Ok(ctx.conflict(batch, &fingerprint, "delete", policy, cur, inc, None)),
        Policy::Merge | Policy::LastWriterWins => {
            // A delete merged with an update is still a delete: the update is recorded in the
            // conflict, so it is not lost silently.
            let delete_wins = policy == Policy::Merge || incoming_wins(ctx, &rec);
            if delete_wins {
                bury(batch, ctx, fpr, version, reason)?;
            }
            Ok(ctx.conflict(
                batch,
                &fingerprint,
                "delete",
                policy,
                cur,
                inc,
                Some(policy_name(policy)),
            ))
        }
    }
}

/// The version a write must descend from: the stored certificate's, else its tombstone's,
/// else the empty version.
fn version_or_tombstone(
    batch: &ApplyBatch,
    fpr: &[u8],
    stored: Option<&CertRecord>,
) -> Result<VersionVector, StoreError> {
    Ok(match stored {
        Some(r) => r.version.clone(),
        None => records::tombstone(batch, fpr)?
            .map(|t| t.version)
            .unwrap_or_default(),
    })
}

pub(super) fn apply_replace(
    batch: &mut ApplyBatch,
    ctx: &mut Ctx,
    bytes: &[u8],
    base: &VersionVector,
    if_match: Option<&str>,
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
        prepared: None,
        limits,
        time: ctx.c.time,
    };
    let stored = batch.get_cert(&fpr)?;
    let current_version = version_or_tombstone(batch, &fpr, stored.as_ref())?;
    if let Some(tag) = if_match {
        if tag != current_version.etag() {
            return Ok(ApplyOutcome::PreconditionFailed {
                fingerprint,
                current: current_version.etag(),
            });
        }
    }
    let row = match incoming.merge_into(None) {
        Ok(Some(x)) => x,
        Ok(None) => return Ok(ApplyOutcome::Unchanged { fingerprint }),
        Err(e) => {
            return Ok(ApplyOutcome::Rejected {
                fingerprint,
                reason: e.to_string(),
            })
        }
    };
    let fresh = base.descends(&current_version);
    let policy = ctx.policies.replace;
    let version = ctx.next_version(&current_version, Some(base));
    let created = stored.as_ref().map(|r| r.created_at);
    if fresh {
        store_cert(batch, ctx, row, created, version)?;
        return Ok(ApplyOutcome::Replaced { fingerprint });
    }
    let cur = match &stored {
        Some(r) => cert_side(r),
        None => Side {
            version: current_version.clone(),
            origin: 0,
            time: 0,
            cert: None,
            actor: String::new(),
        },
    };
    let inc = ctx.side(Some(row.bytes.clone()), Some(base));
    match policy {
        Policy::Reject => Ok(ApplyOutcome::Stale {
            fingerprint,
            current: current_version.etag(),
        }),
        Policy::Manual => Ok(ctx.conflict(batch, &fingerprint, "replace", policy, cur, inc, None)),
        Policy::Merge | Policy::LastWriterWins => {
            // Against a delete (only its tombstone is stored) a replace wins by the same rule
            // as against a certificate: the later proposer time, then the higher origin.
            let wins = match &stored {
                Some(r) => incoming_wins(ctx, r),
                None => records::tombstone(batch, &fpr)?
                    .is_none_or(|t| (ctx.c.time, ctx.c.origin) > (t.time, t.origin)),
            };
            if policy == Policy::Merge {
                let merged = match incoming.merge_into(stored.as_ref()) {
                    Ok(merged) => merged,
                    Err(e) => {
                        return Ok(ApplyOutcome::Rejected {
                            fingerprint,
                            reason: e.to_string(),
                        })
                    }
                };
                if let Some(merged) = merged {
                    store_cert(batch, ctx, merged, created, version)?;
                }
            } else if wins {
                store_cert(batch, ctx, row, created, version)?;
            }
            Ok(ctx.conflict(
                batch,
                &fingerprint,
                "replace",
                policy,
                cur,
                inc,
                Some(policy_name(policy)),
            ))
        }
    }
}

pub(super) fn apply_resolve(
    batch: &mut ApplyBatch,
    ctx: &mut Ctx,
    id: u64,
    choose: &str,
    note: &str,
    limits: &pgp::Limits,
) -> Result<ApplyOutcome, StoreError> {
    let Some(mut c) = records::conflict(batch, id)? else {
        return Ok(ApplyOutcome::Rejected {
            fingerprint: String::new(),
            reason: format!("no conflict {id}"),
        });
    };
    let rejected = |reason: String| ApplyOutcome::Rejected {
        fingerprint: c.fingerprint.clone(),
        reason,
    };
    if c.status != "open" {
        return Ok(rejected(format!("conflict {id} is {}, not open", c.status)));
    }
    let Some(fpr) = pgp::Fingerprint::from_hex(&c.fingerprint) else {
        return Ok(rejected("bad fingerprint in conflict".into()));
    };
    let fpr = fpr.0;
    let stored = batch.get_cert(&fpr)?;
    let current_version = version_or_tombstone(batch, &fpr, stored.as_ref())?;
    if choose == "incoming" && current_version != c.current.version {
        // `incoming` replaces what is stored; what changed after the conflict (a revocation
        // merged in since, say) would be lost without the operator having seen it.
        return Ok(rejected(format!(
            "the certificate changed after conflict {id} was recorded; look at it again, or \
             choose merge"
        )));
    }
    let version = ctx.next_version(&current_version, Some(&c.incoming.version));
    let created = stored.as_ref().map(|r| r.created_at);
    match (choose, &c.incoming.cert) {
        ("current", _) => {}
        ("incoming", None) | ("merge", None) => {
            if stored.is_some() {
                bury(batch, ctx, &fpr, version, "conflict resolution")?;
            }
        }
        ("incoming", Some(b)) | ("merge", Some(b)) => {
            let Ok(incoming) = Cert::from_bytes(b) else {
                return Ok(rejected(
                    "stored incoming certificate does not parse".into(),
                ));
            };
            let base = if choose == "merge" {
                stored.as_ref().map(|r| r.cert.as_slice())
            } else {
                None
            };
            match merged_row(base, incoming, limits, ctx.c.time) {
                Ok(Some(row)) => store_cert(batch, ctx, row, created, version)?,
                Ok(None) => {}
                Err(e) => return Ok(rejected(e.to_string())),
            }
        }
        (other, _) => {
            return Ok(rejected(format!(
                "choose must be current, incoming or merge, not {other:?}"
            )))
        }
    }
    c.status = "resolved".into();
    c.resolution = Some(Resolution {
        choose: choose.into(),
        by: "operator".into(),
        note: note.into(),
        actor: ctx.c.actor.clone(),
        index: ctx.index,
        time: ctx.c.time,
    });
    records::put_conflict(batch, &c);
    Ok(ApplyOutcome::Resolved {
        id,
        fingerprint: c.fingerprint,
    })
}
