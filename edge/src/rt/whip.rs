//! WHIP (RFC 9725) and WHEP on the admin HTTP listener, for the SFU: `POST /whip/{room}`
//! with an SDP offer publishes into a room, `POST /whep/{room}` watches it; the answer
//! comes back as `201 Created` with `Location` (the resource to `DELETE` when leaving).
//! CORS headers let a page from another origin use them (and read `Location`). No admin
//! token: these are the public media endpoints.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sfu::core::SfuError;
use sfu::room::{ParticipantId, RoomError};
use sfu::rt::SfuHandle;

fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Location, ETag, Link, Accept-Post"));
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, DELETE, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type, Authorization, If-Match"));
    r
}

fn text(code: StatusCode, msg: impl Into<String>) -> Response {
    cors((code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], msg.into() + "\n").into_response())
}

fn valid_room(r: &str) -> bool {
    !r.is_empty() && r.len() <= 64 && r.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

#[derive(Clone, Copy)]
enum Kind {
    Whip,
    Whep,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, t) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(t.trim())
}

fn unauthorized() -> Response {
    let mut r = text(StatusCode::UNAUTHORIZED, "this room needs its bearer token (Authorization: Bearer ...)");
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

async fn offer(sfu: SfuHandle, kind: Kind, room: String, headers: HeaderMap, body: Bytes) -> Response {
    if !valid_room(&room) {
        return text(StatusCode::BAD_REQUEST, format!("room {room:?}: expected 1 to 64 of A-Z a-z 0-9 _ - ."));
    }
    if !sfu.authorized(&room, bearer(&headers)) {
        return unauthorized();
    }
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/sdp") {
        return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, "expected Content-Type: application/sdp");
    }
    let Ok(sdp) = String::from_utf8(body.to_vec()) else {
        return text(StatusCode::BAD_REQUEST, "the SDP offer is not UTF-8");
    };
    let (path, r) = match kind {
        Kind::Whip => ("whip", sfu.whip(&room, sdp).await),
        Kind::Whep => ("whep", sfu.whep(&room, sdp).await),
    };
    match r {
        Ok((id, answer)) => {
            let location = format!("/{path}/{room}/{}", id.0);
            let mut resp = (StatusCode::CREATED, [(header::CONTENT_TYPE, "application/sdp")], answer).into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            cors(resp)
        }
        Err(e @ (SfuError::BadOffer(_) | SfuError::Unsupported(_))) => text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ SfuError::Room(RoomError::Full(_))) => text(StatusCode::CONFLICT, e.to_string()),
        Err(e) => text(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn whip(State(sfu): State<SfuHandle>, Path(room): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    offer(sfu, Kind::Whip, room, headers, body).await
}

async fn whep(State(sfu): State<SfuHandle>, Path(room): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    offer(sfu, Kind::Whep, room, headers, body).await
}

async fn leave(State(sfu): State<SfuHandle>, Path((room, id)): Path<(String, String)>, headers: HeaderMap) -> Response {
    if !sfu.authorized(&room, bearer(&headers)) {
        return unauthorized();
    }
    let Ok(n) = id.parse::<u64>() else { return text(StatusCode::NOT_FOUND, "no such session") };
    match sfu.leave(ParticipantId(n)).await {
        Ok(()) => cors(StatusCode::OK.into_response()),
        Err(_) => text(StatusCode::NOT_FOUND, "no such session"),
    }
}

async fn preflight() -> Response {
    let mut r = cors(StatusCode::NO_CONTENT.into_response());
    r.headers_mut().insert("Accept-Post", HeaderValue::from_static("application/sdp"));
    r
}

/// The WHIP and WHEP routes.
pub fn router(sfu: SfuHandle) -> Router {
    use axum::routing::{delete, post};
    Router::new()
        .route("/whip/{room}", post(whip).options(preflight))
        .route("/whip/{room}/{id}", delete(leave).options(preflight))
        .route("/whep/{room}", post(whep).options(preflight))
        .route("/whep/{room}/{id}", delete(leave).options(preflight))
        .with_state(sfu)
}
