//! The meeting-room protocol: JSON over a WebSocket at `GET /room/{room}/ws` on the admin
//! listener (public, like WHIP), documented in docs/SFU.md; and the meeting page
//! `GET /meet/{room}`. The first message joins; then SDP offers/answers (the SFU offers a
//! transceiver for every new remote track), moderator actions, mute/camera/hand state, and
//! room events pushed to every member. Closing the socket leaves the room.

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use sfu::core::{Action, Signal};
use sfu::room::{ClientType, ParticipantId};
use sfu::rt::SfuHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A request from a member.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Request_ {
    Join {
        name: String,
        #[serde(default = "web")]
        client: ClientType,
    },
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Admit {
        id: u64,
    },
    Reject {
        id: u64,
    },
    Remove {
        id: u64,
    },
    MakeModerator {
        id: u64,
    },
    State {
        muted: bool,
        video: bool,
        #[serde(default)]
        hand_raised: bool,
    },
    /// The largest video height the member shows: simulcast layers above it are not sent.
    VideoSize {
        height: u16,
    },
    Leave,
}

fn web() -> ClientType {
    ClientType::Web
}

fn valid_room(r: &str) -> bool {
    !r.is_empty() && r.len() <= 64 && r.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

async fn meet(Path(room): Path<String>) -> Response {
    if !valid_room(&room) {
        return (StatusCode::BAD_REQUEST, "room: expected 1 to 64 of A-Z a-z 0-9 _ - .\n").into_response();
    }
    Html(sfu::MEET_HTML).into_response()
}

async fn upgrade(State(sfu): State<SfuHandle>, Path(room): Path<String>, req: Request) -> Response {
    if !valid_room(&room) {
        return (StatusCode::BAD_REQUEST, "room: expected 1 to 64 of A-Z a-z 0-9 _ - .\n").into_response();
    }
    let token = req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token="))).map(str::to_string);
    if !sfu.authorized(&room, token.as_deref()) {
        return (StatusCode::UNAUTHORIZED, "this room needs its token (?token=...)\n").into_response();
    }
    let h = req.headers();
    let is_ws = h.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = h.get("sec-websocket-key").map(|k| k.as_bytes().to_vec()) else {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n").into_response();
    };
    if !is_ws {
        return (StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n").into_response();
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(up) => {
                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(hyper_util::rt::TokioIo::new(up), Role::Server, None).await;
                session(sfu, room, ws).await;
            }
            Err(e) => tracing::debug!(error = %e, "room WebSocket upgrade failed"),
        }
    });
    let mut r = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let hs = r.headers_mut();
    hs.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    hs.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        hs.insert("sec-websocket-accept", v);
    }
    r
}

fn json(v: serde_json::Value) -> WsMessage {
    WsMessage::text(v.to_string())
}

async fn session<S>(sfu: SfuHandle, room: String, ws: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    // The first message joins.
    let joined = loop {
        let Some(Ok(m)) = rx.next().await else { return };
        let WsMessage::Text(t) = m else { continue };
        match serde_json::from_str::<Request_>(&t) {
            Ok(Request_::Join { name, client }) => {
                let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
                match sfu.join(&room, &name, client).await {
                    Ok(j) => break j,
                    Err(e) => {
                        let _ = tx.send(json(serde_json::json!({"type": "error", "reason": e.to_string()}))).await;
                        let _ = tx.close().await;
                        return;
                    }
                }
            }
            _ => {
                let _ = tx.send(json(serde_json::json!({"type": "error", "reason": "join first: {\"type\":\"join\",\"name\":...}"}))).await;
            }
        }
    };
    let id = joined.id;
    let mut signals = joined.signals;
    let roster = serde_json::to_value(&joined.roster).unwrap_or_default();
    if tx.send(json(serde_json::json!({"type": "joined", "id": id.0, "room": room, "roster": roster}))).await.is_err() {
        let _ = sfu.leave(id).await;
        return;
    }
    loop {
        tokio::select! {
            sig = signals.recv() => {
                let Some(sig) = sig else { break };
                let closed = matches!(sig, Signal::Closed { .. });
                let text = serde_json::to_string(&sig).unwrap_or_default();
                if tx.send(WsMessage::text(text)).await.is_err() || closed {
                    break;
                }
            }
            m = rx.next() => {
                let Some(Ok(m)) = m else { break };
                let t = match m {
                    WsMessage::Text(t) => t,
                    WsMessage::Close(_) => break,
                    _ => continue,
                };
                let reply = match serde_json::from_str::<Request_>(&t) {
                    Err(e) => Some(serde_json::json!({"type": "error", "reason": format!("bad message: {e}")})),
                    Ok(Request_::Join { .. }) => Some(serde_json::json!({"type": "error", "reason": "already joined"})),
                    Ok(Request_::Leave) => break,
                    Ok(Request_::Offer { sdp }) => Some(match sfu.offer(id, sdp).await {
                        Ok(answer) => serde_json::json!({"type": "answer", "sdp": answer}),
                        Err(e) => serde_json::json!({"type": "error", "reason": e.to_string()}),
                    }),
                    Ok(Request_::Answer { sdp }) => sfu.answer(id, sdp).await.err().map(|e| serde_json::json!({"type": "error", "reason": e.to_string()})),
                    Ok(r) => {
                        let action = match r {
                            Request_::Admit { id } => Action::Admit(ParticipantId(id)),
                            Request_::Reject { id } => Action::Reject(ParticipantId(id)),
                            Request_::Remove { id } => Action::Remove(ParticipantId(id)),
                            Request_::MakeModerator { id } => Action::MakeModerator(ParticipantId(id)),
                            Request_::State { muted, video, hand_raised } => Action::State { muted, video, hand_raised },
                            Request_::VideoSize { height } => Action::VideoSize { height },
                            _ => continue,
                        };
                        sfu.act(id, action).await.err().map(|e| serde_json::json!({"type": "error", "reason": e.to_string()}))
                    }
                };
                if let Some(v) = reply
                    && tx.send(json(v)).await.is_err()
                {
                    break;
                }
            }
        }
    }
    let _ = sfu.leave(id).await;
    let _ = tx.close().await;
}

/// The meeting page and the room WebSocket.
pub fn router(sfu: SfuHandle) -> Router {
    use axum::routing::get;
    Router::new().route("/meet/{room}", get(meet)).route("/room/{room}/ws", get(upgrade)).with_state(sfu)
}
