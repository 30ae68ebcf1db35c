//! Webhooks: every call event is POSTed as JSON to each configured URL (http or https),
//! in order, with retries and exponential backoff. Each URL has its own bounded queue, so a
//! slow or dead receiver delays only itself; when its queue is full, new events for it are
//! dropped and counted (`edge_webhook_dropped_total`).

use super::api::StampedEvent;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Webhook settings (`[events]`).
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub urls: Vec<String>,
    /// Events kept per URL while it is slow or down.
    pub queue: usize,
    /// Attempts per event (the first included).
    pub attempts: u32,
    /// First retry delay; doubled each time, at most 30 s.
    pub backoff: Duration,
    pub timeout: Duration,
}

/// Starts one delivery task per URL fed from the event broadcast.
pub fn start(cfg: WebhookConfig, events: &broadcast::Sender<Arc<StampedEvent>>, rt: &tokio::runtime::Handle) {
    if cfg.urls.is_empty() {
        return;
    }
    let tls = tls_connector();
    let mut queues = Vec::new();
    for url in cfg.urls.clone() {
        let (tx, rx) = mpsc::channel::<Arc<StampedEvent>>(cfg.queue.max(1));
        queues.push((url.clone(), tx));
        rt.spawn(deliver(url, rx, cfg.clone(), tls.clone()));
    }
    let mut sub = events.subscribe();
    rt.spawn(async move {
        loop {
            match sub.recv().await {
                Ok(e) => {
                    for (url, q) in &queues {
                        if q.try_send(e.clone()).is_err() {
                            metrics::counter!("edge_webhook_dropped_total", "url" => url.clone()).increment(1);
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    metrics::counter!("edge_webhook_dropped_total", "url" => "*").increment(n);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

fn tls_connector() -> Option<tokio_rustls::TlsConnector> {
    match super::tls::client_connector(None) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "webhook TLS setup: https webhooks will fail");
            None
        }
    }
}

async fn deliver(url: String, mut rx: mpsc::Receiver<Arc<StampedEvent>>, cfg: WebhookConfig, tls: Option<tokio_rustls::TlsConnector>) {
    let ok = metrics::counter!("edge_webhook_delivered_total", "url" => url.clone());
    let failed = metrics::counter!("edge_webhook_failed_total", "url" => url.clone());
    while let Some(e) = rx.recv().await {
        let body = serde_json::to_vec(&*e).unwrap_or_default();
        let mut delay = cfg.backoff;
        let mut done = false;
        for attempt in 1..=cfg.attempts.max(1) {
            match tokio::time::timeout(cfg.timeout, post(&url, &body, &tls)).await {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    done = true;
                    break;
                }
                Ok(Ok(status)) => tracing::debug!(url, status, attempt, "webhook refused"),
                Ok(Err(err)) => tracing::debug!(url, error = %err, attempt, "webhook failed"),
                Err(_) => tracing::debug!(url, attempt, "webhook timed out"),
            }
            if attempt < cfg.attempts {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
        if done {
            ok.increment(1);
        } else {
            failed.increment(1);
            tracing::warn!(url, call_id = e.event.call_id, event = e.event.event, "webhook gave up after retries");
        }
    }
}

/// One POST; returns the status code.
async fn post(url: &str, body: &[u8], tls: &Option<tokio_rustls::TlsConnector>) -> Result<u16, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{url}: only http and https")),
    };
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
    let req = Request::post(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header(hyper::header::HOST, uri.authority().map(|a| a.as_str()).unwrap_or(&host))
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "edge-webhook")
        .body(Full::new(bytes::Bytes::copy_from_slice(body)))
        .map_err(|e| e.to_string())?;
    if https {
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let tls = tls.as_ref().ok_or("TLS is not available")?;
        let s = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
        send(TokioIo::new(s), req).await
    } else {
        send(TokioIo::new(tcp), req).await
    }
}

async fn send<T>(io: T, req: Request<Full<bytes::Bytes>>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}
