//! The admin HTTP listener (axum; routes in `api.rs`), the Prometheus recorder, and the
//! call-record writer (one JSON line per ended call, logged and fed into
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
        b("edge_call_jitter_seconds", &[0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2]),
        b("edge_call_loss_ratio", &[0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5]),
        b("edge_call_rtt_seconds", &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8]),
        b("edge_call_setup_seconds", &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]),
    ] {
        builder = builder.set_buckets_for_metric(m, &v).map_err(|e| format!("metrics: {e}"))?;
    }
    let handle = builder.install_recorder().map_err(|e| format!("metrics: {e}"))?;
    describe();
    Ok(handle)
}

/// HELP texts (Prometheus conventions: base units in the name, `_total` counters).
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!("edge_call_mos", "Per call and direction: ITU-T G.107 MOS at the end of the call");
    describe_histogram!("edge_call_jitter_seconds", "Per call and direction: RFC 3550 interarrival jitter at the end of the call");
    describe_histogram!("edge_call_loss_ratio", "Per call and direction: fraction of RTP packets lost");
    describe_histogram!("edge_call_rtt_seconds", "Per call and direction: round trip between relay and endpoint (RTCP)");
    describe_counter!("edge_calls_ended_total", "Anchored calls ended, by reason");
    describe_counter!("edge_webrtc_bridged_calls_total", "WebRTC <-> SIP calls ended, by whether the edge transcoded");
    describe_counter!(
        "edge_webrtc_dtmf_packets_total",
        "RFC 4733 packets of bridged calls, by direction (to_web, to_sip) and how (event, inband)"
    );
    describe_counter!("edge_media_packets_relayed_total", "RTP/RTCP packets forwarded by the relay");
    describe_counter!(
        "edge_media_packets_dropped_total",
        "Packets the relay dropped (foreign source, SRTP failure, unknown port, send error)"
    );
    describe_gauge!("edge_media_ports_in_use", "Relay ports held by calls, per worker");
    describe_gauge!("edge_media_calls", "Anchored calls, per worker");
    describe_counter!("edge_media_bytes_relayed_total", "Bytes of RTP/RTCP forwarded by the relay");
    describe_counter!("edge_sip_requests_total", "SIP requests by method, received (in) and sent (out)");
    describe_counter!("edge_sip_responses_total", "SIP responses by status class, received (in) and sent (out)");
    describe_gauge!("edge_transactions_active", "SIP transactions in progress, per worker and kind");
    describe_gauge!("edge_calls_active", "Calls (dialogs) in progress, per worker");
    describe_counter!("edge_call_attempts_total", "Initial INVITEs routed");
    describe_histogram!("edge_call_setup_seconds", "Time from INVITE to answer of answered calls");
    describe_gauge!("edge_registrations", "Registered contacts (bindings)");
    describe_gauge!("edge_users", "Users known to the registrar");
    describe_gauge!("edge_connections", "Open TCP/TLS/WS/WSS connections by transport");
    describe_counter!("edge_connections_accepted_total", "Accepted TCP/TLS/WS/WSS connections by transport");
    describe_counter!("edge_webhook_delivered_total", "Call events delivered to a webhook");
    describe_counter!("edge_webhook_failed_total", "Call events a webhook did not take after every retry");
    describe_counter!("edge_webhook_dropped_total", "Call events dropped because a webhook's queue was full");
    describe_gauge!(
        "edge_upstream_target_up",
        "1 if an upstream target is usable (not skipped after a failure, not down by probes), per target"
    );
    describe_gauge!("edge_upstream_up", "1 if any target of the upstream (trunk) is usable, per upstream");
    describe_gauge!("edge_upstream_calls", "Calls in progress through an upstream (trunk)");
    describe_gauge!("edge_sfu_rooms", "SFU meeting rooms in progress");
    describe_gauge!("edge_sfu_participants", "SFU participants (publishers and viewers) in all rooms");
    describe_gauge!("edge_sfu_busy_ratio", "Share of the last second the SFU thread spent working (not waiting)");
    describe_gauge!("edge_sfu_load_video_cap", "Videos per subscriber the SFU carries under load (-1: last-N, no load cut)");
    describe_counter!("edge_sfu_frames_received_total", "Audio/video frames the SFU received from publishers");
    describe_counter!("edge_sfu_frames_forwarded_total", "Audio/video frames the SFU sent to subscribers");
    describe_counter!("edge_sfu_session_timeouts_total", "Timer calls into participants' WebRTC sessions (str0m handle_timeout)");
    describe_histogram!("edge_sfu_loss_ratio", "SFU track packet loss from RTCP (in: publisher to SFU, out: SFU to subscriber)");
    describe_histogram!("edge_sfu_jitter_seconds", "SFU track interarrival jitter from RTCP");
    describe_histogram!("edge_sfu_rtt_seconds", "SFU track round-trip time from RTCP");
    describe_histogram!("edge_sfu_audio_mos", "E-model MOS of SFU audio tracks");
    describe_gauge!("edge_upstream_target_rtt_seconds", "OPTIONS probe round-trip time (EWMA), per upstream target");
    describe_counter!("edge_dns_queries_total", "DNS queries for trunk host names, by record type");
    describe_counter!("edge_dns_failures_total", "DNS queries for trunk host names that got no usable answer");
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

/// Serves the admin router on a bound listener (and keeps the histograms' upkeep going).
pub async fn serve(l: std::net::TcpListener, app: axum::Router, handle: PrometheusHandle) {
    let Ok(l) = tokio::net::TcpListener::from_std(l) else { return };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            handle.run_upkeep();
        }
    });
    if let Err(e) = axum::serve(l, app).await {
        tracing::error!(error = %e, "admin listener");
    }
}

fn observe(dir: &'static str, d: &DirectionStats) {
    if d.packets == 0 {
        return;
    }
    metrics::histogram!("edge_call_mos", "direction" => dir).record(d.mos);
    metrics::histogram!("edge_call_jitter_seconds", "direction" => dir).record(d.jitter_ms / 1000.0);
    metrics::histogram!("edge_call_loss_ratio", "direction" => dir).record(d.loss_pct / 100.0);
    if let Some(r) = d.rtt_ms {
        metrics::histogram!("edge_call_rtt_seconds", "direction" => dir).record(r / 1000.0);
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
                if let Some(w) = &m.webrtc {
                    metrics::counter!("edge_webrtc_bridged_calls_total", "transcoding" => w.transcoding.to_string()).increment(1);
                    for (dir, how, n) in
                        [("to_web", "event", w.dtmf_to_web), ("to_sip", "event", w.dtmf_to_sip), ("either", "inband", w.dtmf_inband)]
                    {
                        metrics::counter!("edge_webrtc_dtmf_packets_total", "direction" => dir, "how" => how).increment(n);
                    }
                }
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
