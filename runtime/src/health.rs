//! `/healthz` and `/metrics` for workers and the router (edges serve them on their internal
//! listener).

use crate::metrics::Metrics;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;
use warp::Filter;

/// Routes shared by every process: `GET /healthz` (200 "ok") and `GET /metrics`.
pub fn routes(
    metrics: Metrics,
) -> impl Filter<Extract = (impl warp::Reply,), Error = warp::Rejection> + Clone {
    let healthz = warp::path!("healthz").and(warp::get()).map(|| "ok");
    let m = warp::path!("metrics")
        .and(warp::get())
        .map(move || metrics.render());
    healthz.or(m)
}

/// Serve the health routes on `addr` until `stop`; returns the bound address.
pub async fn serve(
    addr: &str,
    metrics: Metrics,
    stop: CancellationToken,
) -> crate::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| crate::Error::Config(format!("health_listen {addr:?}: {e}")))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let server = warp::serve(routes(metrics))
        .incoming(listener)
        .graceful(async move { stop.cancelled().await })
        .run();
    Ok((bound, tokio::spawn(server)))
}
