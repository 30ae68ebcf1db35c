//! The admin HTTP API (axum) under `/api/v1/`, with its OpenAPI 3 document generated from
//! the handlers (utoipa) at `/openapi.json`. Bearer-token auth on everything except the
//! public paths (`GET /health`, `GET /metrics` by default). JSON everywhere; errors are
//! `{"error": "...", "detail": ...}` with a 4xx status for anything the client got wrong.
//! Reference with curl examples: docs/ADMIN.md.

use crate::auth::Credentials;
use crate::core::Shared;
use crate::store::{CallQuery, Store, StoreOp, StoredUser, wall_clock};
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub shared: Arc<Shared>,
    pub store: Arc<dyn Store>,
    pub token: Arc<str>,
    /// Paths served without a token.
    pub public: Arc<Vec<String>>,
    /// Users defined in the configuration file (read-only through the API).
    pub static_users: Arc<HashSet<String>>,
    pub prometheus: PrometheusHandle,
    pub events: tokio::sync::broadcast::Sender<Arc<StampedEvent>>,
    /// The TLS certificate (when TLS or WSS listeners exist).
    pub tls: Option<Arc<super::tls::CertStore>>,
    pub captures: Arc<super::capture::Captures>,
    /// The workers (active calls live in their cores).
    pub workers: Arc<super::RtShared>,
    /// Longest capture that may be requested.
    pub capture_max: std::time::Duration,
    /// The SFU, when enabled.
    pub sfu: Option<sfu::rt::SfuHandle>,
}

/// A call event with the wall-clock time it happened (Unix seconds).
#[derive(Debug, Clone, Serialize)]
pub struct StampedEvent {
    pub at: f64,
    #[serde(flatten)]
    pub event: crate::media::anchor::CallEvent,
}

/// An API error: `{"error": ..., "detail": ...}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    /// Short machine-readable reason, e.g. `not_found`.
    error: String,
    /// What exactly was wrong.
    detail: serde_json::Value,
    #[serde(skip)]
    #[schema(ignore)]
    status: u16,
}

impl ApiError {
    fn new(status: StatusCode, error: &str, detail: impl Into<serde_json::Value>) -> ApiError {
        ApiError { error: error.into(), detail: detail.into(), status: status.as_u16() }
    }
    fn bad_request(detail: impl Into<serde_json::Value>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }
    fn not_found(detail: impl Into<serde_json::Value>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
    fn conflict(detail: impl Into<serde_json::Value>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", detail)
    }
    fn store(e: crate::store::StoreError) -> ApiError {
        tracing::error!(error = %e, "admin API: store");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(self)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad_request(r.body_text())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body that must be an object (serde would also take an array for a
/// struct), decoded into `T`.
fn object<T: serde::de::DeserializeOwned>(body: Result<Json<serde_json::Value>, JsonRejection>) -> ApiResult<T> {
    let Json(v) = body?;
    if !v.is_object() {
        return Err(ApiError::bad_request("expected a JSON object"));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `sip:`/`sips:` URI of a next hop, in exactly the form the OpenAPI pattern states.
const UPSTREAM_URI: &str = r"^sips?:(\[(([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,7}:|([0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,5}(:[0-9A-Fa-f]{1,4}){1,2}|([0-9A-Fa-f]{1,4}:){1,4}(:[0-9A-Fa-f]{1,4}){1,3}|([0-9A-Fa-f]{1,4}:){1,3}(:[0-9A-Fa-f]{1,4}){1,4}|([0-9A-Fa-f]{1,4}:){1,2}(:[0-9A-Fa-f]{1,4}){1,5}|[0-9A-Fa-f]{1,4}:(:[0-9A-Fa-f]{1,4}){1,6}|:((:[0-9A-Fa-f]{1,4}){1,7}|:))\]|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*)(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0))?(;(transport=([uU][dD][pP]|[tT][cC][pP]|[tT][lL][sS]|[wW][sS][sS]?)|[A-SU-Za-su-z0-9._-][A-Za-z0-9._-]*(=[A-Za-z0-9._-]+)?))*$";
/// An IP-address target URI, in exactly the form the OpenAPI pattern states.
const TARGET_URI: &str = r"^sips?:(\[(([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,7}:|([0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,5}(:[0-9A-Fa-f]{1,4}){1,2}|([0-9A-Fa-f]{1,4}:){1,4}(:[0-9A-Fa-f]{1,4}){1,3}|([0-9A-Fa-f]{1,4}:){1,3}(:[0-9A-Fa-f]{1,4}){1,4}|([0-9A-Fa-f]{1,4}:){1,2}(:[0-9A-Fa-f]{1,4}){1,5}|[0-9A-Fa-f]{1,4}:(:[0-9A-Fa-f]{1,4}){1,6}|:((:[0-9A-Fa-f]{1,4}){1,7}|:))\]|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0))?(;(transport=([uU][dD][pP]|[tT][cC][pP]|[tT][lL][sS]|[wW][sS][sS]?)|[A-SU-Za-su-z0-9._-][A-Za-z0-9._-]*(=[A-Za-z0-9._-]+)?))*$";

fn valid_upstream_uri(u: &str) -> bool {
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(UPSTREAM_URI).ok()).as_ref().is_some_and(|r| r.is_match(u))
}

fn valid_target_uri(u: &str) -> bool {
    static RE: std::sync::OnceLock<Option<regex::Regex>> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(TARGET_URI).ok()).as_ref().is_some_and(|r| r.is_match(u))
}

// ------------------------------------------------------------------ health

#[derive(Serialize, ToSchema)]
struct Health {
    status: &'static str,
    users: usize,
    bindings: usize,
}

/// Liveness (no token needed).
#[utoipa::path(get, path = "/health", tag = "system", responses((status = 200, body = Health)))]
async fn health(State(st): State<ApiState>) -> Json<Health> {
    Json(Health { status: "ok", users: st.shared.auth.user_count(), bindings: st.shared.location.len() })
}

/// Prometheus text exposition (no token needed by default).
#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(st): State<ApiState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], st.prometheus.render())
}

// ------------------------------------------------------------------ users

/// A user as the API shows it (never a password or hash).
#[derive(Serialize, ToSchema)]
struct User {
    name: String,
    /// `user@domain`.
    aor: String,
    max_contacts: Option<u32>,
    /// `config` (from the configuration file, read-only here) or `api`.
    source: &'static str,
    /// Devices registered now.
    registrations: usize,
}

/// A new user. Give `password` (only its HA1 hashes are stored) or `ha1_md5` and/or
/// `ha1_sha256`; a user created without any cannot register until one is set.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUser {
    /// User part of the address of record.
    #[schema(pattern = r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/]{1,64}$")]
    name: String,
    #[serde(default, deserialize_with = "present")]
    #[schema(min_length = 1, nullable = false)]
    password: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", nullable = false)]
    ha1_md5: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[0-9a-fA-F]{64}$", nullable = false)]
    ha1_sha256: Option<String>,
    /// Most devices registered at once (default: `registrar.max_contacts`).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000, nullable = false)]
    max_contacts: Option<u32>,
}

/// New credentials and/or device limit of a user (fields left out keep their value).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UserInput {
    #[serde(default, deserialize_with = "present")]
    #[schema(min_length = 1, nullable = false)]
    password: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[0-9a-fA-F]{32}$", nullable = false)]
    ha1_md5: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[0-9a-fA-F]{64}$", nullable = false)]
    ha1_sha256: Option<String>,
    /// Most devices registered at once (default: `registrar.max_contacts`).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000, nullable = false)]
    max_contacts: Option<u32>,
}

/// An optional field that, when present, must not be `null` (the schema says string).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// A JSON integer given as `3` or `3.0` (both are integers in JSON Schema).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let x = f64::deserialize(d)?;
    if x.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&x) {
        Ok(Some(x as u32))
    } else {
        Err(serde::de::Error::custom(format!("expected a whole number, got {x}")))
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c))
}

fn user_view(st: &ApiState, name: &str) -> Option<User> {
    let c = st.shared.auth.user(name)?;
    let aor = crate::registrar::aor_key(&st.shared, name);
    #[allow(clippy::disallowed_methods)]
    let now = std::time::Instant::now();
    Some(User {
        name: name.to_string(),
        registrations: st.shared.location.lookup(now, &aor).len(),
        aor,
        max_contacts: c.max_contacts.map(|m| m as u32),
        source: if st.static_users.contains(name) { "config" } else { "api" },
    })
}

/// The stored form of a user from API input. Without any credential the existing ones are
/// kept (`old`), or the user is created without credentials: it exists but cannot
/// authenticate until a password is set.
fn credentials(st: &ApiState, name: &str, u: &UserInput, old: Option<&Credentials>) -> ApiResult<StoredUser> {
    let hex = |v: &Option<String>, len: usize, key: &str| -> ApiResult<Option<String>> {
        match v {
            Some(h) if h.len() != len || !h.bytes().all(|c| c.is_ascii_hexdigit()) => {
                Err(ApiError::bad_request(format!("{key}: expected {len} hex digits")))
            }
            Some(h) => Ok(Some(h.to_ascii_lowercase())),
            None => Ok(None),
        }
    };
    let (mut md5, mut sha) = (hex(&u.ha1_md5, 32, "ha1_md5")?, hex(&u.ha1_sha256, 64, "ha1_sha256")?);
    if let Some(p) = &u.password {
        if p.is_empty() {
            return Err(ApiError::bad_request("password: must not be empty"));
        }
        let c = Credentials::from_password(name, st.shared.auth.realm(), p);
        md5 = c.ha1_md5;
        sha = c.ha1_sha256;
    }
    let mut max_contacts = u.max_contacts;
    if md5.is_none()
        && sha.is_none()
        && let Some(o) = old
    {
        md5 = o.ha1_md5.clone();
        sha = o.ha1_sha256.clone();
    }
    if max_contacts.is_none() {
        max_contacts = old.and_then(|o| o.max_contacts).map(|m| m as u32);
    }
    if max_contacts.is_some_and(|m| !(1..=1000).contains(&m)) {
        return Err(ApiError::bad_request("max_contacts: expected 1 to 1000"));
    }
    Ok(StoredUser { name: name.to_string(), ha1_md5: md5, ha1_sha256: sha, max_contacts })
}

fn apply_user(st: &ApiState, u: &StoredUser) {
    st.shared.auth.set_user(
        &u.name,
        Credentials { ha1_md5: u.ha1_md5.clone(), ha1_sha256: u.ha1_sha256.clone(), max_contacts: u.max_contacts.map(|m| m as usize) },
    );
}

/// All users.
#[utoipa::path(get, path = "/api/v1/users", tag = "users", security(("token" = [])),
    responses((status = 200, body = [User]), (status = 401, body = ApiError)))]
async fn list_users(State(st): State<ApiState>) -> Json<Vec<User>> {
    Json(st.shared.auth.user_names().iter().filter_map(|n| user_view(&st, n)).collect())
}

/// Creates a user; it can register at once.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", security(("token" = [])), request_body = NewUser,
    responses((status = 201, body = User), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 409, body = ApiError)))]
async fn create_user(
    State(st): State<ApiState>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<User>)> {
    let NewUser { name, password, ha1_md5, ha1_sha256, max_contacts } = object(body)?;
    let u = UserInput { password, ha1_md5, ha1_sha256, max_contacts };
    if !valid_name(&name) {
        return Err(ApiError::bad_request(format!("name: {name:?} is not a SIP user name")));
    }
    if st.shared.auth.user(&name).is_some() {
        return Err(ApiError::conflict(format!("user {name:?} exists")));
    }
    let su = credentials(&st, &name, &u, None)?;
    st.store.put_user(&su).map_err(ApiError::store)?;
    apply_user(&st, &su);
    let view = user_view(&st, &name).ok_or_else(|| ApiError::not_found(name.clone()))?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/users/{name}", tag = "users", security(("token" = [])),
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, body = User), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn get_user(State(st): State<ApiState>, Path(name): Path<String>) -> ApiResult<Json<User>> {
    user_view(&st, &name).map(Json).ok_or_else(|| ApiError::not_found(format!("no user {name:?}")))
}

/// Changes a user's credentials or device limit.
#[utoipa::path(put, path = "/api/v1/users/{name}", tag = "users", security(("token" = [])), request_body = UserInput,
    params(("name" = String, Path, description = "user name")),
    responses((status = 200, body = User), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn put_user(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> ApiResult<Json<User>> {
    let u: UserInput = object(body)?;
    let Some(old) = st.shared.auth.user(&name) else {
        return Err(ApiError::not_found(format!("no user {name:?}")));
    };
    if st.static_users.contains(&name) {
        return Err(ApiError::conflict(format!("user {name:?} is defined in the configuration file")));
    }
    let su = credentials(&st, &name, &u, Some(&old))?;
    st.store.put_user(&su).map_err(ApiError::store)?;
    apply_user(&st, &su);
    user_view(&st, &name).map(Json).ok_or_else(|| ApiError::not_found(name.clone()))
}

/// Deletes a user and its registrations.
#[utoipa::path(delete, path = "/api/v1/users/{name}", tag = "users", security(("token" = [])),
    params(("name" = String, Path, description = "user name")),
    responses((status = 204), (status = 401, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete_user(State(st): State<ApiState>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    if st.shared.auth.user(&name).is_none() {
        return Err(ApiError::not_found(format!("no user {name:?}")));
    }
    if st.static_users.contains(&name) {
        return Err(ApiError::conflict(format!("user {name:?} is defined in the configuration file")));
    }
    let aor = crate::registrar::aor_key(&st.shared, &name);
    st.store.delete_user(&name, &aor).map_err(ApiError::store)?;
    st.shared.auth.remove_user(&name);
    #[allow(clippy::disallowed_methods)]
    let now = std::time::Instant::now();
    st.shared.location.update(now, &aor, |v| v.clear());
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ registrations

/// One registered device.
#[derive(Serialize, ToSchema)]
struct Registration {
    user: String,
    aor: String,
    /// Contact URI; pass it to DELETE to log this device out.
    contact: String,
    /// Seconds left.
    expires_in: u64,
    /// `sip.instance` (RFC 5626) if the device sent one.
    instance: Option<String>,
    /// Transport and address it registered from.
    transport: String,
    source: String,
    user_agent_call_id: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RegistrationFilter {
    /// Only this user's devices.
    user: Option<String>,
}

/// Registered devices (all, or one user's).
#[utoipa::path(get, path = "/api/v1/registrations", tag = "registrations", security(("token" = [])), params(RegistrationFilter),
    responses((status = 200, body = [Registration]), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
async fn list_registrations(
    State(st): State<ApiState>,
    q: Result<Query<RegistrationFilter>, QueryRejection>,
) -> ApiResult<Json<Vec<Registration>>> {
    let Query(f) = q?;
    #[allow(clippy::disallowed_methods)]
    let now = std::time::Instant::now();
    let suffix = format!("@{}", st.shared.domain.to_ascii_lowercase());
    let mut out = Vec::new();
    let mut all = st.shared.location.all(now);
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for (aor, bindings) in all {
        let user = aor.strip_suffix(&suffix).unwrap_or(&aor).to_string();
        if f.user.as_ref().is_some_and(|u| *u != user) {
            continue;
        }
        for b in bindings {
            out.push(Registration {
                user: user.clone(),
                aor: aor.clone(),
                contact: b.uri.to_string(),
                expires_in: b.expires.saturating_duration_since(now).as_secs(),
                instance: b.instance.as_deref().map(String::from),
                transport: b.source.transport.uri_param().to_string(),
                source: b.source.addr.to_string(),
                user_agent_call_id: b.call_id.to_string(),
            });
        }
    }
    Ok(Json(out))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct LogoutQuery {
    /// The device's Contact URI (as listed); without it every device of the user is logged out.
    contact: Option<String>,
}

/// Forced logout: removes one device's registration (or all of the user's).
#[utoipa::path(delete, path = "/api/v1/registrations/{user}", tag = "registrations", security(("token" = [])),
    params(("user" = String, Path, description = "user name"), LogoutQuery),
    responses((status = 204), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn logout(
    State(st): State<ApiState>,
    Path(user): Path<String>,
    q: Result<Query<LogoutQuery>, QueryRejection>,
) -> ApiResult<StatusCode> {
    let Query(q) = q?;
    if st.shared.auth.user(&user).is_none() {
        return Err(ApiError::not_found(format!("no user {user:?}")));
    }
    let aor = crate::registrar::aor_key(&st.shared, &user);
    let clock = wall_clock();
    let removed = st.shared.location.update(clock.instant, &aor, |v| {
        let before = v.len();
        match &q.contact {
            Some(c) => v.retain(|b| !crate::location::uri_eq(&b.uri, c)),
            None => v.clear(),
        }
        before - v.len()
    });
    if removed == 0 {
        return Err(ApiError::not_found(match q.contact {
            Some(c) => format!("user {user:?} has no registration with contact {c:?}"),
            None => format!("user {user:?} has no registration"),
        }));
    }
    let bindings = st.shared.location.lookup(clock.instant, &aor);
    if bindings.is_empty() {
        st.captures.user_logged_out(&user);
    }
    st.store.write(clock, &[StoreOp::Bindings { aor, bindings }]).map_err(ApiError::store)?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ call log

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct CallLogQuery {
    /// Calls from or to this user.
    user: Option<String>,
    /// Unix seconds: calls that ended at or after this time.
    #[param(minimum = 0)]
    since: Option<f64>,
    /// Unix seconds: calls that ended before this time.
    #[param(minimum = 0)]
    until: Option<f64>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
    /// Only calls of this type (seen from `user` when given): `inbound`, `outbound`, `missed`.
    #[param(pattern = "^(inbound|outbound|missed)$")]
    direction: Option<String>,
}

/// Finished calls, newest first: parties, end reason, durations and per-direction media
/// quality (packets, loss, jitter, RTT, MOS).
#[utoipa::path(get, path = "/api/v1/calls/log", tag = "calls", security(("token" = [])), params(CallLogQuery),
    responses((status = 200, description = "call records", body = [Object]), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
async fn call_log(State(st): State<ApiState>, q: Result<Query<CallLogQuery>, QueryRejection>) -> ApiResult<Json<Vec<serde_json::Value>>> {
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request("limit: expected 1 to 10000"));
    }
    let limit = limit as usize;
    for (k, v) in [("since", q.since), ("until", q.until)] {
        if v.is_some_and(|x| !x.is_finite() || x < 0.0) {
            return Err(ApiError::bad_request(format!("{k}: expected Unix seconds")));
        }
    }
    if let Some(d) = &q.direction
        && !matches!(d.as_str(), "inbound" | "outbound" | "missed")
    {
        return Err(ApiError::bad_request("direction: expected inbound, outbound or missed"));
    }
    // The type is known only once the view is computed: read more, then cut.
    let fetch = if q.direction.is_some() { 10_000 } else { limit };
    let rows = st
        .store
        .call_records(&CallQuery { user: q.user.clone(), since: q.since, until: q.until, limit: fetch })
        .map_err(ApiError::store)?;
    let rows = rows
        .into_iter()
        .map(|r| with_phone_view(r, q.user.as_deref()))
        .filter(|r| q.direction.as_deref().is_none_or(|d| r["phone"]["type"] == d))
        .take(limit)
        .collect();
    Ok(Json(rows))
}

/// Adds the fields a phone's call history shows (`phone`), seen from `user` when given:
/// `type` inbound/outbound/missed (internal calls count as outbound for the caller),
/// `name_or_number` of the other party, `line` (the number called on inbound, the caller
/// ID presented on outbound), `start` (Unix seconds), `duration_secs` (talk time), and the
/// quality of what this side received: `mos`, `jitter_ms`, `loss_pct`, `rtt_ms`.
fn with_phone_view(mut r: serde_json::Value, user: Option<&str>) -> serde_json::Value {
    let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
    let (caller, called, direction) = (s("caller"), s("called"), s("direction"));
    let caller_name = r["caller_name"].as_str().map(String::from);
    let outbound = match user {
        Some(u) => caller == u,
        None => direction == "outbound" || direction == "internal",
    };
    let talk = r["talk_secs"].as_f64().unwrap_or(0.0);
    let kind = if outbound {
        "outbound"
    } else if talk > 0.0 {
        "inbound"
    } else {
        "missed"
    };
    let (other, line) =
        if outbound { (called.clone(), caller.clone()) } else { (caller_name.clone().unwrap_or(caller.clone()), called.clone()) };
    let ended = r["ended_at"].as_f64().unwrap_or(0.0);
    let received = if outbound { &r["media"][0]["from_b"] } else { &r["media"][0]["from_a"] };
    let q = |k: &str| received.get(k).cloned().unwrap_or(serde_json::Value::Null);
    let view = serde_json::json!({
        "type": kind,
        "name_or_number": other,
        "line": line,
        "start": ended - r["duration_secs"].as_f64().unwrap_or(0.0),
        "duration_secs": talk,
        "mos": q("mos"),
        "jitter_ms": q("jitter_ms"),
        "loss_pct": q("loss_pct"),
        "rtt_ms": q("rtt_ms"),
    });
    if let Some(o) = r.as_object_mut() {
        o.insert("phone".into(), view);
    }
    r
}

// ------------------------------------------------------------------ upstreams

/// An upstream (trunk): calls to other domains go to the preferred one (lowest priority)
/// unless a route says otherwise.
#[derive(Serialize, ToSchema)]
struct UpstreamView {
    name: String,
    uri: String,
    priority: u32,
    /// First target (transport and address), or `unresolved`.
    next_hop: String,
    anchor_media: Option<bool>,
    srtp: Option<String>,
    /// `config` (read-only here) or `api`.
    source: &'static str,
    /// `true` for the one taking calls no route claims.
    preferred: bool,
    /// The host name looked up by DNS (RFC 3263), if the URI has one.
    dns_name: Option<String>,
    /// Seconds the cached DNS records stay valid.
    dns_ttl_secs: Option<f64>,
    selection: &'static str,
    max_calls: Option<u32>,
    max_cps: Option<f64>,
    /// Calls in progress through it.
    calls: u32,
    trusted: bool,
    auth_user: Option<String>,
    probe_interval_ms: Option<u64>,
    /// Every target with its state, in SRV/static order.
    targets: Vec<TargetView>,
}

/// One target of an upstream.
#[derive(Serialize, ToSchema)]
struct TargetView {
    /// Transport and address.
    target: String,
    /// SRV priority and weight (static targets: position, 0).
    priority: u16,
    weight: u16,
    /// `false` while it is skipped after a failure or down by probes.
    usable: bool,
    /// Down by OPTIONS probes.
    probe_down: bool,
    /// Seconds until it is tried again after a failure.
    blocked_for_secs: Option<f64>,
    /// OPTIONS round-trip time (EWMA), ms.
    rtt_ms: Option<f64>,
}

/// An IP-address target URI.
#[derive(Deserialize, ToSchema)]
#[schema(value_type = String, pattern = r"^sips?:(\[(([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,7}:|([0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,5}(:[0-9A-Fa-f]{1,4}){1,2}|([0-9A-Fa-f]{1,4}:){1,4}(:[0-9A-Fa-f]{1,4}){1,3}|([0-9A-Fa-f]{1,4}:){1,3}(:[0-9A-Fa-f]{1,4}){1,4}|([0-9A-Fa-f]{1,4}:){1,2}(:[0-9A-Fa-f]{1,4}){1,5}|[0-9A-Fa-f]{1,4}:(:[0-9A-Fa-f]{1,4}){1,6}|:((:[0-9A-Fa-f]{1,4}){1,7}|:))\]|(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3})(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0))?(;(transport=([uU][dD][pP]|[tT][cC][pP]|[tT][lL][sS]|[wW][sS][sS]?)|[A-SU-Za-su-z0-9._-][A-Za-z0-9._-]*(=[A-Za-z0-9._-]+)?))*$")]
struct TargetUri(String);

/// A new upstream.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUpstream {
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    name: String,
    /// `sip:` or `sips:` URI of the trunk: a host name (resolved by NAPTR/SRV/A, RFC 3263)
    /// or an address, e.g. `sip:10.0.0.5:5060;transport=tcp`.
    #[schema(
        pattern = r"^sips?:(\[(([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,7}:|([0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,5}(:[0-9A-Fa-f]{1,4}){1,2}|([0-9A-Fa-f]{1,4}:){1,4}(:[0-9A-Fa-f]{1,4}){1,3}|([0-9A-Fa-f]{1,4}:){1,3}(:[0-9A-Fa-f]{1,4}){1,4}|([0-9A-Fa-f]{1,4}:){1,2}(:[0-9A-Fa-f]{1,4}){1,5}|[0-9A-Fa-f]{1,4}:(:[0-9A-Fa-f]{1,4}){1,6}|:((:[0-9A-Fa-f]{1,4}){1,7}|:))\]|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*)(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0))?(;(transport=([uU][dD][pP]|[tT][cC][pP]|[tT][lL][sS]|[wW][sS][sS]?)|[A-SU-Za-su-z0-9._-][A-Za-z0-9._-]*(=[A-Za-z0-9._-]+)?))*$"
    )]
    uri: String,
    /// Lower is preferred (default 50: ahead of the configuration file's).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 100000, nullable = false)]
    priority: Option<u32>,
    #[serde(default, deserialize_with = "present_bool")]
    #[schema(nullable = false)]
    anchor_media: Option<bool>,
    /// SRTP policy of the leg towards it.
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^(keep|plain|sdes)$", nullable = false)]
    srtp: Option<String>,
    /// More targets (IP-address URIs) tried after the URI's.
    #[serde(default)]
    #[schema(max_items = 16, nullable = false)]
    targets: Vec<TargetUri>,
    /// How a call picks among the targets.
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^(priority|weighted|round_robin|call_id_hash|least_latency)$", nullable = false)]
    selection: Option<String>,
    /// A target with no provisional response to an INVITE within this time is skipped.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 50, maximum = 180000, nullable = false)]
    invite_timeout_ms: Option<u32>,
    /// How long a failed target is skipped (a 503's Retry-After wins).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 86400, nullable = false)]
    failover_block_secs: Option<u32>,
    /// Calls in progress at most (503 beyond).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 1000000, nullable = false)]
    max_calls: Option<u32>,
    /// New calls per second at most (503 beyond).
    #[serde(default, deserialize_with = "present_f64")]
    #[schema(value_type = Option<f64>, exclusive_minimum = 0, maximum = 100000, nullable = false)]
    max_cps: Option<f64>,
    /// P-Asserted-Identity and Privacy are kept towards it (RFC 3325 trust domain).
    #[serde(default, deserialize_with = "present_bool")]
    #[schema(nullable = false)]
    trusted: Option<bool>,
    /// Digest user name for 401/407 from the trunk (with `auth_password`).
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[A-Za-z0-9_.+-]{1,64}$", nullable = false)]
    auth_user: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[ -~]{1,128}$", nullable = false)]
    auth_password: Option<String>,
    /// OPTIONS probe interval (0: no probing).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 3600000, nullable = false)]
    probe_interval_ms: Option<u32>,
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 50, maximum = 60000, nullable = false)]
    probe_timeout_ms: Option<u32>,
    /// Down after this many failed probes in a row.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 100, nullable = false)]
    probe_down_after: Option<u32>,
    /// Up after this many good probes in a row.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 100, nullable = false)]
    probe_up_after: Option<u32>,
}

/// The settings of an upstream (on update: all of them).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UpstreamInput {
    /// `sip:` or `sips:` URI of the trunk (host name or address).
    #[schema(
        pattern = r"^sips?:(\[(([0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,7}:|([0-9A-Fa-f]{1,4}:){1,6}:[0-9A-Fa-f]{1,4}|([0-9A-Fa-f]{1,4}:){1,5}(:[0-9A-Fa-f]{1,4}){1,2}|([0-9A-Fa-f]{1,4}:){1,4}(:[0-9A-Fa-f]{1,4}){1,3}|([0-9A-Fa-f]{1,4}:){1,3}(:[0-9A-Fa-f]{1,4}){1,4}|([0-9A-Fa-f]{1,4}:){1,2}(:[0-9A-Fa-f]{1,4}){1,5}|[0-9A-Fa-f]{1,4}:(:[0-9A-Fa-f]{1,4}){1,6}|:((:[0-9A-Fa-f]{1,4}){1,7}|:))\]|[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*)(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}|0))?(;(transport=([uU][dD][pP]|[tT][cC][pP]|[tT][lL][sS]|[wW][sS][sS]?)|[A-SU-Za-su-z0-9._-][A-Za-z0-9._-]*(=[A-Za-z0-9._-]+)?))*$"
    )]
    uri: String,
    /// Lower is preferred (default 50: ahead of the configuration file's).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 100000, nullable = false)]
    priority: Option<u32>,
    #[serde(default, deserialize_with = "present_bool")]
    #[schema(nullable = false)]
    anchor_media: Option<bool>,
    /// SRTP policy of the leg towards it.
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^(keep|plain|sdes)$", nullable = false)]
    srtp: Option<String>,
    /// More targets (IP-address URIs) tried after the URI's.
    #[serde(default)]
    #[schema(max_items = 16, nullable = false)]
    targets: Vec<TargetUri>,
    /// How a call picks among the targets.
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^(priority|weighted|round_robin|call_id_hash|least_latency)$", nullable = false)]
    selection: Option<String>,
    /// A target with no provisional response to an INVITE within this time is skipped.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 50, maximum = 180000, nullable = false)]
    invite_timeout_ms: Option<u32>,
    /// How long a failed target is skipped (a 503's Retry-After wins).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 86400, nullable = false)]
    failover_block_secs: Option<u32>,
    /// Calls in progress at most (503 beyond).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 1000000, nullable = false)]
    max_calls: Option<u32>,
    /// New calls per second at most (503 beyond).
    #[serde(default, deserialize_with = "present_f64")]
    #[schema(value_type = Option<f64>, exclusive_minimum = 0, maximum = 100000, nullable = false)]
    max_cps: Option<f64>,
    /// P-Asserted-Identity and Privacy are kept towards it (RFC 3325 trust domain).
    #[serde(default, deserialize_with = "present_bool")]
    #[schema(nullable = false)]
    trusted: Option<bool>,
    /// Digest user name for 401/407 from the trunk (with `auth_password`).
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[A-Za-z0-9_.+-]{1,64}$", nullable = false)]
    auth_user: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[ -~]{1,128}$", nullable = false)]
    auth_password: Option<String>,
    /// OPTIONS probe interval (0: no probing).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 3600000, nullable = false)]
    probe_interval_ms: Option<u32>,
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 50, maximum = 60000, nullable = false)]
    probe_timeout_ms: Option<u32>,
    /// Down after this many failed probes in a row.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 100, nullable = false)]
    probe_down_after: Option<u32>,
    /// Up after this many good probes in a row.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 100, nullable = false)]
    probe_up_after: Option<u32>,
}

impl UpstreamInput {
    fn options(&self) -> crate::trunk::TrunkOptions {
        crate::trunk::TrunkOptions {
            targets: self.targets.iter().map(|t| t.0.clone()).collect(),
            selection: self.selection.clone(),
            invite_timeout_ms: self.invite_timeout_ms.map(u64::from),
            failover_block_secs: self.failover_block_secs.map(u64::from),
            max_calls: self.max_calls,
            max_cps: self.max_cps,
            trusted: self.trusted,
            auth_user: self.auth_user.clone(),
            auth_password: self.auth_password.clone(),
            probe_interval_ms: self.probe_interval_ms.map(u64::from),
            probe_timeout_ms: self.probe_timeout_ms.map(u64::from),
            probe_down_after: self.probe_down_after,
            probe_up_after: self.probe_up_after,
        }
    }
}

fn present_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    bool::deserialize(d).map(Some)
}

fn present_f64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    f64::deserialize(d).map(Some)
}

fn view_upstream(sh: &crate::core::Shared, u: &crate::core::Upstream, preferred: bool) -> UpstreamView {
    #[allow(clippy::disallowed_methods)]
    let now = std::time::Instant::now();
    let resolved = u.dns.as_ref().and_then(|q| sh.resolved(q, now));
    let records = u.all_records(resolved.as_deref());
    let health = sh.health.lock().unwrap_or_else(|e| e.into_inner());
    let targets = records
        .iter()
        .map(|r| {
            let t = r.target;
            TargetView {
                target: format!("{} {}", t.transport.uri_param(), t.addr),
                priority: r.priority,
                weight: r.weight,
                usable: health.usable(&t, now),
                probe_down: health.probe_down(&t),
                blocked_for_secs: health.blocked_for(&t, now).map(|d| d.as_secs_f64()),
                rtt_ms: health.rtt(&t).map(|d| d.as_secs_f64() * 1000.0),
            }
        })
        .collect();
    UpstreamView {
        targets,
        name: u.name.clone(),
        uri: u.uri.clone(),
        priority: u.priority,
        next_hop: records
            .first()
            .map(|r| format!("{} {}", r.target.transport.uri_param(), r.target.addr))
            .unwrap_or_else(|| "unresolved".into()),
        anchor_media: u.anchor_media,
        srtp: u.srtp.map(|s| format!("{s:?}").to_ascii_lowercase()),
        source: u.source,
        preferred,
        dns_name: u.dns.as_ref().map(|q| q.host.clone()),
        dns_ttl_secs: resolved.map(|r| r.valid_until.saturating_duration_since(now).as_secs_f64()),
        selection: u.selection.name(),
        max_calls: u.max_calls,
        max_cps: u.max_cps,
        calls: sh.loads.calls(&u.name),
        trusted: u.trusted,
        auth_user: u.credentials.as_ref().map(|c| c.0.clone()),
        probe_interval_ms: u.probe.map(|p| p.interval.as_millis() as u64),
    }
}

/// Builds an upstream from stored or API data (host names are resolved by the DNS task).
pub fn make_upstream(s: &crate::store::StoredUpstream) -> Result<crate::core::Upstream, String> {
    if !valid_upstream_uri(&s.uri) {
        return Err(format!("uri: {:?} is not a sip:/sips: URI of a host name or IP address", s.uri));
    }
    if let Some(t) = s.options.targets.iter().find(|t| !valid_target_uri(t)) {
        return Err(format!("targets: {t:?} is not a sip:/sips: URI of an IP address"));
    }
    let srtp = match s.srtp.as_deref() {
        None => None,
        Some("keep") => Some(crate::config::SrtpPolicy::Keep),
        Some("plain") => Some(crate::config::SrtpPolicy::Plain),
        Some("sdes") => Some(crate::config::SrtpPolicy::Sdes),
        Some(x) => return Err(format!("srtp: {x:?} is not keep, plain or sdes")),
    };
    crate::trunk::Upstream::build(&s.name, s.priority, "api", &s.uri, s.anchor_media, srtp, &s.options)
}

/// All upstreams, preferred first.
#[utoipa::path(get, path = "/api/v1/upstreams", tag = "upstreams", security(("token" = [])),
    responses((status = 200, body = [UpstreamView]), (status = 401, body = ApiError)))]
async fn list_upstreams(State(st): State<ApiState>) -> Json<Vec<UpstreamView>> {
    Json(st.shared.upstream_list().iter().enumerate().map(|(i, u)| view_upstream(&st.shared, u, i == 0)).collect())
}

async fn save_upstream(st: &ApiState, name: String, u: UpstreamInput) -> ApiResult<UpstreamView> {
    if u.priority.is_some_and(|p| p > 100_000) {
        return Err(ApiError::bad_request("priority: expected 0 to 100000"));
    }
    // The ranges the OpenAPI schema states.
    let ranges: [(&str, Option<u32>, u32, u32); 7] = [
        ("invite_timeout_ms", u.invite_timeout_ms, 50, 180_000),
        ("failover_block_secs", u.failover_block_secs, 0, 86_400),
        ("max_calls", u.max_calls, 0, 1_000_000),
        ("probe_interval_ms", u.probe_interval_ms, 0, 3_600_000),
        ("probe_timeout_ms", u.probe_timeout_ms, 50, 60_000),
        ("probe_down_after", u.probe_down_after, 1, 100),
        ("probe_up_after", u.probe_up_after, 1, 100),
    ];
    for (key, v, lo, hi) in ranges {
        if let Some(v) = v
            && !(lo..=hi).contains(&v)
        {
            return Err(ApiError::bad_request(format!("{key}: expected {lo} to {hi}, got {v}")));
        }
    }
    if u.max_cps.is_some_and(|c| !(c > 0.0 && c <= 100_000.0)) {
        return Err(ApiError::bad_request("max_cps: expected more than 0, at most 100000"));
    }
    if u.targets.len() > 16 {
        return Err(ApiError::bad_request("targets: at most 16"));
    }
    if u.auth_user
        .as_ref()
        .is_some_and(|a| a.is_empty() || a.len() > 64 || !a.chars().all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c)))
    {
        return Err(ApiError::bad_request("auth_user: expected 1 to 64 of A-Z a-z 0-9 _ . + -"));
    }
    if u.auth_password.as_ref().is_some_and(|p| p.is_empty() || p.len() > 128 || !p.chars().all(|c| (' '..='~').contains(&c))) {
        return Err(ApiError::bad_request("auth_password: expected 1 to 128 printable ASCII characters"));
    }
    if let Some(x) = &u.selection
        && crate::resolve::Selection::parse(x).is_none()
    {
        return Err(ApiError::bad_request(format!(
            "selection: {x:?} is not priority, weighted, round_robin, call_id_hash or least_latency"
        )));
    }
    let options = u.options();
    let s = crate::store::StoredUpstream {
        name: name.clone(),
        uri: u.uri,
        priority: u.priority.unwrap_or(50),
        anchor_media: u.anchor_media,
        srtp: u.srtp,
        options,
    };
    let up = make_upstream(&s).map_err(|e| ApiError::bad_request(format!("upstream {name:?}: {e}")))?;
    st.store.put_upstream(&s).map_err(ApiError::store)?;
    st.shared.set_upstream(up);
    let list = st.shared.upstream_list();
    list.iter()
        .enumerate()
        .find(|(_, x)| x.name == name)
        .map(|(i, x)| view_upstream(&st.shared, x, i == 0))
        .ok_or_else(|| ApiError::not_found(name))
}

/// Adds an upstream; the next call uses it if it is the preferred one.
#[utoipa::path(post, path = "/api/v1/upstreams", tag = "upstreams", security(("token" = [])), request_body = NewUpstream,
    responses((status = 201, body = UpstreamView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 409, body = ApiError)))]
async fn create_upstream(
    State(st): State<ApiState>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<UpstreamView>)> {
    let n: NewUpstream = object(body)?;
    let name = n.name;
    let u = UpstreamInput {
        uri: n.uri,
        priority: n.priority,
        anchor_media: n.anchor_media,
        srtp: n.srtp,
        targets: n.targets,
        selection: n.selection,
        invite_timeout_ms: n.invite_timeout_ms,
        failover_block_secs: n.failover_block_secs,
        max_calls: n.max_calls,
        max_cps: n.max_cps,
        trusted: n.trusted,
        auth_user: n.auth_user,
        auth_password: n.auth_password,
        probe_interval_ms: n.probe_interval_ms,
        probe_timeout_ms: n.probe_timeout_ms,
        probe_down_after: n.probe_down_after,
        probe_up_after: n.probe_up_after,
    };
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Err(ApiError::bad_request(format!("name: {name:?}: expected letters, digits, '_', '.', '-'")));
    }
    if st.shared.upstream_list().iter().any(|x| x.name == name) {
        return Err(ApiError::conflict(format!("upstream {name:?} exists")));
    }
    Ok((StatusCode::CREATED, Json(save_upstream(&st, name, u).await?)))
}

/// One upstream.
#[utoipa::path(get, path = "/api/v1/upstreams/{name}", tag = "upstreams", security(("token" = [])),
    params(("name" = String, Path, description = "upstream name")),
    responses((status = 200, body = UpstreamView), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn get_upstream(State(st): State<ApiState>, Path(name): Path<String>) -> ApiResult<Json<UpstreamView>> {
    let list = st.shared.upstream_list();
    list.iter()
        .enumerate()
        .find(|(_, x)| x.name == name)
        .map(|(i, x)| Json(view_upstream(&st.shared, x, i == 0)))
        .ok_or_else(|| ApiError::not_found(format!("no upstream {name:?}")))
}

/// Changes an upstream created through the API (applied to the next call).
#[utoipa::path(put, path = "/api/v1/upstreams/{name}", tag = "upstreams", security(("token" = [])), request_body = UpstreamInput,
    params(("name" = String, Path, description = "upstream name")),
    responses((status = 200, body = UpstreamView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn put_upstream(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> ApiResult<Json<UpstreamView>> {
    let u: UpstreamInput = object(body)?;
    let Some(cur) = st.shared.upstream_list().iter().find(|x| x.name == name).cloned() else {
        return Err(ApiError::not_found(format!("no upstream {name:?}")));
    };
    if cur.source == "config" {
        return Err(ApiError::conflict(format!("upstream {name:?} is defined in the configuration file")));
    }
    Ok(Json(save_upstream(&st, name, u).await?))
}

/// Deletes an upstream created through the API.
#[utoipa::path(delete, path = "/api/v1/upstreams/{name}", tag = "upstreams", security(("token" = [])),
    params(("name" = String, Path, description = "upstream name")),
    responses((status = 204), (status = 401, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete_upstream(State(st): State<ApiState>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    let Some(cur) = st.shared.upstream_list().iter().find(|x| x.name == name).cloned() else {
        return Err(ApiError::not_found(format!("no upstream {name:?}")));
    };
    if cur.source == "config" {
        return Err(ApiError::conflict(format!("upstream {name:?} is defined in the configuration file")));
    }
    if let Some(r) = st.shared.route_list().iter().find(|r| r.upstreams.contains(&name)) {
        return Err(ApiError::conflict(format!("upstream {name:?} is used by route {:?}", r.name)));
    }
    st.store.delete_upstream(&name).map_err(ApiError::store)?;
    st.shared.remove_upstream(&name);
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ routes

/// A route weight (0 to 65535).
struct Weight(u16);

impl utoipa::PartialSchema for Weight {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .minimum(Some(0))
            .maximum(Some(65535))
            .into()
    }
}

impl ToSchema for Weight {}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Weight, D::Error> {
        let x = f64::deserialize(d)?;
        if x.fract() == 0.0 && (0.0..=65535.0).contains(&x) {
            Ok(Weight(x as u16))
        } else {
            Err(serde::de::Error::custom(format!("weight: expected a whole number from 0 to 65535, got {x}")))
        }
    }
}

/// An upstream name.
#[derive(Deserialize, ToSchema)]
#[schema(value_type = String, pattern = "^[A-Za-z0-9_.-]{1,64}$")]
struct UpstreamName(String);

/// A route: calls whose Request-URI matches go to its upstreams (trunks); routes are tried
/// by `priority` (lowest first). Calls to other domains no route claims take the preferred
/// upstream; numbers at our own domain that are not local users need a number route.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RouteInput {
    /// The dialled number (Request-URI user part, percent-decoded) starts with this.
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[0-9A-Za-z+*#._-]{1,32}$", nullable = false)]
    prefix: Option<String>,
    /// ... and matches this regular expression (Rust `regex` syntax).
    #[serde(default, deserialize_with = "present")]
    #[schema(min_length = 1, max_length = 256, nullable = false)]
    regex: Option<String>,
    /// The Request-URI host is this domain.
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[A-Za-z0-9.-]{1,253}$", nullable = false)]
    domain: Option<String>,
    /// One upstream (trunk) ...
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$", nullable = false)]
    upstream: Option<String>,
    /// ... or several, tried in order (or picked by `weights`). Each must exist.
    #[serde(default)]
    #[schema(max_items = 16, nullable = false)]
    upstreams: Vec<UpstreamName>,
    /// One weight per upstream: the first trunk is picked by weight, the others follow.
    #[serde(default)]
    #[schema(max_items = 16, nullable = false)]
    weights: Vec<Weight>,
    /// Number conversion: the first rule that matches rewrites the number.
    #[serde(default)]
    #[schema(max_items = 32, nullable = false)]
    convert: Vec<crate::dialplan::Convert>,
    /// Lower is tried first (default 100).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 100000, nullable = false)]
    priority: Option<u32>,
}

/// A new route.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewRoute {
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    name: String,
    /// The dialled number (Request-URI user part, percent-decoded) starts with this.
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[0-9A-Za-z+*#._-]{1,32}$", nullable = false)]
    prefix: Option<String>,
    /// ... and matches this regular expression (Rust `regex` syntax).
    #[serde(default, deserialize_with = "present")]
    #[schema(min_length = 1, max_length = 256, nullable = false)]
    regex: Option<String>,
    /// The Request-URI host is this domain.
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[A-Za-z0-9.-]{1,253}$", nullable = false)]
    domain: Option<String>,
    /// One upstream (trunk) ...
    #[serde(default, deserialize_with = "present")]
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$", nullable = false)]
    upstream: Option<String>,
    /// ... or several, tried in order (or picked by `weights`). Each must exist.
    #[serde(default)]
    #[schema(max_items = 16, nullable = false)]
    upstreams: Vec<UpstreamName>,
    /// One weight per upstream: the first trunk is picked by weight, the others follow.
    #[serde(default)]
    #[schema(max_items = 16, nullable = false)]
    weights: Vec<Weight>,
    /// Number conversion: the first rule that matches rewrites the number.
    #[serde(default)]
    #[schema(max_items = 32, nullable = false)]
    convert: Vec<crate::dialplan::Convert>,
    /// Lower is tried first (default 100).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 100000, nullable = false)]
    priority: Option<u32>,
}

#[derive(Serialize, ToSchema)]
struct RouteView {
    name: String,
    priority: u32,
    prefix: Option<String>,
    regex: Option<String>,
    domain: Option<String>,
    /// The first upstream.
    upstream: String,
    upstreams: Vec<String>,
    weights: Vec<u16>,
    convert: Vec<crate::dialplan::Convert>,
}

impl From<&crate::core::Route> for RouteView {
    fn from(r: &crate::core::Route) -> RouteView {
        RouteView {
            name: r.name.clone(),
            priority: r.priority,
            prefix: r.prefix.clone(),
            regex: r.regex.clone(),
            domain: r.domain.clone(),
            upstream: r.upstreams.first().cloned().unwrap_or_default(),
            upstreams: r.upstreams.clone(),
            weights: r.weights.clone(),
            convert: r.convert.clone(),
        }
    }
}

fn check_route(st: &ApiState, name: &str, r: RouteInput) -> ApiResult<crate::core::Route> {
    if r.priority.is_some_and(|p| p > 100_000) {
        return Err(ApiError::bad_request("priority: expected 0 to 100000"));
    }
    if r.regex.as_ref().is_some_and(|x| x.is_empty() || x.len() > 256) {
        return Err(ApiError::bad_request("regex: expected 1 to 256 characters"));
    }
    let mut ups: Vec<String> = r.upstreams.into_iter().map(|u| u.0).collect();
    if let Some(u) = r.upstream {
        ups.insert(0, u);
    }
    let list = st.shared.upstream_list();
    let weights = r.weights.into_iter().map(|w| w.0).collect();
    crate::dialplan::Route::new(name, r.priority.unwrap_or(100), r.prefix, r.regex, r.domain, ups, weights, r.convert, &|n| {
        list.iter().any(|u| u.name == n)
    })
    .map_err(|e| {
        if e.what.starts_with("unknown upstream") { ApiError::conflict(e.to_string()) } else { ApiError::bad_request(e.to_string()) }
    })
}

/// All routes, in the order they are tried.
#[utoipa::path(get, path = "/api/v1/routes", tag = "routes", security(("token" = [])),
    responses((status = 200, body = [RouteView]), (status = 401, body = ApiError)))]
async fn list_routes(State(st): State<ApiState>) -> Json<Vec<RouteView>> {
    Json(st.shared.route_list().iter().map(RouteView::from).collect())
}

/// Adds a route (applies to the next call).
#[utoipa::path(post, path = "/api/v1/routes", tag = "routes", security(("token" = [])), request_body = NewRoute,
    responses((status = 201, body = RouteView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 409, body = ApiError)))]
async fn create_route(
    State(st): State<ApiState>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<RouteView>)> {
    let NewRoute { name, prefix, regex, domain, upstream, upstreams, weights, convert, priority } = object(body)?;
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Err(ApiError::bad_request(format!("name: {name:?}: expected letters, digits, '_', '.', '-'")));
    }
    if st.shared.route_list().iter().any(|r| r.name == name) {
        return Err(ApiError::conflict(format!("route {name:?} exists")));
    }
    let r = check_route(&st, &name, RouteInput { prefix, regex, domain, upstream, upstreams, weights, convert, priority })?;
    st.store.put_route(&r).map_err(ApiError::store)?;
    let view = RouteView::from(&r);
    st.shared.set_route(r);
    Ok((StatusCode::CREATED, Json(view)))
}

/// One route.
#[utoipa::path(get, path = "/api/v1/routes/{name}", tag = "routes", security(("token" = [])),
    params(("name" = String, Path, description = "route name")),
    responses((status = 200, body = RouteView), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn get_route(State(st): State<ApiState>, Path(name): Path<String>) -> ApiResult<Json<RouteView>> {
    st.shared
        .route_list()
        .iter()
        .find(|r| r.name == name)
        .map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found(format!("no route {name:?}")))
}

/// Replaces a route.
#[utoipa::path(put, path = "/api/v1/routes/{name}", tag = "routes", security(("token" = [])), request_body = RouteInput,
    params(("name" = String, Path, description = "route name")),
    responses((status = 200, body = RouteView), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn put_route(
    State(st): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> ApiResult<Json<RouteView>> {
    let input: RouteInput = object(body)?;
    if !st.shared.route_list().iter().any(|r| r.name == name) {
        return Err(ApiError::not_found(format!("no route {name:?}")));
    }
    let r = check_route(&st, &name, input)?;
    st.store.put_route(&r).map_err(ApiError::store)?;
    let view = RouteView::from(&r);
    st.shared.set_route(r);
    Ok(Json(view))
}

/// Deletes a route.
#[utoipa::path(delete, path = "/api/v1/routes/{name}", tag = "routes", security(("token" = [])),
    params(("name" = String, Path, description = "route name")),
    responses((status = 204), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn delete_route(State(st): State<ApiState>, Path(name): Path<String>) -> ApiResult<StatusCode> {
    if !st.shared.route_list().iter().any(|r| r.name == name) {
        return Err(ApiError::not_found(format!("no route {name:?}")));
    }
    st.store.delete_route(&name).map_err(ApiError::store)?;
    st.shared.remove_route(&name);
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ active calls

/// Calls in progress: parties, state, legs and live media figures.
#[utoipa::path(get, path = "/api/v1/calls", tag = "calls", security(("token" = [])),
    responses((status = 200, description = "calls in progress", body = [Object]), (status = 401, body = ApiError)))]
async fn active_calls(State(st): State<ApiState>) -> ApiResult<Json<Vec<crate::media::anchor::ActiveCall>>> {
    let mut all = Vec::new();
    for w in &st.workers.admin {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if w.send(super::AdminCmd::Calls(tx)).is_ok()
            && let Ok(calls) = rx.await
        {
            all.extend(calls);
        }
    }
    all.sort_by(|a, b| b.age_secs.total_cmp(&a.age_secs));
    Ok(Json(all))
}

// ------------------------------------------------------------------ rooms (SFU)

/// A participant of a meeting room.
#[derive(Serialize, ToSchema)]
struct ParticipantView {
    id: u64,
    name: String,
    /// `web`, `mobile`, `tablet`, `phone` or `guest`.
    client: String,
    /// `moderator` or `participant`.
    role: String,
    in_lobby: bool,
    muted: bool,
    video: bool,
    hand_raised: bool,
    /// Quality of each of its tracks (latest RTCP figures).
    tracks: Vec<TrackQualityView>,
}

/// Quality of one track: `in` = what the SFU receives from the participant, `out` = what the
/// participant reports receiving from the SFU.
#[derive(Serialize, ToSchema)]
struct TrackQualityView {
    kind: String,
    direction: String,
    packets: u64,
    bitrate_bps: f64,
    loss_pct: f64,
    jitter_ms: f64,
    rtt_ms: Option<f64>,
    /// E-model MOS (audio).
    mos: Option<f64>,
}

/// A meeting room of the SFU.
#[derive(Serialize, ToSchema)]
struct RoomView {
    id: String,
    participants: Vec<ParticipantView>,
}

fn room_view(r: sfu::rt::RoomView) -> RoomView {
    let name = |v: serde_json::Value| v.as_str().unwrap_or("").to_string();
    let quality = r.quality;
    RoomView {
        id: r.id,
        participants: r
            .participants
            .into_iter()
            .map(|m| ParticipantView {
                tracks: quality
                    .get(&m.id)
                    .map(|v| {
                        v.iter()
                            .map(|q| TrackQualityView {
                                kind: q.kind.into(),
                                direction: q.direction.into(),
                                packets: q.packets,
                                bitrate_bps: q.bitrate_bps,
                                loss_pct: q.loss_pct,
                                jitter_ms: q.jitter_ms,
                                rtt_ms: q.rtt_ms,
                                mos: q.mos,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                id: m.id.0,
                name: m.name,
                client: name(serde_json::to_value(m.client).unwrap_or_default()),
                role: name(serde_json::to_value(m.role).unwrap_or_default()),
                in_lobby: m.in_lobby,
                muted: m.muted,
                video: m.video,
                hand_raised: m.hand_raised,
            })
            .collect(),
    }
}

/// Meeting rooms in progress with their participants.
#[utoipa::path(get, path = "/api/v1/rooms", tag = "rooms", security(("token" = [])),
    responses((status = 200, body = [RoomView]), (status = 401, body = ApiError)))]
async fn list_rooms(State(st): State<ApiState>) -> Json<Vec<RoomView>> {
    let rooms = match &st.sfu {
        Some(h) => h.rooms().await,
        None => vec![],
    };
    Json(rooms.into_iter().map(room_view).collect())
}

/// One meeting room.
#[utoipa::path(get, path = "/api/v1/rooms/{room}", tag = "rooms", security(("token" = [])),
    params(("room" = String, Path, description = "room name")),
    responses((status = 200, body = RoomView), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn get_room(State(st): State<ApiState>, Path(room): Path<String>) -> ApiResult<Json<RoomView>> {
    let rooms = match &st.sfu {
        Some(h) => h.rooms().await,
        None => vec![],
    };
    rooms.into_iter().find(|r| r.id == room).map(|r| Json(room_view(r))).ok_or_else(|| ApiError::not_found(format!("no room {room:?}")))
}

/// Removes a participant from a room (its connection ends; the others see it removed).
#[utoipa::path(delete, path = "/api/v1/rooms/{room}/participants/{id}", tag = "rooms", security(("token" = [])),
    params(("room" = String, Path, description = "room name"), ("id" = u64, Path, description = "participant id")),
    responses((status = 204), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn remove_participant(State(st): State<ApiState>, Path((room, id)): Path<(String, String)>) -> ApiResult<StatusCode> {
    let Ok(n) = id.parse::<u64>() else { return Err(ApiError::not_found(format!("no participant {id:?} in room {room:?}"))) };
    let Some(h) = &st.sfu else { return Err(ApiError::not_found("the SFU is not enabled")) };
    h.remove(&room, sfu::room::ParticipantId(n)).await.map_err(|_| ApiError::not_found(format!("no participant {n} in room {room:?}")))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Hangs up a call: BYE to both ends once answered, CANCEL while it rings (the caller gets
/// 487). The call record says `hung_up`.
#[utoipa::path(delete, path = "/api/v1/calls/{call_id}", tag = "calls", security(("token" = [])),
    params(("call_id" = String, Path, description = "Call-ID")),
    responses((status = 204), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn hangup(State(st): State<ApiState>, Path(call_id): Path<String>) -> ApiResult<StatusCode> {
    let w = st.workers.owner_of(&call_id);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sent = st.workers.admin.get(w).is_some_and(|a| a.send(super::AdminCmd::Hangup(call_id.clone(), tx)).is_ok());
    if sent && rx.await.unwrap_or(false) { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found(format!("no call {call_id:?}"))) }
}

// ------------------------------------------------------------------ events

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventFilter {
    /// Only calls where this user is the caller, the called party or the local agent.
    user: Option<String>,
}

/// Call events as Server-Sent Events: `ringing`, `answered`, `ended` (with the call record
/// and its quality figures). Each `data:` is a JSON object with `at` (Unix seconds), `event`,
/// `call_id`, `direction`, `caller`, `caller_name`, `called`, `agent`.
#[utoipa::path(get, path = "/events", tag = "events", security(("token" = [])), params(EventFilter),
    responses((status = 200, description = "text/event-stream of call events", content_type = "text/event-stream"), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
async fn events(State(st): State<ApiState>, q: Result<Query<EventFilter>, QueryRejection>) -> ApiResult<impl IntoResponse> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let Query(f) = q?;
    let rx = st.events.subscribe();
    let stream = futures_util::stream::unfold((rx, f.user), |(mut rx, user)| async move {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    let p = &e.event.parties;
                    if let Some(u) = &user
                        && p.caller != *u
                        && p.called != *u
                        && p.agent.as_deref() != Some(u.as_str())
                    {
                        continue;
                    }
                    let data = serde_json::to_string(&*e).unwrap_or_default();
                    let ev = Event::default().event(e.event.event).data(data);
                    return Some((Ok::<_, std::convert::Infallible>(ev), (rx, user)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let ev = Event::default().event("lagged").data(format!("{{\"missed\":{n}}}"));
                    return Some((Ok(ev), (rx, user)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

// ------------------------------------------------------------------ captures

/// A packet capture.
#[derive(Serialize, ToSchema)]
struct Capture {
    id: u64,
    /// The user whose SIP messages are captured (or `call_id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_id: Option<String>,
    /// Unix seconds.
    started: f64,
    until: f64,
    active: bool,
    /// Why it stopped: `deadline`, `logout` or `stopped`.
    ended: Option<String>,
    packets: u64,
    bytes: u64,
}

impl From<super::capture::CaptureInfo> for Capture {
    fn from(c: super::capture::CaptureInfo) -> Capture {
        use super::capture::Target;
        let (user, call_id) = match c.target {
            Target::User(u) => (Some(u), None),
            Target::CallId(i) => (None, Some(i)),
        };
        Capture {
            id: c.id,
            user,
            call_id,
            started: c.started,
            until: c.until,
            active: c.active,
            ended: c.ended.map(String::from),
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

/// What to capture: one user's SIP messages or one call's, for a while.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum NewCapture {
    User(UserCapture),
    Call(CallCapture),
}

/// A user's SIP messages.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct UserCapture {
    #[schema(min_length = 1)]
    user: String,
    /// Seconds (default 600; at most `admin.capture_max_secs`).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 1, nullable = false)]
    duration_secs: Option<u32>,
}

/// One call's SIP messages.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CallCapture {
    #[schema(min_length = 1)]
    call_id: String,
    /// Seconds (default 600; at most `admin.capture_max_secs`).
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(value_type = Option<u32>, minimum = 1, nullable = false)]
    duration_secs: Option<u32>,
}

/// Starts a capture of a user's (or a call's) SIP messages into a pcap file.
#[utoipa::path(post, path = "/api/v1/captures", tag = "captures", security(("token" = [])), request_body = NewCapture,
    responses((status = 201, body = Capture), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn start_capture(
    State(st): State<ApiState>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Capture>)> {
    use super::capture::Target;
    let c: NewCapture =
        object(body).map_err(|_| ApiError::bad_request("give exactly one of `user` and `call_id` (and optionally `duration_secs`)"))?;
    let (target, duration) = match c {
        NewCapture::User(UserCapture { user, duration_secs }) => {
            if st.shared.auth.user(&user).is_none() {
                return Err(ApiError::not_found(format!("no user {user:?}")));
            }
            (Target::User(user), duration_secs)
        }
        NewCapture::Call(CallCapture { call_id, duration_secs }) if !call_id.is_empty() => (Target::CallId(call_id), duration_secs),
        NewCapture::Call(_) => return Err(ApiError::bad_request("call_id: must not be empty")),
    };
    let secs = duration.unwrap_or(600) as u64;
    if secs == 0 || secs > st.capture_max.as_secs() {
        return Err(ApiError::bad_request(format!("duration_secs: expected 1 to {}", st.capture_max.as_secs())));
    }
    #[allow(clippy::disallowed_methods)]
    let now = std::time::Instant::now();
    let info = st.captures.start(now, target, std::time::Duration::from_secs(secs)).map_err(|e| {
        tracing::error!(error = %e, "capture");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "capture_unavailable", e)
    })?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// All captures, newest first.
#[utoipa::path(get, path = "/api/v1/captures", tag = "captures", security(("token" = [])),
    responses((status = 200, body = [Capture]), (status = 401, body = ApiError)))]
async fn list_captures(State(st): State<ApiState>) -> Json<Vec<Capture>> {
    Json(st.captures.list().into_iter().map(Capture::from).collect())
}

/// One capture.
#[utoipa::path(get, path = "/api/v1/captures/{id}", tag = "captures", security(("token" = [])),
    params(("id" = u64, Path, description = "capture id")),
    responses((status = 200, body = Capture), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn get_capture(
    State(st): State<ApiState>,
    id: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> ApiResult<Json<Capture>> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    st.captures.get(id).map(|c| Json(c.into())).ok_or_else(|| ApiError::not_found(format!("no capture {id}")))
}

/// Deletes a capture and its file (stopping it if it runs).
#[utoipa::path(delete, path = "/api/v1/captures/{id}", tag = "captures", security(("token" = [])),
    params(("id" = u64, Path, description = "capture id")),
    responses((status = 204), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn delete_capture(
    State(st): State<ApiState>,
    id: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if st.captures.delete(id) { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::not_found(format!("no capture {id}"))) }
}

/// Stops a capture before its deadline (the file stays for download).
#[utoipa::path(post, path = "/api/v1/captures/{id}/stop", tag = "captures", security(("token" = [])),
    params(("id" = u64, Path, description = "capture id")),
    responses((status = 204), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn stop_capture(State(st): State<ApiState>, id: Result<Path<u64>, axum::extract::rejection::PathRejection>) -> ApiResult<StatusCode> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if st.captures.get(id).is_none() {
        return Err(ApiError::not_found(format!("no capture {id}")));
    }
    if st.captures.stop(id) { Ok(StatusCode::NO_CONTENT) } else { Err(ApiError::conflict(format!("capture {id} already stopped"))) }
}

/// The pcap file of a capture (also while it runs).
#[utoipa::path(get, path = "/api/v1/captures/{id}/pcap", tag = "captures", security(("token" = [])),
    params(("id" = u64, Path, description = "capture id")),
    responses((status = 200, description = "pcap file (LINKTYPE_RAW)", content_type = "application/vnd.tcpdump.pcap"), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 404, body = ApiError)))]
async fn download_capture(
    State(st): State<ApiState>,
    id: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> ApiResult<Response> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Some(c) = st.captures.get(id) else { return Err(ApiError::not_found(format!("no capture {id}"))) };
    let data = std::fs::read(&c.file).map_err(|e| ApiError::not_found(format!("capture file: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/vnd.tcpdump.pcap".to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"capture-{id}.pcap\"")),
        ],
        data,
    )
        .into_response())
}

// ------------------------------------------------------------------ TLS

#[derive(Serialize, ToSchema)]
struct TlsState {
    /// SHA-256 fingerprint (hex) of the certificate new connections get.
    sha256: String,
}

/// Reloads the TLS certificate and key from their files: new connections get the new
/// certificate, open ones stay up. A broken file is refused (400) and the old certificate
/// stays in use. (The edge also reloads by itself when the files change.)
#[utoipa::path(post, path = "/api/v1/tls/reload", tag = "tls", security(("token" = [])),
    responses((status = 200, body = TlsState), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 409, body = ApiError)))]
async fn tls_reload(State(st): State<ApiState>) -> ApiResult<Json<TlsState>> {
    let Some(store) = st.tls.clone() else { return Err(ApiError::conflict("no TLS or WSS listener is configured")) };
    match store.reload() {
        Ok(sha256) => {
            tracing::info!(sha256, "TLS certificate reloaded (admin API)");
            Ok(Json(TlsState { sha256 }))
        }
        Err(e) => Err(ApiError::bad_request(format!("certificate not loaded, the old one stays in use: {e}"))),
    }
}

/// The TLS certificate in use.
#[utoipa::path(get, path = "/api/v1/tls", tag = "tls", security(("token" = [])),
    responses((status = 200, body = TlsState), (status = 401, body = ApiError), (status = 409, body = ApiError)))]
async fn tls_state(State(st): State<ApiState>) -> ApiResult<Json<TlsState>> {
    let Some(store) = st.tls.clone() else { return Err(ApiError::conflict("no TLS or WSS listener is configured")) };
    Ok(Json(TlsState { sha256: store.fingerprint() }))
}

// ------------------------------------------------------------------ router

#[derive(OpenApi)]
#[openapi(
    info(title = "edge admin API", description = "Users, registrations, call log and metrics of the SIP edge. Bearer token: printed at first start, stored in the data directory (admin.token)."),
    components(schemas(ApiError)),
    modifiers(&Security)
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme("token", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

async fn require_token(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if st.public.iter().any(|p| p == path) {
        return next.run(req).await;
    }
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.trim().as_bytes(), st.token.as_bytes()) => next.run(req).await,
        Some(_) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")],
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "wrong token"),
        )
            .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing `Authorization: Bearer <token>`"),
        )
            .into_response(),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The admin router (API, `/health`, `/metrics`, `/openapi.json`) with token auth.
pub fn router(st: ApiState, sfu: Option<sfu::rt::SfuHandle>) -> axum::Router {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(metrics))
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, put_user, delete_user))
        .routes(routes!(list_registrations))
        .routes(routes!(logout))
        .routes(routes!(call_log))
        .routes(routes!(active_calls))
        .routes(routes!(list_routes, create_route))
        .routes(routes!(get_route, put_route, delete_route))
        .routes(routes!(list_upstreams, create_upstream))
        .routes(routes!(get_upstream, put_upstream, delete_upstream))
        .routes(routes!(hangup))
        .routes(routes!(events))
        .routes(routes!(tls_state))
        .routes(routes!(start_capture, list_captures))
        .routes(routes!(get_capture, delete_capture))
        .routes(routes!(stop_capture))
        .routes(routes!(download_capture))
        .routes(routes!(tls_reload))
        .routes(routes!(list_rooms))
        .routes(routes!(get_room))
        .routes(routes!(remove_participant))
        .split_for_parts();
    // The capture limit is configuration: state it in the document.
    let mut api = serde_json::to_value(&api).unwrap_or_default();
    for s in ["UserCapture", "CallCapture"] {
        if let Some(p) = api.pointer_mut(&format!("/components/schemas/{s}/properties/duration_secs")).and_then(|v| v.as_object_mut()) {
            p.insert("maximum".into(), serde_json::json!(st.capture_max.as_secs()));
        }
    }
    let doc = Arc::new(api);
    let router = router
        .route("/openapi.json", axum::routing::get(move || async move { Json((*doc).clone()) }))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed here")
        })
        .layer(axum::middleware::from_fn_with_state(st.clone(), require_token))
        .with_state(st);
    // WHIP/WHEP: public media endpoints, outside the token check.
    // The web phone page: public too (it signs in with SIP digest over WebSocket).
    let router = super::phone::router().merge(router);
    match sfu {
        Some(h) => super::whip::router(h.clone()).merge(super::room_ws::router(h)).merge(router),
        None => router,
    }
}

/// The admin token: read from `path`, or generated (32 random bytes, hex) and written
/// there with mode 0600. Returns (token, newly generated).
pub fn load_or_create_token(path: &std::path::Path) -> Result<(String, bool), String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        let t = t.trim().to_string();
        if !t.is_empty() {
            return Ok((t, false));
        }
    }
    let mut b = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    let t = crate::auth::hex(&b);
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(t.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((t, true))
}
