//! A TCP proxy that cuts, resets or slows down the connections through it.
//!
//! [`FaultProxy`] listens on `127.0.0.1` and forwards every connection to an
//! upstream address, both directions at once, in chunks of up to 64 KiB. The
//! fault mode can be changed at any time and applies to the next chunk of
//! every connection, open or new:
//!
//! - [`FaultProxy::cut_every`]`(n)`: once a connection has forwarded `n`
//!   bytes downstream (upstream → client) in total, the proxy forwards
//!   nothing more, closes the client side cleanly (FIN, after every byte
//!   forwarded) and closes the upstream side. The cut is exact: a chunk that
//!   crosses the limit is forwarded only up to it. The count includes
//!   everything on the connection (HTTP status lines and headers too), so a
//!   download through the proxy gets cut every `n` bytes and the client has
//!   to reconnect and resume.
//! - [`FaultProxy::reset_after`]`(n)`: the same, but the client side is
//!   aborted with a TCP RST (`SO_LINGER` 0, then close). On Linux over
//!   loopback the client first reads the `n` bytes (data that reached its
//!   receive queue before the RST stays readable), then its next read fails
//!   with `ECONNRESET` (`io::ErrorKind::ConnectionReset`); it never sees a
//!   clean EOF. Bytes the proxy had written but its kernel not yet sent are
//!   discarded by the RST, so with a slow reader the client can get fewer
//!   than `n` bytes.
//! - [`FaultProxy::delay`]`(d)`: sleep `d` before forwarding each chunk, in
//!   both directions. Combines with either of the above.
//! - [`FaultProxy::pass`]: forward faithfully again.
//!
//! When one side closes its write half cleanly, the proxy passes the
//! half-close on (shuts down the write half of the other side).
//!
//! This module is test support, not a stable API.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Size of the forwarding buffer of each direction.
pub const BUFFER_SIZE: usize = 64 * 1024;

/// A fault-injecting TCP proxy for tests; see the [module
/// documentation](self).
///
/// Dropping it stops the accept loop and closes every connection through it.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Shared {
    mode: Mutex<Mode>,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
    connections: AtomicU64,
    cuts: AtomicU64,
    resets: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Mode {
    limit: Option<(u64, Cut)>,
    delay: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    Fin,
    Reset,
}

/// How the downstream direction of a connection ended.
enum Down {
    /// Upstream closed its write half; the client's was shut down.
    Eof,
    /// The connection reached its byte limit.
    Cut(Cut),
    /// Reading or writing failed.
    Failed,
}

impl Shared {
    fn mode(&self) -> Mode {
        *lock(&self.mode)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FaultProxy {
    /// Starts a proxy to `upstream`, listening on `127.0.0.1` on a free port,
    /// forwarding faithfully until told otherwise.
    ///
    /// # Panics
    ///
    /// If it cannot bind the port, or when called outside a Tokio runtime.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("FaultProxy: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("FaultProxy: local address of the listener");
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&shared)));
        FaultProxy {
            addr,
            upstream,
            shared,
            task,
        }
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// `http://<proxy address>/name`, for HTTP upstreams.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{}", self.addr, name.trim_start_matches('/'))
    }

    /// Closes each connection cleanly (FIN) once it has forwarded `n_bytes`
    /// downstream. Replaces [`FaultProxy::reset_after`].
    pub fn cut_every(&self, n_bytes: u64) {
        lock(&self.shared.mode).limit = Some((n_bytes, Cut::Fin));
    }

    /// Aborts each connection with a TCP RST once it has forwarded `n_bytes`
    /// downstream. Replaces [`FaultProxy::cut_every`].
    pub fn reset_after(&self, n_bytes: u64) {
        lock(&self.shared.mode).limit = Some((n_bytes, Cut::Reset));
    }

    /// Sleeps `delay` before forwarding each chunk, in both directions
    /// (`Duration::ZERO` switches the delay off).
    pub fn delay(&self, delay: Duration) {
        lock(&self.shared.mode).delay = (!delay.is_zero()).then_some(delay);
    }

    /// Forwards faithfully again: no cut, no reset, no delay.
    pub fn pass(&self) {
        *lock(&self.shared.mode) = Mode::default();
    }

    /// Bytes forwarded downstream (upstream → client), all connections.
    pub fn bytes_down(&self) -> u64 {
        self.shared.bytes_down.load(Ordering::SeqCst)
    }

    /// Bytes forwarded upstream (client → upstream), all connections.
    pub fn bytes_up(&self) -> u64 {
        self.shared.bytes_up.load(Ordering::SeqCst)
    }

    /// Client connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections the proxy closed because of [`FaultProxy::cut_every`]
    /// or [`FaultProxy::reset_after`] (both kinds).
    pub fn connections_cut(&self) -> u64 {
        self.cuts() + self.resets()
    }

    /// Connections closed with a FIN by [`FaultProxy::cut_every`].
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }

    /// Connections aborted with a RST by [`FaultProxy::reset_after`].
    pub fn resets(&self) -> u64 {
        self.shared.resets.load(Ordering::SeqCst)
    }

    /// Stops the proxy and waits until the accept loop and every connection
    /// task have been dropped (their sockets closed). Dropping the proxy does
    /// the same without waiting.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    // Owning the connection tasks here means aborting this task aborts them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(proxy_connection(client, upstream, Arc::clone(&shared)));
                }
                Err(error) => {
                    tracing::warn!(%error, "FaultProxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn proxy_connection(mut client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(error) => {
            tracing::warn!(%error, %upstream, "FaultProxy: cannot connect upstream");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);

    let ending = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let mut up = std::pin::pin!(pump_up(&mut client_read, &mut server_write, &shared));
        let mut down = std::pin::pin!(pump_down(&mut server_read, &mut client_write, &shared));
        let mut up_done = false;
        let ending = loop {
            tokio::select! {
                ending = &mut down => break ending,
                () = &mut up, if !up_done => up_done = true,
            }
        };
        if matches!(ending, Down::Eof) && !up_done {
            // Upstream is done sending; let the client finish its side.
            up.await;
        }
        ending
    };

    match ending {
        Down::Cut(Cut::Fin) => {
            let _ = client.shutdown().await;
            shared.cuts.fetch_add(1, Ordering::SeqCst);
        }
        Down::Cut(Cut::Reset) => {
            // `set_zero_linger` would say the same but needs tokio 1.50; a
            // zero linger never blocks, which is why `set_linger` is
            // deprecated for other values only.
            #[allow(deprecated)]
            let _ = client.set_linger(Some(Duration::ZERO));
            shared.resets.fetch_add(1, Ordering::SeqCst);
        }
        Down::Eof | Down::Failed => {}
    }
    // Dropping both sockets closes them (with a RST for the client after
    // `reset_after`).
}

/// Client → upstream, until the client closes its write half (passed on
/// upstream) or either side fails.
async fn pump_up<R, W>(from: &mut R, to: &mut W, shared: &Shared)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER_SIZE];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
            Err(_) => return,
        };
        if let Some(delay) = shared.mode().delay {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        shared.bytes_up.fetch_add(n as u64, Ordering::SeqCst);
    }
}

/// Upstream → client, cutting at the byte limit.
async fn pump_down<R, W>(from: &mut R, to: &mut W, shared: &Shared) -> Down
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER_SIZE];
    let mut forwarded: u64 = 0;
    loop {
        // A limit already reached (lowered while the connection was open)
        // cuts before reading more.
        if let Some((limit, cut)) = shared.mode().limit
            && forwarded >= limit
        {
            return Down::Cut(cut);
        }
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return Down::Eof;
            }
            Ok(n) => n,
            Err(error) => {
                tracing::debug!(%error, "FaultProxy: upstream read failed");
                return Down::Failed;
            }
        };
        let mode = shared.mode();
        if let Some(delay) = mode.delay {
            tokio::time::sleep(delay).await;
        }
        let (take, cut) = match mode.limit {
            Some((limit, cut)) if forwarded + n as u64 >= limit => {
                ((limit.saturating_sub(forwarded)) as usize, Some(cut))
            }
            _ => (n, None),
        };
        if let Err(error) = to.write_all(&buf[..take]).await {
            tracing::debug!(%error, "FaultProxy: client write failed");
            return Down::Failed;
        }
        forwarded += take as u64;
        shared.bytes_down.fetch_add(take as u64, Ordering::SeqCst);
        if let Some(cut) = cut {
            return Down::Cut(cut);
        }
    }
}
