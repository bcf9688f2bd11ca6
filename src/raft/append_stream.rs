//! Appends as one ordered stream per replication session (openraft's `stream_append`).
//!
//! openraft keeps a replication session to each follower open while it leads, and feeds it a
//! request whenever there are new entries or a new commit index. Over the unary call every
//! request waits for the previous answer; over a stream the leader sends the next request at
//! once (pipelining) and the follower's Raft answers them in order, one HTTP/2 stream for the
//! whole session.
//!
//! The sending side ([`send`]) keeps the unary call's limits: at most
//! [`super::network::within_budget`] of a request's entries (a request cut short ends the
//! stream after its answer, and openraft opens a new session from there), and a deadline per
//! answer that grows with the request's size and with the answers queued before it. A peer
//! running an older release answers "unsupported"; the caller then falls back to unary calls.
//! The receiving side ([`RaftNode::handle_append_stream`]) decodes each request and hands the
//! stream to openraft.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use openraft::errors::{NetworkError, RPCError, Timeout, Unreachable};
use openraft::raft::{AppendEntriesRequest, StreamAppendError, StreamAppendResult};
use openraft::RPCTypes;
use tokio::time::Instant;

use super::codec;
use super::network::{rpc_timeout, within_budget};
use super::sync::SyncTracker;
use super::transport::{ReplyStream, TransportError};
use super::types::{NodeId, TypeConfig};
use super::wire::Reply;
use super::RaftNode;

/// One of openraft's answers to a streamed append, or why there is none.
type Answer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// The answers still owed, by deadline, and whether the request side has ended; shared by
/// the request and the answer side of one session.
#[derive(Default)]
pub(super) struct Owed {
    deadlines: VecDeque<Instant>,
    input_done: bool,
}

impl Owed {
    /// Record a request of `bytes` sent now: it is answered after those queued before it.
    fn push(&mut self, soft_ttl: Duration, bytes: usize) {
        let now = Instant::now();
        let after = self.deadlines.back().copied().unwrap_or(now).max(now);
        self.deadlines
            .push_back(after + rpc_timeout(soft_ttl, bytes));
    }
}

/// The encoded requests of one session: each cut to the append budget; a request cut short is
/// the last one.
pub(super) fn encode_requests<S>(
    input: S,
    soft_ttl: Duration,
    owed: Arc<Mutex<Owed>>,
    (sync, target): (Arc<SyncTracker>, NodeId),
) -> BoxStream<'static, Vec<u8>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    futures::stream::unfold((input, owed, false), move |(mut input, owed, last)| {
        let sync = Arc::clone(&sync);
        async move {
            let next = if last { None } else { input.next().await };
            let Some(mut req) = next else {
                owed.lock().expect("not poisoned").input_done = true;
                return None;
            };
            let keep = within_budget(&req.entries);
            let cut = keep < req.entries.len();
            req.entries.truncate(keep);
            let body = match codec::encode(&req) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "encoding an append request");
                    owed.lock().expect("not poisoned").input_done = true;
                    return None;
                }
            };
            owed.lock()
                .expect("not poisoned")
                .push(soft_ttl, body.len());
            sync.request_streamed(target);
            Some((body, (input, owed, cut)))
        }
    })
    .boxed()
}

/// Ends the request stream it was made for when dropped.
pub(super) struct EndOnDrop(futures::stream::AbortHandle);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `calls`, made to end when the returned guard is dropped (it wakes the sender, whose next
/// poll of the stream then sees its end).
pub(super) fn until_dropped(
    calls: BoxStream<'static, Vec<u8>>,
) -> (BoxStream<'static, Vec<u8>>, EndOnDrop) {
    let (handle, registration) = futures::stream::AbortHandle::new_pair();
    (
        futures::stream::Abortable::new(calls, registration).boxed(),
        EndOnDrop(handle),
    )
}

/// What waiting for the next answer gave.
enum Next {
    Answer(Vec<u8>),
    Failed(TransportError),
    End,
    Late(Duration),
}

/// The next answer, within the deadline of the oldest request still owed one. With nothing
/// owed there is no deadline (the session is idle until openraft has entries to send), except
/// once the request side has ended: then the end of the stream is awaited for `idle` at most.
async fn next_in_time(replies: &mut ReplyStream, owed: &Mutex<Owed>, idle: Duration) -> Next {
    let started = Instant::now();
    loop {
        let (deadline, input_done) = {
            let o = owed.lock().expect("not poisoned");
            (o.deadlines.front().copied(), o.input_done)
        };
        let limit = deadline.unwrap_or_else(|| Instant::now() + idle);
        match tokio::time::timeout_at(limit, replies.next()).await {
            Ok(Some(Ok(body))) => {
                owed.lock().expect("not poisoned").deadlines.pop_front();
                return Next::Answer(body);
            }
            Ok(Some(Err(e))) => return Next::Failed(e),
            Ok(None) => return Next::End,
            Err(_) if deadline.is_some() => return Next::Late(started.elapsed()),
            Err(_) if input_done => return Next::End,
            Err(_) => continue,
        }
    }
}

/// openraft's answers from the peer's reply bodies, ending at the first error, a conflict or
/// a higher vote, or when the peer ends the stream. When it ends or is dropped, so is
/// `end_calls`, and the request side ends too.
pub(super) fn decode_answers(
    replies: ReplyStream,
    owed: Arc<Mutex<Owed>>,
    end_calls: EndOnDrop,
    soft_ttl: Duration,
    me: NodeId,
    target: NodeId,
) -> BoxStream<'static, Answer> {
    futures::stream::unfold(Some((replies, owed, end_calls)), move |state| async move {
        let (mut replies, owed, end_calls) = state?;
        let item: Answer = match next_in_time(&mut replies, &owed, soft_ttl).await {
            Next::Answer(body) => {
                match codec::decode::<Reply<StreamAppendResult<TypeConfig>>>(&body) {
                    Ok(Ok(answer)) => {
                        let go_on = answer.is_ok();
                        return Some((Ok(answer), go_on.then_some((replies, owed, end_calls))));
                    }
                    Ok(Err(msg)) => Err(RPCError::Unreachable(Unreachable::from_string(format!(
                        "peer {target} failed: {msg}"
                    )))),
                    Err(e) => Err(RPCError::Unreachable(Unreachable::from_string(format!(
                        "bad reply from peer {target}: {e}"
                    )))),
                }
            }
            Next::Failed(e) => Err(super::network::rpc_error(
                me,
                target,
                e,
                RPCTypes::AppendEntries,
                soft_ttl,
            )),
            Next::End => {
                let missing = owed.lock().expect("not poisoned").deadlines.len();
                if missing == 0 {
                    return None;
                }
                Err(RPCError::Network(NetworkError::from_string(format!(
                    "append stream to peer {target} ended with {missing} answers missing"
                ))))
            }
            Next::Late(waited) => Err(RPCError::Timeout(Timeout {
                action: RPCTypes::AppendEntries,
                id: me,
                target,
                timeout: waited,
            })),
        };
        Some((item, None))
    })
    .boxed()
}

impl RaftNode {
    /// Answer a stream of encoded append requests from the leader, in order, one encoded
    /// [`Reply`] per request. An undecodable request ends the stream (the sender sees the
    /// answers missing and starts over).
    pub fn handle_append_stream<S>(&self, calls: S) -> BoxStream<'static, Vec<u8>>
    where
        S: Stream<Item = Vec<u8>> + Send + 'static,
    {
        let requests = calls
            .map(|body| codec::decode::<AppendEntriesRequest<TypeConfig>>(&body))
            .take_while(|r| {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "undecodable append in a stream; ending it");
                }
                std::future::ready(r.is_ok())
            })
            .filter_map(|r| std::future::ready(r.ok()));
        let node = self.clone();
        self.openraft()
            .stream_append(requests)
            .map(move |r| {
                if matches!(r, Ok(Ok(_)) | Ok(Err(StreamAppendError::Conflict(_)))) {
                    node.note_leader_heard();
                }
                let reply: Reply<StreamAppendResult<TypeConfig>> = r.map_err(|f| f.to_string());
                codec::encode(&reply).unwrap_or_default()
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_is_due_after_the_ones_queued_before_it() {
        let mut o = Owed::default();
        let ttl = Duration::from_millis(75);
        o.push(ttl, 100);
        o.push(ttl, 100);
        o.push(ttl, 4 << 20);
        let d: Vec<Instant> = o.deadlines.iter().copied().collect();
        assert!(d[1] >= d[0] + ttl, "the second waits for the first");
        assert!(
            d[2] >= d[1] + rpc_timeout(ttl, 4 << 20),
            "a large request adds its own transfer time"
        );
    }
}
