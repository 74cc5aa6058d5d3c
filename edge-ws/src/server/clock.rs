//! The deadlines of one connection before it becomes a WebSocket: [`Clock`] tracks its
//! progress (accepted, head arriving, request served, idle), [`Watched`] fails the socket's read
//! once a deadline passes.

use super::{Limits, HEADER_TIMEOUT, IDLE_TIMEOUT};
use runtime::metrics::Metrics;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

/// One connection's progress, shared by its socket ([`Watched`]) and its service.
#[derive(Debug)]
pub struct Clock {
    limits: Limits,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Requests whose answer is not ready yet.
    serving: usize,
    /// Answered with 101: the socket is a WebSocket now and none of these bounds apply.
    upgraded: bool,
    /// Accepted (before the first answer), or the last answer (after it).
    idle_since: Instant,
    /// First byte of a request head that is not complete yet (between requests).
    head_since: Option<Instant>,
    /// Held until the first answer: counts towards `max_handshakes`.
    permit: Option<OwnedSemaphorePermit>,
    answered: bool,
    /// The task waiting on the socket: woken when an answer sets a deadline, as hyper may have
    /// polled the read (with no deadline then) before the answer was ready.
    reader: Option<Waker>,
}

impl Clock {
    pub fn new(limits: Limits, permit: Option<OwnedSemaphorePermit>) -> Clock {
        Clock {
            limits,
            state: Mutex::new(State {
                serving: 0,
                upgraded: false,
                idle_since: Instant::now(),
                head_since: None,
                permit,
                answered: false,
                reader: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived from the client.
    pub fn on_bytes(&self) {
        let mut s = self.state();
        if s.serving == 0 && s.head_since.is_none() {
            s.head_since = Some(Instant::now());
        }
    }

    /// A request head is complete.
    pub fn request_started(&self) {
        let mut s = self.state();
        s.serving += 1;
        s.head_since = None;
    }

    /// A request's answer is ready; `upgraded` when it switches protocols.
    pub fn request_done(&self, upgraded: bool) {
        let reader = {
            let mut s = self.state();
            s.serving = s.serving.saturating_sub(1);
            s.permit = None;
            s.answered = true;
            s.upgraded |= upgraded;
            if s.serving == 0 {
                s.idle_since = Instant::now();
            }
            s.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// The socket's reader waits for bytes.
    fn park(&self, waker: &Waker) {
        let mut s = self.state();
        if !s.reader.as_ref().is_some_and(|w| w.will_wake(waker)) {
            s.reader = Some(waker.clone());
        }
    }

    /// Whether this connection still counts towards `max_handshakes`.
    pub fn holds_permit(&self) -> bool {
        self.state().permit.is_some()
    }

    /// When the connection is to be closed if no request head completes first, and why.
    pub fn deadline(&self) -> Option<(Instant, &'static str)> {
        let s = self.state();
        if s.upgraded || s.serving > 0 {
            None
        } else if !s.answered {
            Some((s.idle_since + self.limits.header_read, HEADER_TIMEOUT))
        } else if let Some(h) = s.head_since {
            Some((h + self.limits.header_read, HEADER_TIMEOUT))
        } else {
            Some((s.idle_since + self.limits.keep_alive, IDLE_TIMEOUT))
        }
    }
}

/// A socket that fails its read once the connection's [`Clock`] deadline passes, so hyper drops
/// the connection. Writes pass through.
pub struct Watched<T> {
    io: T,
    clock: Arc<Clock>,
    metrics: Metrics,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl<T> Watched<T> {
    pub fn new(io: T, clock: Arc<Clock>, metrics: Metrics) -> Watched<T> {
        Watched {
            io,
            clock,
            metrics,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.clock.on_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                this.clock.park(cx.waker());
                let Some((at, why)) = this.clock.deadline() else {
                    return Poll::Pending;
                };
                if this.armed != Some(at) {
                    this.sleep.as_mut().reset(at);
                    this.armed = Some(at);
                }
                if this.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.metrics.http_connections_closed.get(why).inc();
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::Semaphore;

    const LIMITS: Limits = Limits {
        header_read: Duration::from_secs(10),
        keep_alive: Duration::from_secs(75),
        request: Duration::from_secs(15),
    };

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection() {
        let sem = Arc::new(Semaphore::new(1));
        let clock = Clock::new(LIMITS, Some(sem.clone().try_acquire_owned().unwrap()));
        let t0 = Instant::now();
        assert!(clock.holds_permit());
        assert_eq!(sem.available_permits(), 0);
        // a new connection: the first head is due header_read after accept, bytes or not
        assert_eq!(
            clock.deadline(),
            Some((t0 + LIMITS.header_read, HEADER_TIMEOUT))
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        clock.on_bytes();
        assert_eq!(
            clock.deadline(),
            Some((t0 + LIMITS.header_read, HEADER_TIMEOUT))
        );
        // while a request is served nothing is due
        clock.request_started();
        assert_eq!(clock.deadline(), None);
        clock.on_bytes(); // its body
        tokio::time::advance(Duration::from_secs(1)).await;
        clock.request_done(false);
        assert!(!clock.holds_permit());
        assert_eq!(
            sem.available_permits(),
            1,
            "the first answer frees the permit"
        );
        let t1 = Instant::now();
        // kept alive: idle until keep_alive, then a head has header_read from its first byte
        assert_eq!(
            clock.deadline(),
            Some((t1 + LIMITS.keep_alive, IDLE_TIMEOUT))
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        clock.on_bytes();
        let t2 = Instant::now();
        assert_eq!(
            clock.deadline(),
            Some((t2 + LIMITS.header_read, HEADER_TIMEOUT))
        );
        clock.on_bytes();
        assert_eq!(
            clock.deadline(),
            Some((t2 + LIMITS.header_read, HEADER_TIMEOUT))
        );
        clock.request_started();
        clock.request_done(true);
        assert_eq!(
            clock.deadline(),
            None,
            "a WebSocket has its own idle timeout"
        );
        clock.on_bytes();
        assert_eq!(clock.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_fails_its_read_at_the_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let clock = Arc::new(Clock::new(LIMITS, None));
        let metrics = Metrics::default();
        let mut w = Watched::new(server, clock.clone(), metrics.clone());
        let (mut cr, mut cw) = tokio::io::split(client);
        cw.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = w.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
        let t0 = Instant::now();
        let e = w.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), LIMITS.header_read);
        assert!(metrics.render().contains("reason=\"header_timeout\"} 1"));
        // writes pass through
        w.write_all(b"bye").await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(w.is_write_vectored(), w.io.is_write_vectored());
        let n = w.write_vectored(&[io::IoSlice::new(b"!")]).await.unwrap();
        assert_eq!(n, 1);
        w.shutdown().await.unwrap();
        let mut got = Vec::new();
        cr.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye!");
        // the deadline moves with the connection: an answered request re-arms it
        clock.request_started();
        clock.request_done(false);
        let t1 = Instant::now();
        let e = w.read(&mut buf).await.unwrap_err();
        assert_eq!(e.to_string(), IDLE_TIMEOUT);
        assert_eq!(t1.elapsed(), LIMITS.keep_alive);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_arms_the_idle_deadline_of_a_waiting_read() {
        let (_client, server) = tokio::io::duplex(64);
        let clock = Arc::new(Clock::new(LIMITS, None));
        let mut w = Watched::new(server, clock.clone(), Metrics::default());
        clock.request_started();
        let mut buf = [0u8; 8];
        let mut read = std::pin::pin!(w.read(&mut buf));
        // hyper polls the read while the request is served (no deadline yet), and may not poll it
        // again once the answer is written: the answer must wake it
        struct Flag(std::sync::atomic::AtomicBool);
        impl futures::task::ArcWake for Flag {
            fn wake_by_ref(me: &Arc<Self>) {
                me.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(false.into()));
        let waker = futures::task::waker(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(read.as_mut().poll(&mut cx).is_pending());
        let t0 = Instant::now();
        clock.request_done(false);
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst), "woken");
        let e = tokio::time::timeout(LIMITS.keep_alive * 2, read)
            .await
            .expect("the answer woke the read")
            .unwrap_err();
        assert_eq!(e.to_string(), IDLE_TIMEOUT);
        assert_eq!(t0.elapsed(), LIMITS.keep_alive);
    }
}
