//! A TCP forwarder a test can cut, to make one server unreachable for one process of one test
//! without touching the shared stack: up, it relays each connection to its target; [`down`]
//! closes the relayed connections and from then on accepts new ones but never answers them (a
//! server that hangs); [`up`] relays again. Everything it runs stops when it is dropped.
//!
//! [`down`]: Forwarder::down
//! [`up`]: Forwarder::up

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Forwarder {
    pub addr: SocketAddr,
    /// Cancelled by [`Forwarder::down`]: the relays of the connections made while up.
    relays: Arc<Mutex<Option<CancellationToken>>>,
    stop: CancellationToken,
}

/// Connections held open and never answered while down, at most this many (then closed).
const HELD_MAX: usize = 256;

impl Forwarder {
    /// Listen on a free loopback port, relaying to `target` (`host:port`).
    pub async fn start(target: &str) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let relays = Arc::new(Mutex::new(Some(CancellationToken::new())));
        let stop = CancellationToken::new();
        let (target, state, until) = (target.to_string(), relays.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            let mut held: Vec<TcpStream> = Vec::new();
            loop {
                let (socket, _) = tokio::select! {
                    _ = until.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let relay = state.lock().unwrap().clone();
                match relay {
                    Some(cut) => {
                        let target = target.clone();
                        tasks.spawn(async move {
                            let Ok(mut upstream) = TcpStream::connect(&target).await else {
                                return;
                            };
                            let mut socket = socket;
                            tokio::select! {
                                _ = cut.cancelled() => {}
                                _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream) => {}
                            }
                        });
                    }
                    None => {
                        if held.len() >= HELD_MAX {
                            held.clear();
                        }
                        held.push(socket);
                    }
                }
                while tasks.try_join_next().is_some() {}
            }
        });
        Forwarder { addr, relays, stop }
    }

    /// Cut every relayed connection; accept new ones and never answer them.
    pub fn down(&self) {
        if let Some(cut) = self.relays.lock().unwrap().take() {
            cut.cancel();
        }
    }

    /// Relay new connections again.
    pub fn up(&self) {
        let mut relays = self.relays.lock().unwrap();
        if relays.is_none() {
            *relays = Some(CancellationToken::new());
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.down();
        self.stop.cancel();
    }
}
