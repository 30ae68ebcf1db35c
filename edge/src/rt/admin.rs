//! The admin HTTP listener (axum): Prometheus `GET /metrics` rendered from the `metrics`
//! recorder, and the call-record writer (one JSON line per ended call, logged and fed into
//! the per-call quality histograms).

use crate::media::anchor::CallRecord;
use crate::media::relay::DirectionStats;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Installs the global Prometheus recorder with the quality histogram buckets.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    let b = |m: &str, v: &[f64]| (Matcher::Full(m.to_string()), v.to_vec());
    let mut builder = PrometheusBuilder::new();
    for (m, v) in [
        b("edge_call_mos", &[1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4, 4.6]),
        b("edge_call_jitter_ms", &[1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 100.0, 200.0]),
        b("edge_call_loss_pct", &[0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0]),
        b("edge_call_rtt_ms", &[1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0]),
    ] {
        builder = builder.set_buckets_for_metric(m, &v).map_err(|e| format!("metrics: {e}"))?;
    }
    builder.install_recorder().map_err(|e| format!("metrics: {e}"))
}

/// Binds the admin listeners (before the workers start, so a taken port fails the start).
pub fn bind(addrs: &[SocketAddr]) -> Result<Vec<std::net::TcpListener>, String> {
    addrs
        .iter()
        .map(|a| {
            let l = std::net::TcpListener::bind(a).map_err(|e| format!("admin {a}: {e}"))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok(l)
        })
        .collect()
}

/// Serves `GET /metrics` on a bound listener.
pub async fn serve(l: std::net::TcpListener, handle: PrometheusHandle) {
    let Ok(l) = tokio::net::TcpListener::from_std(l) else { return };
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let h = handle.clone();
            async move { ([("content-type", "text/plain; version=0.0.4")], h.render()) }
        }),
    );
    if let Err(e) = axum::serve(l, app).await {
        tracing::error!(error = %e, "admin listener");
    }
}

fn observe(dir: &'static str, d: &DirectionStats) {
    if d.packets == 0 {
        return;
    }
    metrics::histogram!("edge_call_mos", "direction" => dir).record(d.mos);
    metrics::histogram!("edge_call_jitter_ms", "direction" => dir).record(d.jitter_ms);
    metrics::histogram!("edge_call_loss_pct", "direction" => dir).record(d.loss_pct);
    if let Some(r) = d.rtt_ms {
        metrics::histogram!("edge_call_rtt_ms", "direction" => dir).record(r);
    }
}

/// Writes call records as JSON lines to `path` (appending), logs them and records the
/// quality histograms. Runs on its own thread: a slow disk never stalls a worker.
pub fn record_writer(path: PathBuf) -> std::sync::mpsc::Sender<CallRecord> {
    let (tx, rx) = std::sync::mpsc::channel::<CallRecord>();
    let spawned = std::thread::Builder::new().name("edge-cdr".into()).spawn(move || {
        let mut file = match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "call records cannot be written");
                None
            }
        };
        for rec in rx {
            let reason = serde_json::to_value(&rec.reason).ok().map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
            metrics::counter!("edge_calls_ended_total", "reason" => reason.clone().unwrap_or_default()).increment(1);
            for m in &rec.media {
                observe("caller_to_callee", &m.from_a);
                observe("callee_to_caller", &m.from_b);
            }
            if let Some(m) = rec.media.first() {
                tracing::info!(
                    call_id = rec.call_id,
                    reason = reason.as_deref().unwrap_or(""),
                    talk_secs = format!("{:.1}", rec.talk_secs),
                    a_pkts = m.from_a.packets,
                    a_loss_pct = format!("{:.2}", m.from_a.loss_pct),
                    a_jitter_ms = format!("{:.2}", m.from_a.jitter_ms),
                    a_mos = format!("{:.2}", m.from_a.mos),
                    b_pkts = m.from_b.packets,
                    b_loss_pct = format!("{:.2}", m.from_b.loss_pct),
                    b_jitter_ms = format!("{:.2}", m.from_b.jitter_ms),
                    b_mos = format!("{:.2}", m.from_b.mos),
                    "call ended"
                );
            }
            let Some(f) = file.as_mut() else { continue };
            let ended = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
            let mut v = serde_json::to_value(&rec).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("ended_at".into(), serde_json::json!(ended));
            }
            let mut line = v.to_string();
            line.push('\n');
            if let Err(e) = f.write_all(line.as_bytes()).and_then(|_| f.flush()) {
                tracing::error!(error = %e, "call record write failed");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "call record thread");
    }
    tx
}
