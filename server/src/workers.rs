//! gRPC connections served on threads of their own, each running a single-threaded runtime:
//! the accept loop hands every new connection to the next thread (round robin) and everything
//! that connection carries (its HTTP/2 frames, one task per call, the answer) stays on that
//! thread.
//!
//! Why: on the shared multi-threaded runtime, each call is a task spawned beside its
//! connection's task, and spawning wakes an idle worker to steal it; answering a call that
//! costs a few microseconds then pays for a cross-thread hand-off, a futex wake-up and a worker
//! searching for work, which measured more than the decision itself. Envoy opens one HTTP/2
//! connection per worker thread (and per replica), so the connections still spread over every
//! core; what a connection brings is served by one core, which is far ahead of the proxy's own
//! cost per call.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::listeners::Conn;
use crate::tls::ReloadingAcceptor;
use tollgate_common::Shutdown;

/// The gRPC threads of one server.
pub(crate) struct Workers {
    senders: Vec<mpsc::Sender<std::net::TcpStream>>,
    next: AtomicUsize,
    done: Vec<oneshot::Receiver<Result<(), tonic::transport::Error>>>,
}

impl Workers {
    /// Starts `threads` threads serving `routes` until `drain` triggers.
    pub(crate) fn start(
        threads: usize,
        builder: &tonic::transport::Server,
        routes: &tonic::service::Routes,
        tls: Option<&ReloadingAcceptor>,
        drain: &Shutdown,
    ) -> std::io::Result<Self> {
        let mut senders = Vec::with_capacity(threads);
        let mut done = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let (tx, rx) = mpsc::channel(64);
            let (done_tx, done_rx) = oneshot::channel();
            let (mut builder, routes, tls, drain) =
                (builder.clone(), routes.clone(), tls.cloned(), drain.clone());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("grpc-{i}"))
                .spawn(move || {
                    // Per-thread resources (the Redis store's connections) then stay here.
                    tollgate_common::local_runtime::mark_dedicated();
                    let served = rt.block_on(async move {
                        let conns = register(rx, tls, drain.clone());
                        builder
                            .add_routes(routes)
                            .serve_with_incoming_shutdown(
                                conns,
                                async move { drain.triggered().await },
                            )
                            .await
                    });
                    let _ = done_tx.send(served);
                })?;
            senders.push(tx);
            done.push(done_rx);
        }
        Ok(Self {
            senders,
            next: AtomicUsize::new(0),
            done,
        })
    }

    /// Hands a new connection to the next thread; `false` once the threads have stopped.
    pub(crate) async fn hand(&self, stream: TcpStream) -> bool {
        let Ok(std) = stream.into_std() else {
            return true;
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        self.senders[i].send(std).await.is_ok()
    }

    /// Resolves when every thread has stopped serving: the first error, if any.
    pub(crate) fn finished(
        &mut self,
    ) -> impl Future<Output = Result<(), tonic::transport::Error>> + use<> {
        let done = std::mem::take(&mut self.done);
        async move {
            let mut result = Ok(());
            for d in done {
                if let Ok(Err(e)) = d.await
                    && result.is_ok()
                {
                    result = Err(e);
                }
            }
            result
        }
    }
}

/// A thread's connections, registered with its own runtime (a socket polled from another
/// runtime would be woken by that runtime's I/O driver, across threads again); TLS
/// handshakes run in tasks of their own so that a slow client holds up no other connection.
fn register(
    mut rx: mpsc::Receiver<std::net::TcpStream>,
    tls: Option<ReloadingAcceptor>,
    stop: Shutdown,
) -> ReceiverStream<std::io::Result<Conn>> {
    let (tx, conns) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let std = tokio::select! {
                _ = stop.triggered() => break,
                s = rx.recv() => match s {
                    Some(s) => s,
                    None => break,
                },
            };
            let Ok(stream) = TcpStream::from_std(std) else {
                continue;
            };
            let peer = stream.peer_addr().ok();
            if !crate::listeners::hand_over(stream, peer, tls.as_ref(), &tx).await {
                break;
            }
        }
    });
    ReceiverStream::new(conns)
}
