//! Limits that keep one client from holding what the others need (PROTOCOL §4): open
//! connections per client address (one over it gets a 429 and the socket is closed), the time
//! a request's body may take after its head (then 408), and the count and throttled log of
//! every refusal. The head's own deadline is actix's `client_request_timeout` (`app.rs`).
//!
//! The client address is the TCP peer's; an address learned from a trusted proxy can be
//! counted the same way through [`Limits::open`]. Never reads what a request means: it counts
//! sockets and times bodies.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_service::{Service, ServiceFactory};
use actix_web::body::{BodySize, BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::ConnectionType;
use actix_web::middleware::Next;
use actix_web::rt::net::TcpStream;
use actix_web::{web, HttpMessage};
use bytes::Bytes;
use futures_util::future::Either;
use futures_util::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::core::logging::Throttle;
use crate::core::metrics::Metrics;

/// How long a refused connection may take to read its 429 before the socket is dropped.
const REFUSED_LINGER: Duration = Duration::from_secs(1);

/// At most one info line per kind of refusal in this interval; the others go to debug.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The per-client limits of one server, shared by its worker threads.
pub struct Limits {
    max_per_address: usize,
    body_timeout: Duration,
    open: Mutex<HashMap<IpAddr, usize>>,
    metrics: Arc<Metrics>,
    refused_log: Throttle,
    body_log: Throttle,
    session_log: Throttle,
}

/// One open connection of an address; the slot is free again when this is dropped.
pub struct Slot {
    limits: Arc<Limits>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.address);
            }
        }
    }
}

impl Limits {
    pub fn new(max_per_address: usize, body_timeout: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Limits {
            max_per_address,
            body_timeout,
            open: Mutex::new(HashMap::new()),
            metrics,
            refused_log: Throttle::new(LOG_EVERY),
            body_log: Throttle::new(LOG_EVERY),
            session_log: Throttle::new(LOG_EVERY),
        })
    }

    /// A slot for one more connection of `address`, or `None` (counted and logged) when it
    /// holds its maximum already.
    pub fn open(self: &Arc<Self>, address: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(address).or_insert(0);
        if *n >= self.max_per_address {
            drop(open);
            self.metrics.connections_refused.with_label_values(&["per_address"]).inc();
            match self.refused_log.pass() {
                Some(skipped) => tracing::info!(
                    %address,
                    max = self.max_per_address,
                    refused_since_last_line = skipped,
                    "connection refused: too many open from this address"
                ),
                None => tracing::debug!(%address, "connection refused: too many open from this address"),
            }
            return None;
        }
        *n += 1;
        Some(Slot { limits: self.clone(), address })
    }

    /// Connections `address` holds now.
    pub fn open_from(&self, address: IpAddr) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).get(&address).copied().unwrap_or(0)
    }

    /// A socket was closed for not sending `session:start` in time: counted, and logged
    /// without flooding.
    pub fn session_start_missed(&self, session: u64) {
        self.metrics.connections_refused.with_label_values(&["session_start"]).inc();
        match self.session_log.pass() {
            Some(skipped) => {
                tracing::info!(session, closed_since_last_line = skipped, "closing socket: no session:start in time")
            }
            None => tracing::debug!(session, "closing socket: no session:start in time"),
        }
    }

    fn body_timed_out(&self, path: &str) {
        self.metrics.connections_refused.with_label_values(&["body_timeout"]).inc();
        match self.body_log.pass() {
            Some(skipped) => {
                tracing::info!(path, timed_out_since_last_line = skipped, "request body not received in time (408)")
            }
            None => tracing::debug!(path, "request body not received in time (408)"),
        }
    }
}

/// The server's connection service behind the per-address limit: a connection over it gets
/// a 429 and is closed; the others are served by `http`, their slot held until they close
/// (an upgraded WebSocket included: its connection is the same one).
pub fn per_address<F>(
    limits: Arc<Limits>,
    http: F,
) -> impl ServiceFactory<TcpStream, Config = (), Response = (), Error = F::Error, InitError = F::InitError>
where
    F: ServiceFactory<TcpStream, Config = (), Response = ()>,
{
    actix_service::apply_fn_factory(http, move |stream: TcpStream, service: &F::Service| {
        // A socket without a peer address is already gone; the HTTP layer will find out.
        let slot = match stream.peer_addr() {
            Ok(peer) => match limits.open(peer.ip()) {
                Some(slot) => Some(slot),
                None => return Either::Left(refuse(stream, limits.max_per_address)),
            },
            Err(_) => None,
        };
        let call = service.call(stream);
        Either::Right(async move {
            let served = call.await;
            drop(slot);
            served
        })
    })
}

/// Answers 429 (`rate_limited`, the body of `ApiError`'s answers) without reading the request
/// (nothing is parsed for a refused client), then
/// reads what it sent for a moment so that closing does not reset the answer away.
async fn refuse<E>(mut stream: TcpStream, max: usize) -> Result<(), E> {
    let body = format!(
        r#"{{"error":"rate_limited","message":"too many open connections from this address (at most {max}); close one and retry"}}"#
    );
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSED_LINGER, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < 64 * 1024 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
    Ok(())
}

/// Gives a request's body [`Limits`]' body deadline from now (its head has just arrived): a
/// body not whole by then ends in an error the JSON extractor answers with 408.
///
/// A request answered before its body was read whole (a refused token, the deadline, a route
/// that takes no body) has its connection closed: its answer holds the unread body until it is
/// sent, since actix would otherwise read the rest of a chunked body, and throw it away, for as
/// long as the client cares to send it.
pub async fn body_deadline<B: MessageBody + 'static>(
    mut req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B, Holding>>, actix_web::Error> {
    let length = req.headers().get("content-length").and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    let has_body = length.is_some_and(|n| n > 0) || req.headers().contains_key("transfer-encoding");
    let Some(limits) = req.app_data::<web::Data<Limits>>().filter(|_| has_body) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let limits = limits.clone().into_inner();
    let sleep = Box::pin(tokio::time::sleep(limits.body_timeout));
    let whole = Rc::new(Cell::new(false));
    let payload = Rc::new(RefCell::new(req.take_payload()));
    let path = req.path().to_owned();
    let body = Deadline { payload: payload.clone(), sleep, limits, path, whole: whole.clone(), over: false };
    req.set_payload(Payload::from(Box::pin(body) as Pin<Box<dyn Stream<Item = _>>>));
    let mut response = next.call(req).await?;
    if whole.get() {
        return Ok(response.map_into_left_body());
    }
    response.response_mut().head_mut().set_connection_type(ConnectionType::Close);
    Ok(response.map_body(|_, body| EitherBody::right(Holding { body: BoxBody::new(body), _unread: payload })))
}

/// An answer's body holding its request's unread body until it has been sent.
pub struct Holding {
    body: BoxBody,
    _unread: Rc<RefCell<Payload>>,
}

impl MessageBody for Holding {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_next(cx)
    }
}

/// Whether a payload error is the body deadline's (answered 408, not 400).
pub fn is_body_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(e) if e.kind() == io::ErrorKind::TimedOut)
}

/// A request's payload that fails once its deadline passes.
struct Deadline {
    payload: Rc<RefCell<Payload>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    limits: Arc<Limits>,
    path: String,
    /// Set once the body has been read to its end.
    whole: Rc<Cell<bool>>,
    /// The body failed or ran out of time: nothing more comes.
    over: bool,
}

impl Stream for Deadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.over || this.whole.get() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut *this.payload.borrow_mut()).poll_next(cx) {
            Poll::Pending => {}
            Poll::Ready(None) => {
                this.whole.set(true);
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Ok(bytes))) => return Poll::Ready(Some(Ok(bytes))),
            Poll::Ready(Some(Err(e))) => {
                this.over = true;
                return Poll::Ready(Some(Err(e)));
            }
        }
        if this.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.over = true;
        this.limits.body_timed_out(&this.path);
        let secs = this.limits.body_timeout.as_secs_f64();
        let message = format!("the request body did not arrive within {secs} s");
        Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(io::ErrorKind::TimedOut, message)))))
    }
}
