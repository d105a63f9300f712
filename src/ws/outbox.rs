//! Outbound back-pressure of one socket: the [`Outbox`] between the session and the response
//! body, the accounting of what the client has not read yet, the backlog limits, and the close
//! frame that goes out ahead of everything unsent when the session gives up on a client.
//!
//! Never parses or builds a JSON frame and never knows the session's actor type: it moves
//! encoded WebSocket bytes and counts them.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context as TaskContext, Poll, Waker};

use bytes::Bytes;
use futures_util::Stream;

/// Largest piece of an outgoing frame handed to the HTTP layer at once. Smaller pieces keep the
/// HTTP layer's write buffer from growing, but drain a flood of big frames more slowly: the
/// slow-consumer close then comes while such a client is still sending, and it sees a reset
/// instead of its close frame.
const MAX_CHUNK_BYTES: usize = 8 * 1024;

/// Unsent frames (or bytes) after which a client counts as not reading.
pub const MAX_BACKLOG_FRAMES: usize = 256;
pub const MAX_BACKLOG_BYTES: u64 = 1024 * 1024;

/// What the client has not read yet, right after a frame was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub frames: usize,
    pub bytes: u64,
}

impl Backlog {
    /// Past the limits: the client stopped reading. One frame alone (a long history on join)
    /// is not a backlog, however big.
    pub fn is_slow_consumer(&self) -> bool {
        self.frames > MAX_BACKLOG_FRAMES || (self.frames > 1 && self.bytes > MAX_BACKLOG_BYTES)
    }
}

/// Encoded frames on their way to one socket. Shared (one thread, one connection) by the
/// session, which accounts for what it writes, the task that drives the session's context,
/// which pushes the encoded bytes, and the response body, which pulls them.
#[derive(Clone, Default)]
pub struct Outbox(Rc<RefCell<Queue>>);

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Bytes>,
    written: u64,
    pulled: u64,
    /// Stream offset at which each unsent frame ends.
    ends: VecDeque<u64>,
    /// The session gave up on the client: this close frame goes next, then the end.
    close: Option<Bytes>,
    /// The rest of a chunk handed out in slices (it holds whole frames only once complete).
    partial: Option<Bytes>,
    aborted: bool,
    finished: bool,
    waker: Option<Waker>,
}

impl Outbox {
    /// Accounts for a frame with `payload` bytes that the session wrote; returns the backlog.
    pub fn wrote(&self, payload: usize) -> Backlog {
        self.0.borrow_mut().wrote(wire_len(payload))
    }

    /// Drops everything unsent; the client gets a close frame with `code` and `reason` next,
    /// then the end of the stream.
    pub fn abort(&self, code: u16, reason: &str) {
        self.0.borrow_mut().abort(close_frame(code, reason));
    }

    fn push(&self, bytes: Bytes) {
        self.0.borrow_mut().push(bytes);
    }

    fn finish(&self) {
        self.0.borrow_mut().finish();
    }
}

impl Queue {
    fn wrote(&mut self, frame_len: usize) -> Backlog {
        self.written += frame_len as u64;
        self.ends.push_back(self.written);
        Backlog { frames: self.ends.len(), bytes: self.written.saturating_sub(self.pulled) }
    }

    fn push(&mut self, bytes: Bytes) {
        if !self.aborted {
            self.chunks.push_back(bytes);
            self.wake();
        }
    }

    fn pulled(&mut self, n: usize) {
        self.pulled += n as u64;
        while self.ends.front().is_some_and(|end| *end <= self.pulled) {
            self.ends.pop_front();
        }
    }

    fn abort(&mut self, close: Bytes) {
        self.aborted = true;
        self.chunks.clear();
        self.ends.clear();
        self.close = Some(close);
        self.wake();
    }

    /// The HTTP layer copies each chunk into a per-connection write buffer that keeps its
    /// largest size: hand it big frames (a full presence list) in slices, zero-copy.
    fn slice(&mut self, mut chunk: Bytes) -> Bytes {
        if chunk.len() > MAX_CHUNK_BYTES {
            self.partial = Some(chunk.split_off(MAX_CHUNK_BYTES));
        }
        self.pulled(chunk.len());
        chunk
    }

    fn finish(&mut self) {
        self.finished = true;
        self.wake();
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// Size on the wire of an unmasked (server) frame carrying `payload` bytes.
fn wire_len(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        }
}

/// A close frame (server to client, unmasked); `reason` must fit a control frame (123 bytes).
fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason.as_bytes());
    Bytes::from(frame)
}

/// Drives the session's encoded output `frames` on a task of its own, moving it into
/// `outbox`, and returns the response body that drains the outbox as the socket takes it.
///
/// The session must not depend on the body being polled: the HTTP dispatcher stops polling
/// it once a client stops reading, and a session that froze then would miss its heartbeat,
/// its slow-consumer check and a filling mailbox. The task ends when `frames` ends (the
/// session stopped) or when the body is dropped (the connection is gone), dropping `frames`.
pub fn drive<S, E>(outbox: Outbox, frames: S) -> Outbound
where
    S: Stream<Item = Result<Bytes, E>> + 'static,
{
    let (body_dropped, dropped) = tokio::sync::oneshot::channel::<()>();
    actix_web::rt::spawn(Drive { frames, outbox: outbox.clone(), dropped });
    Outbound { outbox, done: false, _body_dropped: body_dropped }
}

pin_project_lite::pin_project! {
    /// The task of [`drive`], written out rather than as an `async` block: it holds the
    /// session's context once (an `async` block keeps a moved-in stream and its pinned copy
    /// apart), and it lives as long as the session.
    struct Drive<S> {
        #[pin]
        frames: S,
        outbox: Outbox,
        dropped: tokio::sync::oneshot::Receiver<()>,
    }
}

impl<S, E> std::future::Future for Drive<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let mut this = self.project();
        // The body was dropped (never sent: the receiver only ever sees the sender go).
        if Pin::new(&mut *this.dropped).poll(cx).is_ready() {
            this.outbox.finish();
            return Poll::Ready(());
        }
        loop {
            match this.frames.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => this.outbox.push(bytes),
                Poll::Ready(Some(Err(_)) | None) => {
                    this.outbox.finish();
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The response body: drains the outbox as fast as the socket takes it.
pub struct Outbound {
    outbox: Outbox,
    done: bool,
    /// Dropped with the body (connection gone): tells the driving task to stop.
    _body_dropped: tokio::sync::oneshot::Sender<()>,
}

impl Stream for Outbound {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let shared = self.outbox.0.clone();
        let mut queue = shared.borrow_mut();
        // A frame already begun is finished first, even before a close.
        if let Some(rest) = queue.partial.take() {
            let piece = queue.slice(rest);
            return Poll::Ready(Some(Ok(piece)));
        }
        if let Some(close) = queue.close.take() {
            self.done = true;
            return Poll::Ready(Some(Ok(close)));
        }
        if let Some(chunk) = queue.chunks.pop_front() {
            let piece = queue.slice(chunk);
            return Poll::Ready(Some(Ok(piece)));
        }
        if queue.finished {
            return Poll::Ready(None);
        }
        queue.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body over `outbox` with no driving task (the tests push by hand).
    fn body(outbox: &Outbox) -> Outbound {
        let (body_dropped, _) = tokio::sync::oneshot::channel::<()>();
        Outbound { outbox: outbox.clone(), done: false, _body_dropped: body_dropped }
    }

    fn poll(body: &mut Outbound) -> Poll<Option<Bytes>> {
        let mut cx = TaskContext::from_waker(Waker::noop());
        Pin::new(body).poll_next(&mut cx).map(|item| item.map(|r| r.expect("no body error")))
    }

    /// Writes a text frame of `payload` bytes as the session would: accounted, then encoded.
    fn write(outbox: &Outbox, payload: usize) -> Backlog {
        let backlog = outbox.wrote(payload);
        outbox.push(Bytes::from(vec![b'x'; wire_len(payload)]));
        backlog
    }

    #[test]
    fn wire_len_counts_the_header_of_each_payload_size() {
        assert_eq!(wire_len(0), 2);
        assert_eq!(wire_len(125), 127);
        assert_eq!(wire_len(126), 130);
        assert_eq!(wire_len(65535), 65539);
        assert_eq!(wire_len(65536), 65546);
    }

    #[test]
    fn close_frame_carries_code_and_reason() {
        assert_eq!(&close_frame(1008, "slow consumer")[..], b"\x88\x0f\x03\xf0slow consumer");
    }

    #[test]
    fn backlog_counts_frames_until_their_last_byte_is_pulled() {
        let outbox = Outbox::default();
        let mut body = body(&outbox);
        assert_eq!(write(&outbox, 10), Backlog { frames: 1, bytes: 12 });
        assert_eq!(write(&outbox, 20_000), Backlog { frames: 2, bytes: 12 + 20_004 });
        // The first frame goes out whole; the big one in slices.
        assert_eq!(poll(&mut body).map(|b| b.map(|b| b.len())), Poll::Ready(Some(12)));
        assert_eq!(poll(&mut body).map(|b| b.map(|b| b.len())), Poll::Ready(Some(MAX_CHUNK_BYTES)));
        // Part of a frame pulled: still unsent.
        assert_eq!(outbox.wrote(0), Backlog { frames: 2, bytes: 20_004 - MAX_CHUNK_BYTES as u64 + 2 });
        outbox.push(Bytes::from_static(b"\x89\x00"));
        // The rest of the big frame comes first, in slices, ahead of the ping.
        let mut rest = 20_004 - MAX_CHUNK_BYTES;
        while rest > 0 {
            let piece = rest.min(MAX_CHUNK_BYTES);
            assert_eq!(poll(&mut body).map(|b| b.map(|b| b.len())), Poll::Ready(Some(piece)));
            rest -= piece;
        }
        assert_eq!(outbox.0.borrow().ends.len(), 1, "the big frame is sent, the ping is not");
        assert_eq!(poll(&mut body).map(|b| b.map(|b| b.len())), Poll::Ready(Some(2)));
        assert_eq!(poll(&mut body), Poll::Pending);
        assert_eq!(write(&outbox, 0), Backlog { frames: 1, bytes: 2 });
    }

    #[test]
    fn slow_consumer_past_either_limit_but_never_for_one_frame() {
        let one_big = Backlog { frames: 1, bytes: 10 * MAX_BACKLOG_BYTES };
        assert!(!one_big.is_slow_consumer());
        assert!(Backlog { frames: 2, bytes: MAX_BACKLOG_BYTES + 1 }.is_slow_consumer());
        assert!(!Backlog { frames: 2, bytes: MAX_BACKLOG_BYTES }.is_slow_consumer());
        assert!(!Backlog { frames: MAX_BACKLOG_FRAMES, bytes: 0 }.is_slow_consumer());
        assert!(Backlog { frames: MAX_BACKLOG_FRAMES + 1, bytes: 0 }.is_slow_consumer());

        let outbox = Outbox::default();
        let backlog = (0..=MAX_BACKLOG_FRAMES).fold(None, |_, _| Some(write(&outbox, 1))).unwrap();
        assert_eq!(backlog, Backlog { frames: MAX_BACKLOG_FRAMES + 1, bytes: 3 * (MAX_BACKLOG_FRAMES as u64 + 1) });
        assert!(backlog.is_slow_consumer());
    }

    #[test]
    fn abort_finishes_the_frame_begun_then_closes_and_ends() {
        let outbox = Outbox::default();
        let mut body = body(&outbox);
        write(&outbox, 3 * MAX_CHUNK_BYTES);
        write(&outbox, 5);
        assert_eq!(poll(&mut body).map(|b| b.map(|b| b.len())), Poll::Ready(Some(MAX_CHUNK_BYTES)));
        outbox.abort(1008, "slow consumer");
        // Pushed after the abort: never sent.
        outbox.push(Bytes::from_static(b"late"));
        assert_eq!(poll(&mut body).map(|b| b.map(|b| b.len())), Poll::Ready(Some(MAX_CHUNK_BYTES)));
        assert_eq!(poll(&mut body).map(|b| b.map(|b| b.len())), Poll::Ready(Some(MAX_CHUNK_BYTES)));
        assert_eq!(poll(&mut body).map(|b| b.map(|b| b.len())), Poll::Ready(Some(4)));
        assert_eq!(poll(&mut body), Poll::Ready(Some(close_frame(1008, "slow consumer"))));
        assert_eq!(poll(&mut body), Poll::Ready(None));
    }

    #[test]
    fn finished_outbox_ends_the_body_after_what_is_queued() {
        let outbox = Outbox::default();
        let mut body = body(&outbox);
        assert_eq!(poll(&mut body), Poll::Pending);
        write(&outbox, 1);
        outbox.finish();
        assert_eq!(poll(&mut body).map(|b| b.map(|b| b.len())), Poll::Ready(Some(3)));
        assert_eq!(poll(&mut body), Poll::Ready(None));
    }
}
