//! Replay protection for signed admin requests (`POST /pks/delete`, `POST /pks/replace`).
//!
//! A command proposed for a signed request carries a [`SignedUse`]: the signature's identity
//! (see [`crate::pgp::SignedAdminRequest::use_id`]), when it was made, the window the proposer
//! allowed, and a nonce shared by the commands of one HTTP request (a `/pks/replace` naming
//! several certificates is one command per certificate). Apply, deterministically on every
//! node and with the command's stamped time as the only "now":
//!
//! - refuses the command when the signature was made more than `window` seconds before or after
//!   the command's time;
//! - refuses it when the identity was already used by another request ("signature already
//!   used"): the first use wins, whichever node each copy came through;
//! - otherwise remembers the identity until `signed_at + window` (after that the window check
//!   refuses the signature anyway).
//!
//! Remembered identities are pruned, a few per command, once their expiry is more than
//! [`SKEW_GRACE`] behind a command's time. The grace keeps a signature refused when the next
//! proposer's clock runs behind the clock of the one whose command pruned it.
//!
//! Everything lives in the store's `used_signatures` table: `h` ++ id → expiry (big-endian u64)
//! ++ request nonce (big-endian u128); `e` ++ expiry ++ id → empty, so pruning walks in expiry
//! order. Must not depend on the api or rpc layers.
use serde::{Deserialize, Serialize};

use super::apply::Ctx;
use super::command::{ApplyOutcome, CommandV1, Op, Response};
use crate::store::{ApplyBatch, Store, StoreError, Table};

/// What a command authorised by a signed admin request carries for replay protection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedUse {
    /// The signature's identity (SHA-256, 32 bytes).
    #[serde(with = "serde_bytes")]
    pub id: Vec<u8>,
    /// When the signature was made, Unix seconds.
    pub signed_at: u64,
    /// Most seconds between `signed_at` and the command's time (the proposer's setting).
    pub window: u64,
    /// The same for every command of one HTTP request, different for every request.
    pub request: u128,
}

/// Seconds a used signature is remembered beyond its window: the clock skew between proposers
/// that replay protection tolerates.
pub const SKEW_GRACE: u64 = 3600;

/// Most remembered signatures pruned per command.
const PRUNE_BATCH: usize = 64;

/// The one-line reason of a replay refusal.
pub const ALREADY_USED: &str = "signature already used";

/// Whether a signature made at `signed_at` may authorise a request at `time`.
pub fn within_window(signed_at: u64, time: u64, window: u64) -> bool {
    signed_at.abs_diff(time) <= window
}

/// Why a signature made at `signed_at` may not authorise a request at `time`.
pub fn window_reason(signed_at: u64, time: u64, window: u64) -> String {
    format!(
        "signature made at {signed_at} (Unix time), {} s from the request time {time}: more than \
         the {window} s allowed; sign the request again",
        signed_at.abs_diff(time)
    )
}

fn key_h(id: &[u8]) -> Vec<u8> {
    [&b"h"[..], id].concat()
}

fn key_e(until: u64, id: &[u8]) -> Vec<u8> {
    [&b"e"[..], &until.to_be_bytes(), id].concat()
}

/// The request nonce that used signature `id` (committed state), if it was used: the proposer
/// refuses a replay its replica already knows without proposing it.
pub fn used_by(store: &Store, id: &[u8]) -> Result<Option<u128>, StoreError> {
    Ok(store.get(Table::UsedSignatures, &key_h(id))?.and_then(|v| {
        let b: [u8; 16] = v.get(8..24)?.try_into().ok()?;
        Some(u128::from_be_bytes(b))
    }))
}

fn used_by_in(batch: &ApplyBatch, id: &[u8]) -> Result<Option<u128>, StoreError> {
    Ok(batch.get(Table::UsedSignatures, &key_h(id))?.and_then(|v| {
        let b: [u8; 16] = v.get(8..24)?.try_into().ok()?;
        Some(u128::from_be_bytes(b))
    }))
}

/// Forget used signatures whose expiry is more than [`SKEW_GRACE`] before `time`, at most
/// [`PRUNE_BATCH`]; reads the state as the batch sees it, so the result does not depend on how
/// entries were batched.
pub(super) fn prune(batch: &mut ApplyBatch, time: u64) -> Result<(), StoreError> {
    for (k, _) in batch.scan(Table::UsedSignatures, Some(b"e"), PRUNE_BATCH)? {
        let Some(until) = k
            .get(1..9)
            .filter(|_| k.first() == Some(&b'e'))
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            break;
        };
        if until.saturating_add(SKEW_GRACE) >= time {
            break;
        }
        batch.delete(Table::UsedSignatures, &key_h(&k[9..]));
        batch.delete(Table::UsedSignatures, &k);
    }
    Ok(())
}

/// The command's target fingerprints, for the audit of a refusal.
fn targets(op: &Op) -> Vec<String> {
    match op {
        Op::Delete { fingerprints, .. } => fingerprints.clone(),
        Op::Replace { cert, .. } => super::apply::parse_cert(cert)
            .map(|c| vec![c.fingerprint().to_hex()])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn action(op: &Op) -> &'static str {
    match op {
        Op::Delete { .. } => "delete",
        Op::Replace { .. } => "replace",
        Op::Submit { .. } => "add",
        Op::SetPolicies { .. } => "policies",
        Op::Resolve { .. } => "resolve",
        Op::AuditRefusal { .. } => "refusal",
        Op::Checkpoint => "checkpoint",
        Op::SetRouting { .. } => "routing",
    }
}

/// Check and record the signed use the command carries, if any. `Some(response)` when the command is
/// refused (audited here, nothing else applied); `None` when it may go on.
pub(super) fn admit(batch: &mut ApplyBatch, ctx: &mut Ctx) -> Result<Option<Response>, StoreError> {
    let c: &CommandV1 = ctx.c;
    let Some(u) = &c.signed else {
        return Ok(None);
    };
    let refused = if !within_window(u.signed_at, c.time, u.window) {
        Some(ApplyOutcome::SignatureRefused {
            replay: false,
            reason: window_reason(u.signed_at, c.time, u.window),
        })
    } else if used_by_in(batch, &u.id)?.is_some_and(|r| r != u.request) {
        Some(ApplyOutcome::SignatureRefused {
            replay: true,
            reason: ALREADY_USED.into(),
        })
    } else {
        None
    };
    if let Some(o) = refused {
        let (_, line) = super::apply::describe(&o);
        let fprs = targets(&c.op);
        if fprs.is_empty() {
            ctx.audit_line(batch, action(&c.op), None, line.clone());
        }
        for f in fprs {
            ctx.audit_line(batch, action(&c.op), Some(f), line.clone());
        }
        return Ok(Some(Response { outcomes: vec![o] }));
    }
    let until = u.signed_at.saturating_add(u.window);
    let value = [&until.to_be_bytes()[..], &u.request.to_be_bytes()].concat();
    batch.put(Table::UsedSignatures, &key_h(&u.id), value);
    batch.put(Table::UsedSignatures, &key_e(until, &u.id), Vec::new());
    Ok(None)
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
