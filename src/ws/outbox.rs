//! Outbound back-pressure of one socket: the [`Outbox`] between the session and the socket,
//! the accounting of what the client has not read yet, the backlog limits, and the close
//! frame that goes out ahead of everything unsent when the session gives up on a client.
//!
//! Never parses or builds a JSON frame and never knows the session's actor type: it moves
//! encoded WebSocket bytes and counts them.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context as TaskContext, Poll};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWrite;

/// Unsent frames (or bytes) after which a client counts as not reading.
pub const MAX_BACKLOG_FRAMES: usize = 256;
pub const MAX_BACKLOG_BYTES: u64 = 1024 * 1024;

/// Chunks handed to the socket in one vectored write.
const WRITE_SLICES: usize = 16;

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

/// Encoded bytes on their way to one socket. Shared (one thread, one connection) by the
/// session, which accounts for the frames it writes, and the connection, which pushes the
/// encoded bytes and writes them to the socket straight from here (no copy).
#[derive(Clone, Default)]
pub struct Outbox(Rc<RefCell<Queue>>);

#[derive(Default)]
struct Queue {
    chunks: VecDeque<Bytes>,
    /// Chunks at the front that must go out whole even after an abort: the upgrade's
    /// response head, and a chunk already begun on the socket.
    keep: usize,
    written: u64,
    pulled: u64,
    /// Stream offset at which each unsent frame ends.
    ends: VecDeque<u64>,
    aborted: bool,
}

impl Outbox {
    /// Queues `head` (the upgrade's response), which goes out whole before any frame: call
    /// it before the session writes anything.
    pub fn head(&self, head: Bytes) {
        let mut queue = self.0.borrow_mut();
        debug_assert!(queue.chunks.is_empty() && queue.written == 0, "the head comes first");
        queue.written = head.len() as u64;
        queue.chunks.push_back(head);
        queue.keep = 1;
    }

    /// Accounts for a frame with `payload` bytes that the session wrote; returns the backlog.
    pub fn wrote(&self, payload: usize) -> Backlog {
        self.0.borrow_mut().wrote(wire_len(payload))
    }

    /// Drops everything unsent; the client gets a close frame with `code` and `reason` next,
    /// then the end of the stream.
    pub fn abort(&self, code: u16, reason: &str) {
        self.0.borrow_mut().abort(close_frame(code, reason));
    }

    /// Queues encoded bytes of the session (nothing once it has aborted).
    pub fn push(&self, bytes: Bytes) {
        let mut queue = self.0.borrow_mut();
        if !queue.aborted && !bytes.is_empty() {
            queue.chunks.push_back(bytes);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.borrow().chunks.is_empty()
    }

    /// Writes what is queued to `io` until it is all sent or the socket is full.
    pub fn poll_write_to<W: AsyncWrite + Unpin>(&self, io: &mut W, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let mut queue = self.0.borrow_mut();
        while !queue.chunks.is_empty() {
            let written = {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let n = slices.iter_mut().zip(&queue.chunks).map(|(slice, chunk)| *slice = IoSlice::new(chunk)).count();
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            queue.sent(written);
        }
        Poll::Ready(Ok(()))
    }
}

impl Queue {
    fn wrote(&mut self, frame_len: usize) -> Backlog {
        self.written += frame_len as u64;
        self.ends.push_back(self.written);
        Backlog { frames: self.ends.len(), bytes: self.written.saturating_sub(self.pulled) }
    }

    /// `n` bytes from the front went out on the socket.
    fn sent(&mut self, mut n: usize) {
        self.pulled += n as u64;
        while self.ends.front().is_some_and(|end| *end <= self.pulled) {
            self.ends.pop_front();
        }
        while n > 0 {
            let front = self.chunks.front_mut().expect("no more sent than queued");
            if front.len() <= n {
                n -= front.len();
                self.chunks.pop_front();
                self.keep = self.keep.saturating_sub(1);
            } else {
                front.advance(n);
                self.keep = self.keep.max(1);
                n = 0;
            }
        }
    }

    fn abort(&mut self, close: Bytes) {
        self.aborted = true;
        self.chunks.truncate(self.keep);
        self.chunks.push_back(close);
        self.ends.clear();
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

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    /// A socket that takes at most `room` more bytes (then it is full: `Pending`).
    #[derive(Default)]
    struct Socket {
        out: Vec<u8>,
        room: usize,
    }

    impl AsyncWrite for Socket {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut TaskContext<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.room);
            if n == 0 {
                return Poll::Pending;
            }
            self.room -= n;
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Lets `room` more bytes through to `socket`; `true` once the outbox is empty.
    fn drain(outbox: &Outbox, socket: &mut Socket, room: usize) -> bool {
        socket.room += room;
        let mut cx = TaskContext::from_waker(Waker::noop());
        match outbox.poll_write_to(socket, &mut cx) {
            Poll::Ready(result) => {
                result.expect("the socket takes what it has room for");
                true
            }
            Poll::Pending => false,
        }
    }

    /// Writes a text frame of `payload` bytes as the session would: accounted, then encoded.
    fn write(outbox: &Outbox, payload: usize, byte: u8) -> Backlog {
        let backlog = outbox.wrote(payload);
        outbox.push(Bytes::from(vec![byte; wire_len(payload)]));
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
    fn backlog_counts_frames_until_their_last_byte_is_on_the_socket() {
        let outbox = Outbox::default();
        outbox.head(Bytes::from_static(b"HEAD"));
        let mut socket = Socket::default();
        assert_eq!(write(&outbox, 10, b'a'), Backlog { frames: 1, bytes: 4 + 12 });
        assert_eq!(write(&outbox, 20_000, b'b'), Backlog { frames: 2, bytes: 4 + 12 + 20_004 });
        // The head and the first frame go out, the big one only in part.
        assert!(!drain(&outbox, &mut socket, 4 + 12 + 5_000));
        assert_eq!(outbox.wrote(0), Backlog { frames: 2, bytes: 15_004 + 2 });
        outbox.push(Bytes::from_static(b"\x89\x00"));
        assert!(!drain(&outbox, &mut socket, 15_004));
        assert_eq!(outbox.0.borrow().ends.len(), 1, "the big frame is sent, the ping is not");
        assert!(drain(&outbox, &mut socket, 2));
        assert_eq!(socket.out.len(), 4 + 12 + 20_004 + 2);
        assert_eq!(&socket.out[..4], b"HEAD");
        assert_eq!(write(&outbox, 0, b'c'), Backlog { frames: 1, bytes: 2 });
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
        let backlog = (0..=MAX_BACKLOG_FRAMES).fold(None, |_, _| Some(write(&outbox, 1, b'x'))).unwrap();
        assert_eq!(backlog, Backlog { frames: MAX_BACKLOG_FRAMES + 1, bytes: 3 * (MAX_BACKLOG_FRAMES as u64 + 1) });
        assert!(backlog.is_slow_consumer());
    }

    #[test]
    fn abort_finishes_what_is_begun_then_closes() {
        let outbox = Outbox::default();
        outbox.head(Bytes::from_static(b"HEAD"));
        let mut socket = Socket::default();
        write(&outbox, 1_000, b'a');
        write(&outbox, 5, b'b');
        // Part of the head only: the abort keeps it whole, drops both frames.
        assert!(!drain(&outbox, &mut socket, 2));
        outbox.abort(1008, "slow consumer");
        // Pushed after the abort: never sent.
        outbox.push(Bytes::from_static(b"late"));
        assert!(drain(&outbox, &mut socket, 1_000));
        assert_eq!(socket.out, [&b"HEAD"[..], &close_frame(1008, "slow consumer")].concat());

        let outbox = Outbox::default();
        let mut socket = Socket::default();
        write(&outbox, 1_000, b'a');
        write(&outbox, 5, b'b');
        // A frame begun goes out whole, the next one not at all.
        assert!(!drain(&outbox, &mut socket, 10));
        outbox.abort(1008, "slow consumer");
        assert!(drain(&outbox, &mut socket, 10_000));
        assert_eq!(socket.out.len(), 1_004 + close_frame(1008, "slow consumer").len());
        assert!(socket.out[..1_004].iter().all(|b| *b == b'a'));
        assert!(outbox.is_empty());
    }
}
