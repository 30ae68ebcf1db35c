//! The TOML configuration file (reference: docs/CONFIG.md) and its embedded default.
//! Errors name the line, the key and what was expected.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Embedded default: every listener on 127.0.0.1, data in `./data`.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the generated TLS certificate (and later the store) live.
    pub data_dir: PathBuf,
    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `edge=debug`.
    pub log: String,
    pub sip: SipConfig,
    pub tls: TlsConfig,
    pub registrar: RegistrarConfig,
    pub auth: AuthConfig,
    #[serde(rename = "user")]
    pub users: Vec<UserConfig>,
    #[serde(rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    pub media: MediaConfig,
    pub admin: AdminConfig,
    pub events: EventsConfig,
    /// Dial plan routes (more can be added through the admin API).
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    pub dialplan: DialplanConfig,
    pub dns: DnsConfig,
    pub sfu: SfuSection,
}

/// The SFU (WebRTC meeting rooms; WHIP/WHEP on the admin listener).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SfuSection {
    pub enabled: bool,
    /// UDP address for all WebRTC media (the ICE host candidate); port 0 picks one.
    pub media: SocketAddr,
    /// ICE-TCP (RFC 6544): also a passive TCP candidate on the same address and port, for
    /// clients whose networks block UDP.
    pub ice_tcp: bool,
    /// Participants per room (the next one is refused).
    pub max_participants: usize,
    /// Guests wait in a lobby until the moderator admits them.
    pub lobby: bool,
    /// A participant not heard from for this long is removed.
    pub vanish_secs: u64,
    /// Each member receives the video of the `last_n` most recent speakers.
    pub last_n: usize,
    /// Above `all_audio_up_to` participants, only the `audio_n` most recent speakers are heard.
    pub audio_n: usize,
    pub all_audio_up_to: usize,
    /// Bearer token per room for WHIP/WHEP and the room WebSocket (`"*"`: every other room).
    pub tokens: std::collections::HashMap<String, String>,
}

impl Default for SfuSection {
    fn default() -> Self {
        SfuSection {
            enabled: true,
            media: SocketAddr::from(([127, 0, 0, 1], 0)),
            ice_tcp: true,
            max_participants: 100,
            lobby: true,
            vanish_secs: 30,
            last_n: 25,
            audio_n: 3,
            all_audio_up_to: 10,
            tokens: std::collections::HashMap::new(),
        }
    }
}

/// DNS for RFC 3263 trunk resolution.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers (`address:port`); empty: the system's (`/etc/resolv.conf`, hosts file).
    pub servers: Vec<SocketAddr>,
    /// Time limit of one query in ms.
    pub timeout_ms: u64,
    /// Records are kept at least this long, whatever their TTL (a TTL of 0 would mean a
    /// lookup per call).
    pub min_ttl_secs: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig { servers: vec![], timeout_ms: 2000, min_ttl_secs: 5 }
    }
}

/// Dial-plan settings that are not per route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialplanConfig {
    /// Emergency numbers in addition to 112 and 911: never converted, always routed to
    /// `emergency_route`.
    pub emergency_numbers: Vec<String>,
    /// Name of the route emergency calls take (default: the first matching route).
    pub emergency_route: Option<String>,
}

/// A `[[route]]`: see `dialplan::Route`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: Spanned<String>,
    /// Lower is tried first (default: 1000 + position in the file).
    pub priority: Option<u32>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
    pub domain: Option<String>,
    /// One trunk ...
    pub upstream: Option<String>,
    /// ... or several, tried in order (or by `weights`).
    #[serde(default)]
    pub upstreams: Vec<String>,
    #[serde(default)]
    pub weights: Vec<u16>,
    #[serde(default)]
    pub convert: Vec<crate::dialplan::Convert>,
}

impl RouteConfig {
    /// The route this defines, checked (`trunk_exists` knows the upstream names).
    pub fn to_route(
        &self,
        index: usize,
        trunk_exists: &dyn Fn(&str) -> bool,
    ) -> Result<crate::dialplan::Route, crate::dialplan::RouteError> {
        let mut ups = self.upstreams.clone();
        if let Some(u) = &self.upstream {
            ups.insert(0, u.clone());
        }
        crate::dialplan::Route::new(
            self.name.get_ref(),
            self.priority.unwrap_or(1000 + index as u32),
            self.prefix.clone(),
            self.regex.clone(),
            self.domain.clone(),
            ups,
            self.weights.clone(),
            self.convert.clone(),
            trunk_exists,
        )
    }
}

/// Call events pushed to webhooks (the SSE stream needs no configuration).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// URLs (http or https) that get every call event as a JSON POST.
    pub webhooks: Vec<String>,
    /// Events kept per URL while it is slow or down (then new ones are dropped).
    pub webhook_queue: usize,
    /// Attempts per event, the first included.
    pub webhook_attempts: u32,
    /// First retry delay in ms (doubled each time, at most 30 s).
    pub webhook_backoff_ms: u64,
    /// Time limit of one POST in ms.
    pub webhook_timeout_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { webhooks: vec![], webhook_queue: 1000, webhook_attempts: 5, webhook_backoff_ms: 500, webhook_timeout_ms: 5000 }
    }
}

/// SRTP handling of one leg (RFC 4568 SDES).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SrtpPolicy {
    /// Pass RTP/AVP or RTP/SAVP through as the endpoints negotiate it (end to end).
    Keep,
    /// This leg gets plain RTP/AVP: SRTP from the other leg is decrypted by the relay.
    Plain,
    /// This leg must use SDES-SRTP (RTP/SAVP): plain RTP from the other leg is encrypted
    /// by the relay, and a plain offer from this leg is refused with 488.
    Sdes,
}

/// Media anchoring (the RTP relay).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Anchor the media of every call (overridable per user and per upstream).
    pub anchor: bool,
    /// Address the relay sockets bind to.
    pub bind: std::net::IpAddr,
    /// Address written into SDP (`c=`); defaults to `bind`.
    pub advertise: Option<std::net::IpAddr>,
    /// Relay port range (even RTP port + odd RTCP port per leg).
    pub port_min: u16,
    pub port_max: u16,
    /// After latching, ignore packets from other sources.
    pub strict_latching: bool,
    /// Seconds without media after which a call is torn down (BYE both ways).
    pub inactivity_secs: u64,
    /// The same while a leg is on hold.
    pub hold_inactivity_secs: u64,
    /// SRTP policy of legs to local users over UDP/TCP/WS.
    pub srtp: SrtpPolicy,
    /// SRTP policy of legs to local users over TLS/WSS.
    pub srtp_secure: SrtpPolicy,
    /// Call records (JSON lines); relative paths are under `data_dir`.
    pub cdr_file: PathBuf,
}

/// The admin HTTP listener (Prometheus `/metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Listening address; empty list = no admin listener.
    pub listen: Vec<SocketAddr>,
    /// Paths served without the bearer token.
    pub public: Vec<String>,
    /// Where the admin token is kept (generated on first start); relative to `data_dir`.
    pub token_file: PathBuf,
    /// Longest packet capture that may be requested, in seconds.
    pub capture_max_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            public: vec!["/health".into(), "/metrics".into()],
            token_file: PathBuf::from("admin.token"),
            capture_max_secs: 3600,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            anchor: true,
            bind: std::net::IpAddr::from([127, 0, 0, 1]),
            advertise: None,
            port_min: 30000,
            port_max: 39999,
            strict_latching: true,
            inactivity_secs: 60,
            hold_inactivity_secs: 3600,
            srtp: SrtpPolicy::Keep,
            srtp_secure: SrtpPolicy::Keep,
            cdr_file: PathBuf::from("cdr.jsonl"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// The SIP domain the edge is responsible for (registrar and local users).
    pub domain: String,
    /// More names that count as this domain.
    pub aliases: Vec<String>,
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub ws: Vec<SocketAddr>,
    pub wss: Vec<SocketAddr>,
    /// Worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Largest message accepted on a stream (TCP/TLS/WS); larger gets 513 and close.
    pub max_message_size: usize,
    /// RFC 3261 T1 in milliseconds.
    pub t1_ms: u64,
    /// RFC 3261 T2 in milliseconds.
    pub t2_ms: u64,
    /// RFC 3261 T4 in milliseconds.
    pub t4_ms: u64,
    /// RFC 3261 16.6 Timer C for INVITE in seconds (> 180).
    pub timer_c_secs: u64,
    /// Longest call in seconds: then the edge ends it (BYE both ways). Also ends dialogs
    /// whose BYE the edge never saw.
    pub max_call_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; when absent a self-signed one is generated in data_dir.
    pub cert: Option<PathBuf>,
    /// PEM private key (with `cert`).
    pub key: Option<PathBuf>,
    /// More trusted CA certificates (PEM) for connections the edge opens (trunks over TLS),
    /// besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// What to do with a new contact when an address of record already has `max_contacts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    /// Refuse the REGISTER with 403.
    Reject,
    /// Drop the binding that was registered first.
    EvictOldest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrarConfig {
    pub max_contacts: usize,
    pub on_max_contacts: OverflowPolicy,
    pub min_expires: u32,
    pub max_expires: u32,
    pub default_expires: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Digest realm; defaults to the domain.
    pub realm: Option<String>,
    /// Seconds a nonce stays valid; older gets `stale=true`.
    pub nonce_ttl_secs: u64,
    /// Challenge algorithms offered, in this order (RFC 8760). MD5 first by default: JsSIP,
    /// sipp and many desk phones read only the first challenge and know only MD5.
    pub algorithms: Vec<String>,
    /// The same for requests over WebSocket (browsers). MD5 only by default: JsSIP and
    /// SIP.js know only MD5, and SIP.js reads the *last* challenge header.
    pub websocket_algorithms: Vec<String>,
    /// Challenge (407) out-of-dialog requests whose From is a local user.
    pub challenge_local_callers: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: Spanned<String>,
    /// Plain password: only its HA1 hashes are kept in memory.
    pub password: Option<String>,
    /// HA1 = MD5(user:realm:password), hex.
    pub ha1_md5: Option<String>,
    /// HA1 = SHA-256(user:realm:password), hex.
    pub ha1_sha256: Option<String>,
    /// Overrides registrar.max_contacts for this user.
    pub max_contacts: Option<usize>,
    /// Overrides media.anchor for calls from or to this user.
    pub anchor_media: Option<bool>,
    /// Calls to this user from anonymous callers (`Privacy: id`, or an anonymous From)
    /// get 433 Anonymity Disallowed (RFC 5079).
    #[serde(default)]
    pub reject_anonymous: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name (admin API key); default `upstream-N`.
    pub name: Option<String>,
    /// Lower is preferred (default 100 + position in the file).
    pub priority: Option<u32>,
    /// Next hop for requests to non-local domains, e.g. `sip:10.0.0.5:5060;transport=tcp`.
    pub uri: Spanned<String>,
    /// Overrides media.anchor for calls through this upstream.
    pub anchor_media: Option<bool>,
    /// SRTP policy of the leg towards this upstream (e.g. `plain` for a trunk).
    pub srtp: Option<SrtpPolicy>,
    /// More targets tried in order after `uri` when it fails (IP-address URIs).
    #[serde(default)]
    pub targets: Vec<Spanned<String>>,
    /// A target that gives no provisional response to an INVITE within this time is
    /// skipped for the call (and for `failover_block_secs`), default 2000.
    pub invite_timeout_ms: Option<u64>,
    /// How long a failed target is skipped, default 30 (a 503's Retry-After wins).
    pub failover_block_secs: Option<u64>,
    /// `priority`, `weighted` (RFC 2782, default), `round_robin`, `call_id_hash`, `least_latency`.
    pub selection: Option<String>,
    /// Calls in progress at most (503 beyond).
    pub max_calls: Option<u32>,
    /// New calls per second at most (503 beyond).
    pub max_cps: Option<f64>,
    /// Keep P-Asserted-Identity/Privacy towards this trunk (RFC 3325 trust domain).
    pub trusted: Option<bool>,
    /// Digest credentials for 401/407 from the trunk.
    pub auth_user: Option<String>,
    pub auth_password: Option<String>,
    /// OPTIONS probe interval in ms (0/absent: no probing).
    pub probe_interval_ms: Option<u64>,
    /// A probe unanswered after this long failed (default: the interval, at most 2000).
    pub probe_timeout_ms: Option<u64>,
    /// Down after this many failed probes in a row (default 2).
    pub probe_down_after: Option<u32>,
    /// Up after this many good probes in a row (default 2).
    pub probe_up_after: Option<u32>,
}

impl UpstreamConfig {
    /// The name: given or `upstream-N`.
    pub fn name_or(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("upstream-{index}"))
    }

    /// The trunk options of this section.
    pub fn options(&self) -> crate::trunk::TrunkOptions {
        crate::trunk::TrunkOptions {
            targets: self.targets.iter().map(|t| t.get_ref().clone()).collect(),
            selection: self.selection.clone(),
            invite_timeout_ms: self.invite_timeout_ms,
            failover_block_secs: self.failover_block_secs,
            max_calls: self.max_calls,
            max_cps: self.max_cps,
            trusted: self.trusted,
            auth_user: self.auth_user.clone(),
            auth_password: self.auth_password.clone(),
            probe_interval_ms: self.probe_interval_ms,
            probe_timeout_ms: self.probe_timeout_ms,
            probe_down_after: self.probe_down_after,
            probe_up_after: self.probe_up_after,
        }
    }

    /// The trunk this section defines.
    pub fn build(&self, index: usize) -> Result<crate::trunk::Upstream, String> {
        crate::trunk::Upstream::build(
            &self.name_or(index),
            self.priority.unwrap_or(100 + index as u32),
            "config",
            self.uri.get_ref(),
            self.anchor_media,
            self.srtp,
            &self.options(),
        )
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            log: "info".into(),
            sip: SipConfig::default(),
            tls: TlsConfig::default(),
            registrar: RegistrarConfig::default(),
            auth: AuthConfig::default(),
            users: vec![],
            upstreams: vec![],
            media: MediaConfig::default(),
            admin: AdminConfig::default(),
            events: EventsConfig::default(),
            routes: vec![],
            dialplan: DialplanConfig::default(),
            dns: DnsConfig::default(),
            sfu: SfuSection::default(),
        }
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            domain: "localhost".into(),
            aliases: vec![],
            udp: vec![SocketAddr::from(([127, 0, 0, 1], 5060))],
            tcp: vec![SocketAddr::from(([127, 0, 0, 1], 5060))],
            tls: vec![SocketAddr::from(([127, 0, 0, 1], 5061))],
            ws: vec![SocketAddr::from(([127, 0, 0, 1], 8088))],
            wss: vec![SocketAddr::from(([127, 0, 0, 1], 8089))],
            workers: 0,
            max_message_size: 65_535,
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            timer_c_secs: 181,
            max_call_secs: 43_200,
        }
    }
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            max_contacts: 3,
            on_max_contacts: OverflowPolicy::Reject,
            min_expires: 60,
            max_expires: 7200,
            default_expires: 3600,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            realm: None,
            nonce_ttl_secs: 300,
            algorithms: vec!["MD5".into(), "SHA-256".into()],
            websocket_algorithms: vec!["MD5".into()],
            challenge_local_callers: true,
        }
    }
}

/// A configuration error with the line it was found on.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

impl Config {
    /// Parses and checks a config text. `path` is used in messages.
    pub fn from_toml(src: &str, path: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(src).map_err(|e| {
            let line = e.span().map(|s| format!("line {}: ", line_of(src, s.start))).unwrap_or_default();
            ConfigError { path: path.into(), message: format!("{line}{}", e.message()) }
        })?;
        cfg.check(src, path)?;
        Ok(cfg)
    }

    /// Reads a file, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::from_toml(DEFAULT_TOML, "<embedded default>"),
            Some(p) => {
                let src = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError { path: p.display().to_string(), message: format!("cannot read: {e}") })?;
                Config::from_toml(&src, &p.display().to_string())
            }
        }
    }

    fn check(&self, src: &str, path: &str) -> Result<(), ConfigError> {
        let err = |span: Option<std::ops::Range<usize>>, msg: String| ConfigError {
            path: path.into(),
            message: match span {
                Some(s) => format!("line {}: {msg}", line_of(src, s.start)),
                None => msg,
            },
        };
        if self.sip.domain.trim().is_empty() {
            return Err(err(None, "key `sip.domain`: expected a non-empty domain name".into()));
        }
        if self.sip.max_message_size < 1024 {
            return Err(err(None, "key `sip.max_message_size`: expected at least 1024 bytes".into()));
        }
        if self.sip.t1_ms == 0 || self.sip.t2_ms < self.sip.t1_ms {
            return Err(err(None, "keys `sip.t1_ms`/`sip.t2_ms`: expected 0 < t1_ms <= t2_ms".into()));
        }
        if self.registrar.max_contacts == 0 {
            return Err(err(None, "key `registrar.max_contacts`: expected at least 1".into()));
        }
        if self.registrar.min_expires > self.registrar.max_expires {
            return Err(err(None, "keys `registrar.min_expires`/`max_expires`: expected min_expires <= max_expires".into()));
        }
        for (key, list) in [("algorithms", &self.auth.algorithms), ("websocket_algorithms", &self.auth.websocket_algorithms)] {
            for a in list {
                if !matches!(a.as_str(), "MD5" | "SHA-256") {
                    return Err(err(None, format!("key `auth.{key}`: unknown algorithm {a:?}, expected \"SHA-256\" or \"MD5\"")));
                }
            }
            if list.is_empty() {
                return Err(err(None, format!("key `auth.{key}`: expected at least one of \"SHA-256\", \"MD5\"")));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for u in &self.users {
            let name = u.name.get_ref();
            if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '@' || c == ':') {
                return Err(err(Some(u.name.span()), format!("key `user.name`: expected a SIP user name, got {name:?}")));
            }
            if !seen.insert(name.clone()) {
                return Err(err(Some(u.name.span()), format!("key `user.name`: user {name:?} is defined twice")));
            }
            if u.password.is_none() && u.ha1_md5.is_none() && u.ha1_sha256.is_none() {
                return Err(err(Some(u.name.span()), format!("user {name:?}: expected `password`, `ha1_md5` or `ha1_sha256`")));
            }
            for (key, v, len) in [("ha1_md5", &u.ha1_md5, 32), ("ha1_sha256", &u.ha1_sha256, 64)] {
                if let Some(v) = v
                    && (v.len() != len || !v.bytes().all(|c| c.is_ascii_hexdigit()))
                {
                    return Err(err(Some(u.name.span()), format!("user {name:?}: key `{key}`: expected {len} hex digits")));
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, up) in self.upstreams.iter().enumerate() {
            let t = up.build(i).map_err(|e| err(Some(up.uri.span()), format!("[[upstream]] {:?}: {e}", up.name_or(i))))?;
            if !names.insert(t.name.clone()) {
                return Err(err(Some(up.uri.span()), format!("[[upstream]] {:?} is defined twice", t.name)));
            }
        }
        let mut route_names = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let route = r.to_route(i, &|n| names.contains(n)).map_err(|e| err(Some(r.name.span()), format!("[[route]] {e}")))?;
            if route.conference_room(Some("x")).is_some() && !self.sfu.enabled {
                return Err(err(
                    Some(r.name.span()),
                    format!("[[route]] {:?}: a conference target needs [sfu] enabled = true", route.name),
                ));
            }
            if !route_names.insert(r.name.get_ref().clone()) {
                return Err(err(Some(r.name.span()), format!("[[route]] {:?} is defined twice", r.name.get_ref())));
            }
        }
        if let Some(er) = &self.dialplan.emergency_route
            && !route_names.contains(er)
        {
            return Err(err(None, format!("key `dialplan.emergency_route`: no [[route]] named {er:?}")));
        }
        for n in &self.dialplan.emergency_numbers {
            if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || "+*#".contains(c)) {
                return Err(err(None, format!("key `dialplan.emergency_numbers`: {n:?} is not a number")));
            }
        }
        if self.media.port_min < 1024 || self.media.port_max < self.media.port_min.saturating_add(3) {
            return Err(err(None, "keys `media.port_min`/`media.port_max`: expected 1024 <= port_min and at least 4 ports".into()));
        }
        for u in &self.events.webhooks {
            let ok = (u.starts_with("http://") || u.starts_with("https://")) && u.len() > 8;
            if !ok {
                return Err(err(None, format!("key `events.webhooks`: expected http:// or https:// URLs, got {u:?}")));
            }
        }
        if self.events.webhook_queue == 0 || self.events.webhook_attempts == 0 {
            return Err(err(None, "keys `events.webhook_queue`/`webhook_attempts`: expected at least 1".into()));
        }
        if self.sfu.max_participants == 0 || self.sfu.vanish_secs == 0 || self.sfu.last_n == 0 || self.sfu.audio_n == 0 {
            return Err(err(None, "keys `sfu.max_participants`/`vanish_secs`/`last_n`/`audio_n`: expected at least 1".into()));
        }
        if self.media.inactivity_secs == 0 || self.media.hold_inactivity_secs == 0 {
            return Err(err(None, "keys `media.inactivity_secs`/`hold_inactivity_secs`: expected at least 1".into()));
        }
        Ok(())
    }

    /// The call-record file.
    pub fn cdr_path(&self) -> PathBuf {
        if self.media.cdr_file.is_absolute() { self.media.cdr_file.clone() } else { self.data_dir.join(&self.media.cdr_file) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_loads() {
        let c = Config::load(None).unwrap();
        assert_eq!(c.sip.udp, vec!["127.0.0.1:5060".parse().unwrap()]);
        assert_eq!(c.sip.wss, vec!["127.0.0.1:8089".parse().unwrap()]);
        assert_eq!(c.registrar.max_contacts, 3);
    }

    #[test]
    fn omitted_keys_take_the_documented_defaults() {
        let c = Config::from_toml("[sip]\ndomain = \"x.test\"\n", "f").unwrap();
        assert_eq!(c.sip.tcp, vec!["127.0.0.1:5060".parse().unwrap()]);
        assert_eq!(c.sip.ws, vec!["127.0.0.1:8088".parse().unwrap()]);
        let c = Config::from_toml("[sip]\nws = []\n", "f").unwrap();
        assert!(c.sip.ws.is_empty());
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = Config::from_toml("[sip]\ndomain = \"x\"\nudpp = []\n", "f.toml").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("udpp") && e.contains("expected"), "{e}");
        let e = Config::from_toml("[sip]\nudp = [\"nonsense\"]\n", "f.toml").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("socket address"), "{e}");
        let e = Config::from_toml("[[user]]\nname = \"bob\"\n", "f.toml").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("password"), "{e}");
        let e = Config::from_toml("\n[[upstream]]\nuri = \"http://x\"\n", "f.toml").unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("[[upstream]]") && e.contains("uri"), "{e}");
        let e =
            Config::from_toml("[[upstream]]\nname = \"a\"\nuri = \"sip:gw.test\"\n[[route]]\nname = \"r\"\nupstream = \"b\"\n", "f.toml")
                .unwrap_err()
                .to_string();
        assert!(e.contains("line 5") && e.contains("unknown upstream") && e.contains("\"b\""), "{e}");
        let e = Config::from_toml(
            "[[upstream]]\nname = \"a\"\nuri = \"sip:gw.test\"\n[[route]]\nname = \"r\"\nupstream = \"a\"\nregex = \"[\"\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 5") && e.contains("regex") && e.contains("\"r\""), "{e}");
        let e = Config::from_toml("[[upstream]]\nname = \"a\"\nuri = \"sip:gw.test\"\nselection = \"random\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("selection"), "{e}");
        let e = Config::from_toml("[dialplan]\nemergency_route = \"sos\"\n", "f.toml").unwrap_err().to_string();
        assert!(e.contains("emergency_route") && e.contains("sos"), "{e}");
        let e = Config::from_toml("[registrar]\non_max_contacts = \"drop\"\n", "f.toml").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("reject"), "{e}");
    }
}
