//! The socket under a session, once the HTTP layer has handed it over: the upgrade request
//! goes through the app like any other (Origin check, logging, the handshake), and when the
//! app accepts it ([`Takeover::accept`]) the connection here reads the socket into the
//! session's [`Inbox`], drives the session, and writes its [`Outbox`] to the socket.
//!
//! Nothing is buffered per connection while it is idle: reads go through a buffer on the
//! stack and are handed on at their size, writes go out from the session's encoded frames.
//! The HTTP layer's own read and write buffers (8 KiB each) are dropped at the upgrade.
//!
//! Never parses a frame or knows the session's actor type: it moves bytes between the
//! socket and the session's byte streams, and ends the connection once the session has.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_codec::{Encoder, Framed};
use actix_http::body::{self, BodySize, BoxBody, MessageBody};
use actix_http::error::PayloadError;
use actix_http::h1::{self, Message};
use actix_http::HttpMessage;
use actix_http::{ConnectionType, Request, Response, StatusCode};
use actix_service::Service;
use actix_web::dev::ServiceResponse;
use actix_web::rt::net::TcpStream;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::outbox::Outbox;

/// Bytes read from the socket at once (a buffer on the stack).
const READ_CHUNK: usize = 16 * 1024;

/// Bytes received and not yet taken by the session after which the socket is not read
/// (the client's sends then wait in TCP).
const INBOX_LIMIT: usize = 128 * 1024;

/// Rounds of read / session / write in one wake-up before the connection yields.
const MAX_ROUNDS: usize = 32;

/// How long a connection whose session has ended may take to send what is left (what the
/// client sends meanwhile is read and dropped, so that it gets to read its close frame).
pub const CLOSING_FOR: Duration = Duration::from_secs(5);

/// How long the client then has to close its side before the connection is dropped.
pub const LINGER_FOR: Duration = Duration::from_secs(1);

/// The session's encoded output, as actix-web-actors' `WebsocketContext` produces it.
pub type Frames = Pin<Box<dyn Stream<Item = Result<Bytes, actix_web::Error>>>>;

/// Put into each upgrade request's extensions; the app fills it when it accepts the socket.
#[derive(Clone, Default)]
pub struct Takeover(Rc<RefCell<Option<(Frames, Outbox, Inbox)>>>);

impl Takeover {
    /// The app accepted the upgrade: once its `101` is queued, the connection drives `frames`
    /// (reading the socket into `inbox`) and writes `outbox` to the socket.
    pub fn accept(&self, frames: Frames, outbox: Outbox, inbox: Inbox) {
        *self.0.borrow_mut() = Some((frames, outbox, inbox));
    }

    fn take(&self) -> Option<(Frames, Outbox, Inbox)> {
        self.0.borrow_mut().take()
    }
}

/// What the client sent and the session has not taken yet: the session's payload stream.
/// The connection drives the session right after it pushes, so no wake-up is needed.
#[derive(Clone, Default)]
pub struct Inbox(Rc<RefCell<Received>>);

#[derive(Default)]
struct Received {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    ended: bool,
}

impl Inbox {
    fn push(&self, bytes: Bytes) {
        let mut received = self.0.borrow_mut();
        received.bytes += bytes.len();
        received.chunks.push_back(bytes);
    }

    fn end(&self) {
        self.0.borrow_mut().ended = true;
    }

    fn len(&self) -> usize {
        self.0.borrow().bytes
    }
}

impl Stream for Inbox {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut received = self.0.borrow_mut();
        match received.chunks.pop_front() {
            Some(chunk) => {
                received.bytes -= chunk.len();
                Poll::Ready(Some(Ok(chunk)))
            }
            None if received.ended => Poll::Ready(None),
            None => Poll::Pending,
        }
    }
}

/// Serves an upgrade request: through `app`, then, if the app accepted it, as a WebSocket
/// for as long as its session lives; any other answer is written and the connection closed.
pub async fn serve<S, B>(app: Rc<S>, req: Request, framed: Framed<TcpStream, h1::Codec>) -> Result<(), actix_web::Error>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    let takeover = Takeover::default();
    req.extensions_mut().insert(takeover.clone());
    let response: Response<BoxBody> = match app.call(req).await {
        Ok(response) => response.into_parts().1.map_into_boxed_body().into(),
        Err(e) => e.error_response().into(),
    };
    drop(app);
    let accepted = takeover.take();
    let (head, body) = response.into_parts();
    match accepted {
        Some((frames, outbox, inbox)) if head.status() == StatusCode::SWITCHING_PROTOCOLS => {
            // Nothing of the upgrade's request or response is held while the socket lives.
            let connection = Connection::upgraded(framed, head, frames, outbox, inbox)?;
            drop((takeover, body));
            connection.await;
            Ok(())
        }
        _ => answer(framed, head, body).await,
    }
}

/// Writes an answer other than an accepted upgrade, then closes the connection.
async fn answer(
    framed: Framed<TcpStream, h1::Codec>,
    mut head: Response<()>,
    body: BoxBody,
) -> Result<(), actix_web::Error> {
    let mut parts = framed.into_parts();
    let body = body::to_bytes(body).await.map_err(|e| io::Error::other(e.to_string()))?;
    head.head_mut().set_connection_type(ConnectionType::Close);
    let mut out = BytesMut::new();
    parts.codec.encode(Message::Item((head, BodySize::Sized(body.len() as u64))), &mut out)?;
    parts.codec.encode(Message::Chunk(Some(body)), &mut out)?;
    parts.codec.encode(Message::Chunk(None), &mut out)?;
    parts.io.write_all(&out).await?;
    let _ = parts.io.shutdown().await;
    Ok(())
}

/// One upgraded socket and the session on it.
struct Connection {
    io: TcpStream,
    /// `None` once the session has ended.
    frames: Option<Frames>,
    outbox: Outbox,
    inbox: Inbox,
    read_closed: bool,
    write_closed: bool,
    /// Set when the session ends: the connection is dropped at this deadline at the latest
    /// ([`CLOSING_FOR`], then [`LINGER_FOR`] once everything is sent).
    closing: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Connection {
    /// The socket of an accepted upgrade: `head` (the `101`) goes out first, and what the
    /// client sent right behind its request is the session's first input. The HTTP layer's
    /// buffers and codec are dropped here.
    fn upgraded(
        framed: Framed<TcpStream, h1::Codec>,
        head: Response<()>,
        frames: Frames,
        outbox: Outbox,
        inbox: Inbox,
    ) -> io::Result<Self> {
        let mut parts = framed.into_parts();
        let mut out = BytesMut::new();
        parts.codec.encode(Message::Item((head, BodySize::None)), &mut out)?;
        outbox.head(out.freeze());
        if !parts.read_buf.is_empty() {
            inbox.push(parts.read_buf.split().freeze());
        }
        Ok(Connection {
            io: parts.io,
            frames: Some(frames),
            outbox,
            inbox,
            read_closed: false,
            write_closed: false,
            closing: None,
        })
    }

    /// Reads what the socket has (up to the inbox limit); returns whether anything came
    /// (bytes or the end of the client's side).
    fn read(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut total = 0;
        let mut came = false;
        let mut buf = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        while !self.read_closed && total < INBOX_LIMIT && self.inbox.len() < INBOX_LIMIT {
            let mut read = ReadBuf::uninit(&mut buf);
            match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    self.read_closed = true;
                    self.inbox.end();
                    came = true;
                }
                Poll::Ready(Ok(())) => {
                    total += read.filled().len();
                    came = true;
                    // Once the session has ended, what the client still sends is dropped.
                    if self.frames.is_some() {
                        self.inbox.push(Bytes::copy_from_slice(read.filled()));
                    }
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        Ok(came)
    }

    /// Polls the session, queuing what it encodes; returns whether it took any input.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(frames) = self.frames.as_mut() else { return false };
        let before = self.inbox.len();
        loop {
            match frames.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => self.outbox.push(bytes),
                Poll::Ready(Some(Err(_)) | None) => {
                    self.frames = None;
                    self.closing = Some(Box::pin(tokio::time::sleep(CLOSING_FOR)));
                    break;
                }
                Poll::Pending => break,
            }
        }
        self.inbox.len() < before
    }

    /// Once the session has ended and everything is sent: the write side is shut, and the
    /// connection is done when the client closes too (or at the deadline).
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(closing) = self.closing.as_mut() else { return Poll::Pending };
        if closing.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if !self.write_closed && self.outbox.is_empty() {
            match Pin::new(&mut self.io).poll_shutdown(cx) {
                Poll::Ready(Ok(())) => {
                    self.write_closed = true;
                    let linger = tokio::time::Instant::now() + LINGER_FOR;
                    if linger < closing.deadline() {
                        closing.as_mut().reset(linger);
                        if closing.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(());
                        }
                    }
                }
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => {}
            }
        }
        if self.write_closed && self.read_closed {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        for _ in 0..MAX_ROUNDS {
            let took = this.drive(cx);
            if let Poll::Ready(Err(_)) = this.outbox.poll_write_to(&mut this.io, cx) {
                // The client is gone: the session stops with the connection.
                return Poll::Ready(());
            }
            let came = match this.read(cx) {
                Ok(came) => came,
                Err(_) => return Poll::Ready(()),
            };
            if this.poll_end(cx).is_ready() {
                return Poll::Ready(());
            }
            if !came && !took {
                return Poll::Pending;
            }
        }
        // A client that keeps sending: let the other connections of this thread run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
