//! Signed admin requests (`/pks/delete`, `/pks/replace`) on the node that received them,
//! after [`crate::pgp::verify_admin_request`] authenticated them: the window check against the
//! time stamped into the commands, a look at the local replica for a signature already used
//! (refused at once, audited through [`Keyserver::note_refusal`]), then the commands, each
//! carrying the [`SignedUse`] that apply checks again, deterministically on every node
//! ([`super::replay`]). Two copies of one request racing through two nodes both reach apply;
//! the first in the log is applied, the second refused there.
use std::time::{SystemTime, UNIX_EPOCH};

use super::command::{ApplyOutcome, Command, Op, Response};
use super::keys::Keyserver;
use super::replay::{self, SignedUse};
use super::submission::{item_report, ItemReport, SubmitError};
use crate::pgp::{AdminAction, Limits, SignedAdminRequest};

impl Keyserver {
    /// Carry out an authenticated signed admin request whose signature may be at most
    /// `window` seconds from now. Returns the per-certificate report and the last log index.
    pub async fn signed_admin(
        &self,
        req: SignedAdminRequest,
        limits: Limits,
        window: u64,
    ) -> Result<(Vec<ItemReport>, u64), SubmitError> {
        let actor = format!("admin-key {}", req.signer);
        let action = match req.action {
            AdminAction::Delete => "delete",
            AdminAction::Replace => "replace",
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signed = SignedUse {
            id: req.use_id.to_vec(),
            signed_at: req.signed_at,
            window,
            request: self.request_id(),
        };
        if !replay::within_window(signed.signed_at, now, window) {
            let reason = replay::window_reason(signed.signed_at, now, window);
            self.note_refusal(action, &actor, &req.fingerprints, &reason);
            return Err(SubmitError::SignatureTime(reason));
        }
        if replay::used_by(self.store(), &signed.id)
            .map_err(|e| SubmitError::Raft(e.into()))?
            .is_some()
        {
            self.note_refusal(action, &actor, &req.fingerprints, replay::ALREADY_USED);
            return Err(SubmitError::SignatureUsed);
        }
        let ops = match req.action {
            AdminAction::Delete => {
                vec![self.delete_op(req.fingerprints, None, "signed /pks/delete")?]
            }
            AdminAction::Replace => {
                let mut ops = Vec::new();
                for cert in req.certs {
                    ops.push(self.replace_op(cert, limits, None).await?);
                }
                ops
            }
        };
        let mut report = Vec::new();
        let mut index = 0;
        for op in ops {
            let (resp, i) = self
                .commit(self.signed_command(op, &actor, &signed, now))
                .await?;
            refused(&resp)?;
            report.extend(resp.outcomes.into_iter().map(item_report));
            index = i;
        }
        Ok((report, index))
    }

    /// A command for `op` stamped with `time`, carrying `signed`.
    fn signed_command(&self, op: Op, actor: &str, signed: &SignedUse, time: u64) -> Command {
        let mut cmd = self.command(op, actor);
        let Command::V1(c) = &mut cmd;
        c.time = time;
        c.signed = Some(signed.clone());
        cmd
    }
}

/// The error for a command apply refused because of its signature.
fn refused(resp: &Response) -> Result<(), SubmitError> {
    match resp.outcomes.first() {
        Some(ApplyOutcome::SignatureRefused { replay: true, .. }) => {
            Err(SubmitError::SignatureUsed)
        }
        Some(ApplyOutcome::SignatureRefused { reason, .. }) => {
            Err(SubmitError::SignatureTime(reason.clone()))
        }
        _ => Ok(()),
    }
}
