//! Command line of `loadgen` (see docs/LOADGEN.md).

#![allow(clippy::disallowed_methods)] // the command line runs on the real clock

use crate::media::{Codec, Impairment, MediaPlan};
use crate::report::Report;
use crate::rt::link::{self, Proto, TlsOpts};
use crate::rt::{CallStarter, DialStarter, Engine, Plan, RegStarter, Starter, Stop, drive};
use crate::scenario::dialer::Dialer;
use crate::scenario::register::{RegisterConfig, Registrar};
use crate::scenario::uac::{Hold, Uac, UacConfig};
use crate::scenario::uas::{Uas, UasConfig};
use crate::scenario::{Local, Timing};
use crate::stats::Stats;
use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "loadgen", version, about = "SIP load generator: calls, answers, registrations, power dialer, soak")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Outbound call load towards a target.
    Call(CallArgs),
    /// Answer calls (the UAS side).
    Answer(AnswerArgs),
    /// Registration storms and refreshes with digest auth.
    Register(RegisterArgs),
    /// Power dialer: each free agent rings K numbers, the first answer wins, the rest are cancelled.
    Dialer(DialerArgs),
    /// Run a call, register or dialer job for a long time, sampling the target's memory.
    Soak(SoakArgs),
    /// Meeting participants against an SFU (room protocol, WebRTC media).
    Sfu(crate::sfu::SfuArgs),
}

/// Options every client run shares.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Target, e.g. sip:127.0.0.1:5060 (a `transport=` parameter selects the transport).
    #[arg(long)]
    pub target: String,
    /// Transport (overrides the target's `transport=`).
    #[arg(long, value_enum)]
    pub transport: Option<Proto>,
    /// Worker tasks (each with its own socket or connection).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// PEM file with the certificate authority (or self-signed certificate) to trust for TLS/WSS.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Do not verify the TLS certificate (test rigs only).
    #[arg(long)]
    pub insecure: bool,
    /// TLS server name to verify (default: the target host).
    #[arg(long)]
    pub tls_name: Option<String>,
    /// DNS server for target names (e.g. 127.0.0.1:5353); default: the system's.
    #[arg(long)]
    pub dns: Option<SocketAddr>,
    /// Allow targets outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    pub allow_remote: bool,
    /// Hard limit of the whole run in seconds (in-flight work then counts as failed).
    #[arg(long)]
    pub max_time_s: Option<f64>,
    /// Give up on a transaction after this many ms (default 64*T1 = 32000).
    #[arg(long, default_value_t = 32000)]
    pub timeout_ms: u64,
    /// Write the JSON result here.
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    /// Write the HTML report (index.html and PNG plots) into this directory.
    #[arg(long)]
    pub report_html: Option<PathBuf>,
    /// Exit 1 when more than this percentage of attempts failed.
    #[arg(long)]
    pub fail_above: Option<f64>,
    /// Serve live counters for Prometheus on this address (GET /metrics).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Seed of every random choice (impairments, tags).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args, Debug, Clone)]
pub struct CallArgs {
    #[command(flatten)]
    pub common: Common,
    /// Request-URI and To of the calls (default sip:service@TARGET-HOST).
    #[arg(long)]
    pub to: Option<String>,
    /// From URI (default sip:loadgen@LOCAL-ADDRESS; a credential's user replaces the user part).
    #[arg(long)]
    pub from: Option<String>,
    /// Append the call number to the user part of --to.
    #[arg(long)]
    pub to_sequence: bool,
    /// Calls per second (open loop).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Total calls.
    #[arg(long, default_value_t = 100)]
    pub calls: u64,
    /// Stop starting calls after this many seconds.
    #[arg(long)]
    pub duration_s: Option<f64>,
    /// Maximum concurrent calls; due calls beyond it fail with `concurrency_limit`.
    #[arg(long, default_value_t = 10000)]
    pub concurrency: usize,
    /// Hold time of answered calls in ms.
    #[arg(long, default_value_t = 0)]
    pub hold_ms: u64,
    /// Hold times exponentially distributed with mean --hold-ms.
    #[arg(long)]
    pub hold_exponential: bool,
    /// Ramp: reach --rate in --ramp-steps equal steps over this many seconds.
    #[arg(long, default_value_t = 0.0)]
    pub ramp_s: f64,
    #[arg(long, default_value_t = 5)]
    pub ramp_steps: u32,
    /// Digest credentials NAME:PASSWORD (repeatable; used round robin).
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// File with one NAME:PASSWORD per line.
    #[arg(long)]
    pub users_file: Option<PathBuf>,
    #[command(flatten)]
    pub media: MediaArgs,
}

#[derive(Args, Debug, Clone)]
pub struct MediaArgs {
    /// Send and receive RTP on every call (G.711, 20 ms packets) and report loss, jitter, MOS.
    #[arg(long)]
    pub rtp: bool,
    #[arg(long, value_enum, default_value_t = Codec::Pcmu)]
    pub codec: Codec,
    /// Random packet loss on send, percent.
    #[arg(long, default_value_t = 0.0)]
    pub loss_pct: f64,
    /// Gilbert-Elliott burst loss: P(good->bad),P(bad->good), e.g. 0.01,0.3.
    #[arg(long)]
    pub gilbert: Option<String>,
    /// Send jitter: extra delay uniform in 0..N ms.
    #[arg(long, default_value_t = 0.0)]
    pub jitter_ms: f64,
    /// Percentage of packets held back by three packet times.
    #[arg(long, default_value_t = 0.0)]
    pub reorder_pct: f64,
}

#[derive(Args, Debug, Clone)]
pub struct AnswerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:5090")]
    pub listen: SocketAddr,
    #[arg(long, value_enum, default_value_t = Proto::Udp)]
    pub transport: Proto,
    /// Delay before 180 Ringing (ms).
    #[arg(long, default_value_t = 0)]
    pub ring_ms: u64,
    /// Delay before the final response (ms).
    #[arg(long, default_value_t = 0)]
    pub answer_ms: u64,
    /// Percentage of calls rejected with --reject-code.
    #[arg(long, default_value_t = 0.0)]
    pub reject_pct: f64,
    #[arg(long, default_value_t = 486)]
    pub reject_code: u16,
    /// Retry-After seconds sent with rejections (e.g. with --reject-code 503).
    #[arg(long)]
    pub retry_after: Option<u32>,
    /// Percentage of calls that ring without answer until cancelled (480 after --no-answer-ms).
    #[arg(long, default_value_t = 0.0)]
    pub no_answer_pct: f64,
    #[arg(long, default_value_t = 30000)]
    pub no_answer_ms: u64,
    /// Answer with an SDP that points at an RTP echo (every packet is sent back; the
    /// report's `echo` counts them, and RFC 4733 digits).
    #[arg(long)]
    pub rtp_echo: bool,
    /// Accept only this codec (encoding name: pcmu, pcma, opus); offers without it get 488.
    /// Default: the offer's first format.
    #[arg(long)]
    pub codec: Option<String>,
    /// Answer without telephone-event even when offered (a legacy PBX or trunk: digits must
    /// then arrive as in-band tones, which `--rtp-echo` detects in G.711).
    #[arg(long)]
    pub no_telephone_event: bool,
    /// Exit after this many calls were handled.
    #[arg(long)]
    pub calls: Option<u64>,
    /// Exit after this many seconds (default 3600).
    #[arg(long, default_value_t = 3600.0)]
    pub duration_s: f64,
    /// Certificate and key (PEM) for --transport tls/wss.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long)]
    pub key: Option<PathBuf>,
    #[arg(long)]
    pub report_json: Option<PathBuf>,
    #[arg(long)]
    pub quiet: bool,
    /// Allow listening on addresses outside loopback.
    #[arg(long)]
    pub allow_remote: bool,
}

#[derive(Args, Debug, Clone)]
pub struct RegisterArgs {
    #[command(flatten)]
    pub common: Common,
    /// Registrar domain (default: the target host).
    #[arg(long)]
    pub domain: Option<String>,
    /// NAME:PASSWORD (repeatable).
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// File with one NAME:PASSWORD per line.
    #[arg(long)]
    pub users_file: Option<PathBuf>,
    /// Registrations per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Total registrations (default: one per user); more than the users means refreshes.
    #[arg(long)]
    pub count: Option<u64>,
    #[arg(long)]
    pub duration_s: Option<f64>,
    #[arg(long, default_value_t = 3600)]
    pub expires: u32,
}

#[derive(Args, Debug, Clone)]
pub struct DialerArgs {
    #[command(flatten)]
    pub common: Common,
    /// Numbers to ring: the call number is appended to the user part (sip:555@host -> sip:5551@host ...).
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long)]
    pub from: Option<String>,
    /// Agents (parallel rounds).
    #[arg(long, default_value_t = 10)]
    pub agents: usize,
    /// Lines rung at once per agent.
    #[arg(long, default_value_t = 3)]
    pub lines: usize,
    /// Rounds in total.
    #[arg(long, default_value_t = 100)]
    pub rounds: u64,
    /// Talk time of the winning line in ms.
    #[arg(long, default_value_t = 0)]
    pub hold_ms: u64,
    #[arg(long)]
    pub duration_s: Option<f64>,
}

#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// Sample the RSS of this process.
    #[arg(long)]
    pub watch_pid: Option<u32>,
    /// Or read `process_resident_memory_bytes` from this Prometheus URL (http://host:port/metrics).
    #[arg(long)]
    pub watch_metrics: Option<String>,
    /// Checkpoint period in seconds (a line of figures, an RSS sample).
    #[arg(long, default_value_t = 60)]
    pub checkpoint_s: u64,
    #[command(subcommand)]
    pub job: SoakJob,
}

#[derive(Subcommand, Debug, Clone)]
pub enum SoakJob {
    Call(CallArgs),
    Register(RegisterArgs),
    Dialer(DialerArgs),
}

/// Parses NAME:PASSWORD values and an optional file of them.
pub fn user_pool(users: &[String], file: Option<&PathBuf>) -> Result<Vec<(String, String)>, String> {
    let mut v = Vec::new();
    let mut lines: Vec<String> = users.to_vec();
    if let Some(f) = file {
        let s = std::fs::read_to_string(f).map_err(|e| format!("--users-file {}: {e}", f.display()))?;
        lines.extend(s.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string));
    }
    for l in lines {
        let (n, p) = l.split_once(':').ok_or_else(|| format!("user {l:?}: expected NAME:PASSWORD"))?;
        if n.is_empty() {
            return Err(format!("user {l:?}: empty name"));
        }
        v.push((n.to_string(), p.to_string()));
    }
    Ok(v)
}

/// The resolved target.
#[derive(Debug, Clone)]
pub struct Target {
    pub uri: String,
    pub host: String,
    pub addr: SocketAddr,
    pub proto: Proto,
}

/// Parses and resolves `--target`, refusing non-loopback addresses unless allowed.
pub async fn resolve_target(c: &Common) -> Result<Target, String> {
    let u = edge::msg::SipUri::parse(&c.target).map_err(|e| format!("--target {:?}: {e} (expected e.g. sip:127.0.0.1:5060)", c.target))?;
    let proto = match (c.transport, u.transport()) {
        (Some(p), _) => p,
        (None, Some(t)) => match t.to_ascii_lowercase().as_str() {
            "udp" => Proto::Udp,
            "tcp" => Proto::Tcp,
            "tls" => Proto::Tls,
            "ws" => Proto::Ws,
            "wss" => Proto::Wss,
            other => return Err(format!("--target: unknown transport {other:?}")),
        },
        (None, None) if u.secure => Proto::Tls,
        _ => Proto::Udp,
    };
    let port = u.port.unwrap_or(match proto {
        Proto::Tls => 5061,
        Proto::Ws => 80,
        Proto::Wss => 443,
        _ => 5060,
    });
    let host = u.host.trim_start_matches('[').trim_end_matches(']').to_string();
    let addr = match u.ip() {
        Some(ip) => SocketAddr::new(ip, port),
        // A name: SRV for the transport when no port is given, then A/AAAA (RFC 3263 4.2).
        None => {
            crate::resolve::resolve(&host, u.port, port, proto, c.dns, c.seed).await.map_err(|e| format!("--target {}: {e}", c.target))?
        }
    };
    check_address(addr.ip(), c.allow_remote)?;
    Ok(Target { uri: c.target.clone(), host: u.host.to_string(), addr, proto })
}

fn check_address(ip: IpAddr, allow_remote: bool) -> Result<(), String> {
    if !ip.is_loopback() && !allow_remote {
        return Err(format!("{ip} is not a loopback address: pass --allow-remote to load a remote system"));
    }
    Ok(())
}

fn timing(c: &Common) -> Timing {
    Timing { timeout: Duration::from_millis(c.timeout_ms.max(100)), ..Timing::default() }
}

fn local_for(proto: Proto, local: SocketAddr) -> Local {
    Local { transport: proto.via(), addr: local.to_string() }
}

/// Runs a client job on `threads` workers; returns the report.
#[allow(clippy::too_many_arguments)]
async fn run_client(
    common: &Common,
    mode: &str,
    target_rate: f64,
    make: impl Fn(usize, Local, Instant) -> Result<(Engine, Plan, Box<dyn Starter>), String>,
    media: Option<Arc<MediaPlan>>,
    stop: Stop,
    hard: Duration,
    watch: Option<Watch>,
) -> Result<Report, String> {
    let target = resolve_target(common).await?;
    let tls = TlsOpts { ca: common.ca.clone(), insecure: common.insecure, server_name: common.tls_name.clone(), cert: None, key: None };
    let start = Instant::now();
    let stats = Arc::new(Stats::new(start));
    let hard_limit = start + hard;
    let mut tasks = Vec::new();
    for w in 0..common.threads.max(1) {
        let link = link::connect(target.proto, target.addr, &target.host, &tls).await?;
        let (engine, plan, starter) = make(w, local_for(target.proto, link.local), start)?;
        let (stats, stop, media) = (stats.clone(), stop.clone(), media.clone());
        tasks.push(tokio::spawn(async move {
            drive(w, engine, link.rx, link.tx, Some(plan), Some(starter), stats, stop, hard_limit, media).await
        }));
    }
    let progress = spawn_progress(stats.clone(), common.quiet, mode.to_string(), target_rate, common.metrics, watch);
    for t in tasks {
        let _ = t.await;
    }
    progress.abort();
    let snap = stats.snapshot(Instant::now());
    let report = Report::from_snapshot(&snap, mode, &target.uri, target.proto.via(), target_rate);
    finish_report(&report, common.report_json.as_ref(), common.report_html.as_ref())?;
    Ok(report)
}

fn finish_report(report: &Report, json: Option<&PathBuf>, html: Option<&PathBuf>) -> Result<(), String> {
    if let Some(p) = json {
        report.write_json(p)?;
    }
    if let Some(d) = html {
        crate::report::html::write(report, d)?;
    }
    Ok(())
}

/// What a soak run watches.
#[derive(Debug, Clone)]
pub struct Watch {
    pub pid: Option<u32>,
    pub metrics: Option<String>,
    pub every: Duration,
}

async fn sample_rss(w: &Watch) -> Option<f64> {
    if let Some(pid) = w.pid {
        return crate::rt::rss_mb(pid);
    }
    let url = w.metrics.as_ref()?;
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(hostport)).await.ok()?.ok()?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").as_bytes()).await.ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut body)).await.ok()?.ok()?;
    body.lines()
        .find(|l| l.starts_with("process_resident_memory_bytes"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|b| b / 1048576.0)
}

fn spawn_progress(
    stats: Arc<Stats>,
    quiet: bool,
    mode: String,
    rate: f64,
    metrics: Option<SocketAddr>,
    watch: Option<Watch>,
) -> tokio::task::JoinHandle<()> {
    if let Some(addr) = metrics {
        let st = stats.clone();
        tokio::spawn(async move {
            let Ok(l) = tokio::net::TcpListener::bind(addr).await else {
                eprintln!("loadgen: cannot serve metrics on {addr}");
                return;
            };
            while let Ok((mut s, _)) = l.accept().await {
                let (started, ok, failed, active) = st.counters();
                let mut body = format!(
                    "# TYPE loadgen_started_total counter\nloadgen_started_total {started}\n# TYPE loadgen_succeeded_total counter\nloadgen_succeeded_total {ok}\n# TYPE loadgen_failed_total counter\nloadgen_failed_total {failed}\n# TYPE loadgen_active gauge\nloadgen_active {active}\n"
                );
                body.push_str("# TYPE loadgen_failures_total counter\n");
                for (k, v) in st.failures() {
                    body.push_str(&format!("loadgen_failures_total{{reason=\"{}\"}} {v}\n", k.replace('"', "'")));
                }
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
                let _ = s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes()).await;
            }
        });
    }
    tokio::spawn(async move {
        let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new_spinner() };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        let mut last = (Instant::now(), 0u64);
        let mut next_sample = Instant::now();
        loop {
            let (started, ok, failed, active) = stats.counters();
            let now = Instant::now();
            let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
            let achieved = (ok.saturating_sub(last.1)) as f64 / dt;
            last = (now, ok);
            let fails: Vec<String> = stats.failures().iter().take(4).map(|(k, v)| format!("{k}={v}")).collect();
            bar.set_message(format!(
                "{mode}: offered {rate:.0}/s achieved {achieved:.0}/s started {started} ok {ok} failed {failed} active {active} {}",
                fails.join(" ")
            ));
            bar.tick();
            if let Some(w) = &watch
                && now >= next_sample
            {
                next_sample = now + w.every;
                if let Some(mb) = sample_rss(w).await {
                    stats.rss(now, mb);
                    eprintln!(
                        "checkpoint {:.0} s: started {started} ok {ok} failed {failed} active {active} target RSS {mb:.1} MiB",
                        now.duration_since(stats.start).as_secs_f64()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

async fn call_job(a: &CallArgs, stop: Stop, watch: Option<Watch>) -> Result<Report, String> {
    if a.rate.is_nan() || a.rate <= 0.0 {
        return Err("--rate must be above 0".into());
    }
    if a.calls == 0 && a.duration_s.is_none() {
        return Err("--calls must be at least 1".into());
    }
    let creds = user_pool(&a.users, a.users_file.as_ref())?;
    let threads = a.common.threads.max(1);
    let target = resolve_target(&a.common).await?;
    let to = a.to.clone().unwrap_or_else(|| format!("sip:service@{}", target.host));
    edge::msg::SipUri::parse(&to).map_err(|e| format!("--to {to:?}: {e}"))?;
    let imp = Impairment {
        loss_pct: a.media.loss_pct,
        gilbert: match &a.media.gilbert {
            Some(g) => {
                let (x, y) = g.split_once(',').ok_or("--gilbert: expected P_GB,P_BG")?;
                Some((
                    x.trim().parse::<f64>().map_err(|e| format!("--gilbert: {e}"))?,
                    y.trim().parse::<f64>().map_err(|e| format!("--gilbert: {e}"))?,
                ))
            }
            None => None,
        },
        jitter_ms: a.media.jitter_ms,
        reorder_pct: a.media.reorder_pct,
    };
    let media_ip = if target.addr.ip().is_loopback() { target.addr.ip() } else { IpAddr::from([0, 0, 0, 0]) };
    let media = a.media.rtp.then(|| Arc::new(MediaPlan::new(a.media.codec, imp, a.common.seed, media_ip)));
    let hold = Duration::from_millis(a.hold_ms);
    let cfg = UacConfig {
        to,
        from: a.from.clone().unwrap_or_default(),
        hold: if a.hold_exponential { Hold::Exponential(hold) } else { Hold::Fixed(hold) },
        credentials: creds,
        timing: timing(&a.common),
        to_sequence: a.to_sequence,
    };
    let calls = if a.duration_s.is_some() && a.calls == 100 { u64::MAX } else { a.calls };
    let duration = a.duration_s.map(Duration::from_secs_f64);
    let expect = match duration {
        Some(d) => d.as_secs_f64(),
        None => a.calls as f64 / a.rate + a.ramp_s,
    };
    let hard =
        Duration::from_secs_f64(a.common.max_time_s.unwrap_or(
            expect + hold.as_secs_f64() * if a.hold_exponential { 10.0 } else { 1.0 } + a.common.timeout_ms as f64 / 1000.0 + 30.0,
        ));
    let seed = a.common.seed;
    let pid = std::process::id();
    let make = |w: usize, local: Local, _t0: Instant| -> Result<(Engine, Plan, Box<dyn Starter>), String> {
        let mut cfg = cfg.clone();
        if cfg.from.is_empty() {
            cfg.from = format!("sip:loadgen@{}", local.addr);
        }
        let share = |total: u64| {
            if total == u64::MAX { u64::MAX } else { total / threads as u64 + u64::from((w as u64) < total % threads as u64) }
        };
        let plan = Plan {
            rate: a.rate / threads as f64,
            ramp: Duration::from_secs_f64(a.ramp_s),
            ramp_steps: a.ramp_steps,
            total: share(calls),
            duration,
            concurrency: (a.concurrency / threads).max(1),
        };
        let uac = Uac::new(cfg, local, format!("lg{pid}-{seed}-{w}"), seed.wrapping_add(w as u64 * 7919));
        Ok((Engine::Uac(uac), plan, Box::new(CallStarter { media: media.clone() })))
    };
    run_client(&a.common, "call", a.rate, make, media.clone(), stop, hard, watch).await
}

async fn register_job(a: &RegisterArgs, stop: Stop, watch: Option<Watch>) -> Result<Report, String> {
    let users = user_pool(&a.users, a.users_file.as_ref())?;
    if users.is_empty() {
        return Err("register needs --user NAME:PASSWORD or --users-file".into());
    }
    if a.rate.is_nan() || a.rate <= 0.0 {
        return Err("--rate must be above 0".into());
    }
    let threads = a.common.threads.max(1).min(users.len());
    let target = resolve_target(&a.common).await?;
    let domain = a.domain.clone().unwrap_or_else(|| target.host.clone());
    let count = a.count.unwrap_or(users.len() as u64);
    let duration = a.duration_s.map(Duration::from_secs_f64);
    let expect = duration.map(|d| d.as_secs_f64()).unwrap_or(count as f64 / a.rate);
    let hard = Duration::from_secs_f64(a.common.max_time_s.unwrap_or(expect + a.common.timeout_ms as f64 / 1000.0 + 30.0));
    let seed = a.common.seed;
    let pid = std::process::id();
    let make = |w: usize, local: Local, t0: Instant| -> Result<(Engine, Plan, Box<dyn Starter>), String> {
        let mine: Vec<(String, String)> = users.iter().enumerate().filter(|(i, _)| i % threads == w).map(|(_, u)| u.clone()).collect();
        let cfg = RegisterConfig { domain: domain.clone(), users: mine, expires: a.expires, timing: timing(&a.common) };
        let total = count / threads as u64 + u64::from((w as u64) < count % threads as u64);
        let plan = Plan { rate: a.rate / threads as f64, ramp: Duration::ZERO, ramp_steps: 0, total, duration, concurrency: usize::MAX };
        let r = Registrar::new(t0, cfg, local, &format!("lg{pid}-{seed}-{w}"), seed.wrapping_add(w as u64));
        Ok((Engine::Register(r), plan, Box::new(RegStarter { next: 0 })))
    };
    run_client(&a.common, "register", a.rate, make, None, stop, hard, watch).await
}

async fn dialer_job(a: &DialerArgs, stop: Stop, watch: Option<Watch>) -> Result<Report, String> {
    if a.agents == 0 || a.lines == 0 || a.rounds == 0 {
        return Err("--agents, --lines and --rounds must be at least 1".into());
    }
    let threads = a.common.threads.max(1).min(a.agents);
    let target = resolve_target(&a.common).await?;
    let to = a.to.clone().unwrap_or_else(|| format!("sip:555@{}", target.host));
    edge::msg::SipUri::parse(&to).map_err(|e| format!("--to {to:?}: {e}"))?;
    let duration = a.duration_s.map(Duration::from_secs_f64);
    let hold = Duration::from_millis(a.hold_ms);
    let hard = Duration::from_secs_f64(a.common.max_time_s.unwrap_or(
        duration.map(|d| d.as_secs_f64()).unwrap_or(0.0)
            + (a.rounds as f64 / a.agents as f64) * (hold.as_secs_f64() + 2.0)
            + a.common.timeout_ms as f64 / 1000.0
            + 60.0,
    ));
    let seed = a.common.seed;
    let pid = std::process::id();
    let make = |w: usize, local: Local, _t0: Instant| -> Result<(Engine, Plan, Box<dyn Starter>), String> {
        let cfg = UacConfig {
            to: to.clone(),
            from: a.from.clone().unwrap_or_else(|| format!("sip:dialer@{}", local.addr)),
            hold: Hold::Fixed(hold),
            credentials: vec![],
            timing: timing(&a.common),
            to_sequence: true,
        };
        let agents = a.agents / threads + usize::from(w < a.agents % threads);
        let total = a.rounds / threads as u64 + u64::from((w as u64) < a.rounds % threads as u64);
        let d = Dialer::new(cfg, local, format!("lg{pid}-{seed}-{w}"), seed.wrapping_add(w as u64), agents, a.lines);
        let plan = Plan { rate: 100_000.0, ramp: Duration::ZERO, ramp_steps: 0, total, duration, concurrency: usize::MAX };
        Ok((Engine::Dialer(d), plan, Box::new(DialStarter)))
    };
    run_client(&a.common, "dialer", 0.0, make, None, stop, hard, watch).await
}

async fn answer_job(a: &AnswerArgs, stop: Stop) -> Result<Report, String> {
    check_address(a.listen.ip(), a.allow_remote)?;
    let tls = TlsOpts { cert: a.cert.clone(), key: a.key.clone(), ..Default::default() };
    let l = link::listen(a.transport, a.listen, &tls).await?;
    println!("loadgen: answering on {} {}", a.transport.via().to_ascii_lowercase(), l.local);
    let (media, echo) = if a.rtp_echo {
        let (port, echo) = crate::media::echo_socket_counted(a.listen.ip()).await.map_err(|e| format!("RTP echo socket: {e}"))?;
        (Some((a.listen.ip().to_string(), port)), Some(echo))
    } else {
        (None, None)
    };
    let contact = format!(
        "sip:{}{}",
        l.local,
        if a.transport == Proto::Udp { String::new() } else { format!(";transport={}", a.transport.via().to_ascii_lowercase()) }
    );
    let cfg = UasConfig {
        ring: Duration::from_millis(a.ring_ms),
        answer: Duration::from_millis(a.answer_ms),
        reject_share: (a.reject_pct / 100.0).clamp(0.0, 1.0),
        reject_code: a.reject_code,
        retry_after: a.retry_after,
        no_answer_share: (a.no_answer_pct / 100.0).clamp(0.0, 1.0),
        no_answer: Duration::from_millis(a.no_answer_ms),
        media,
        codec: a.codec.clone(),
        telephone_event: !a.no_telephone_event,
        contact,
        timing: Timing::default(),
    };
    let start = Instant::now();
    let stats = Arc::new(Stats::new(start));
    let uas = Uas::new(cfg, a.transport != Proto::Udp, 7);
    let hard = start + Duration::from_secs_f64(a.duration_s.max(0.1));
    // Stop after --calls handled calls: a watcher flips the stop switch.
    if let Some(n) = a.calls {
        let (st, stop2) = (stats.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let s = st.snapshot_counts_uas();
                if s >= n {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    stop2.store(true, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    let progress = spawn_progress(stats.clone(), a.quiet, "answer".into(), 0.0, None, None);
    let _ = drive(0, Engine::Uas(uas), l.rx, l.tx, None, None, stats.clone(), stop, hard, None).await;
    progress.abort();
    let snap = stats.snapshot(Instant::now());
    let mut report = Report::from_snapshot(&snap, "answer", &l.local.to_string(), a.transport.via(), 0.0);
    report.calls_succeeded = snap.answered_ok;
    report.calls_failed = snap.answered_failed;
    report.calls_attempted = snap.answered_ok + snap.answered_failed;
    report.failure_pct = if report.calls_attempted == 0 { 0.0 } else { report.calls_failed as f64 * 100.0 / report.calls_attempted as f64 };
    report.echo = echo.map(|e| e.lock().unwrap_or_else(|x| x.into_inner()).clone());
    finish_report(&report, a.report_json.as_ref(), None)?;
    Ok(report)
}

/// Runs the command line; returns the process exit code.
pub fn main_with(cli: Cli) -> i32 {
    if let Cmd::Sfu(a) = &cli.cmd {
        return sfu_main(a.clone());
    }
    let threads = match &cli.cmd {
        Cmd::Call(a) => a.common.threads,
        Cmd::Register(a) => a.common.threads,
        Cmd::Dialer(a) => a.common.threads,
        Cmd::Soak(s) => match &s.job {
            SoakJob::Call(a) => a.common.threads,
            SoakJob::Register(a) => a.common.threads,
            SoakJob::Dialer(a) => a.common.threads,
        },
        Cmd::Answer(_) | Cmd::Sfu(_) => 1,
    };
    // One worker: a current-thread runtime (no cross-thread wake-ups per message).
    let built = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads.clamp(1, 64)).enable_all().build()
    };
    let rt = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return 2;
        }
    };
    rt.block_on(async move {
        let stop: Stop = Arc::default();
        let s2 = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                s2.store(true, Ordering::Relaxed);
            }
        });
        let (fail_above, result) = match &cli.cmd {
            Cmd::Call(a) => (a.common.fail_above, call_job(a, stop, None).await),
            Cmd::Register(a) => (a.common.fail_above, register_job(a, stop, None).await),
            Cmd::Dialer(a) => (a.common.fail_above, dialer_job(a, stop, None).await),
            Cmd::Answer(a) => (None, answer_job(a, stop).await),
            Cmd::Sfu(_) => return 2,
            Cmd::Soak(s) => {
                if s.watch_pid.is_none() && s.watch_metrics.is_none() {
                    eprintln!("loadgen: soak needs --watch-pid PID or --watch-metrics URL");
                    return 2;
                }
                let w =
                    Some(Watch { pid: s.watch_pid, metrics: s.watch_metrics.clone(), every: Duration::from_secs(s.checkpoint_s.max(1)) });
                match &s.job {
                    SoakJob::Call(a) => (a.common.fail_above, call_job(a, stop, w).await),
                    SoakJob::Register(a) => (a.common.fail_above, register_job(a, stop, w).await),
                    SoakJob::Dialer(a) => (a.common.fail_above, dialer_job(a, stop, w).await),
                }
            }
        };
        match result {
            Err(e) => {
                eprintln!("loadgen: {e}");
                2
            }
            Ok(r) => {
                print!("{}", r.summary());
                if let Some(p) = fail_above
                    && r.failure_pct > p
                {
                    eprintln!("loadgen: {:.2}% failed, above --fail-above {p}", r.failure_pct);
                    return 1;
                }
                if r.mode != "answer" && r.calls_attempted > 0 && r.calls_succeeded == 0 {
                    eprintln!("loadgen: nothing succeeded (does the target answer?)");
                    return 1;
                }
                0
            }
        }
    })
}

/// `loadgen sfu`: its own runtime (str0m peers are CPU-bound: `--threads` workers).
fn sfu_main(a: crate::sfu::SfuArgs) -> i32 {
    str0m::crypto::from_feature_flags().install_process_default();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(a.threads.clamp(1, 64)).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return 2;
        }
    };
    let report = a.report_json.clone();
    match rt.block_on(crate::sfu::run(a)) {
        Err(e) => {
            eprintln!("loadgen: {e}");
            2
        }
        Ok(r) => {
            print!("{}", r.summary());
            if let Some(p) = report
                && let Err(e) = std::fs::write(&p, serde_json::to_vec_pretty(&r).unwrap_or_default())
            {
                eprintln!("loadgen: {}: {e}", p.display());
                return 2;
            }
            for f in r.per_participant.iter().filter(|p| p.error.is_some()) {
                eprintln!("loadgen: {}: {}", f.name, f.error.as_deref().unwrap_or(""));
            }
            if r.joined == 0 {
                eprintln!("loadgen: nobody joined (is the SFU enabled at --http?)");
                return 1;
            }
            0
        }
    }
}
