//! Runtime of the conference UA (`crate::conference`): its SIP socket, one RTP socket per
//! call, and the bridge between each call's RTP and its phone participant in the SFU.
#![allow(clippy::disallowed_methods)] // runtime: reads the clock

use crate::conference::{ConferenceUa, Media, Output};
use crate::msg::Message;
use bytes::Bytes;
use codec::rtp::{RtpHeader, is_rtcp};
use sfu::room::RoomError;
use sfu::rt::{PhoneEvent, SfuHandle};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

enum Event {
    Joined {
        call: String,
        r: Result<(), (u16, String)>,
    },
    /// The room ended the phone's participation.
    Closed {
        call: String,
    },
}

struct CallRt {
    /// Bound at the INVITE, handed to the call's task at the join.
    sock: Option<std::net::UdpSocket>,
    /// Dropped: the task leaves the room and ends.
    stop: Option<oneshot::Sender<()>>,
    moved: Option<mpsc::UnboundedSender<SocketAddr>>,
}

/// Binds the conference UA's SIP socket on `ip` and runs it. Returns its address (the
/// proxy's target for `conference:` routes).
pub fn start(rt: &tokio::runtime::Handle, ip: IpAddr, sfu: SfuHandle) -> Result<SocketAddr, String> {
    let std_sock = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(|e| format!("conference SIP socket on {ip}: {e}"))?;
    std_sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = std_sock.local_addr().map_err(|e| e.to_string())?;
    let _guard = rt.enter();
    let sock = tokio::net::UdpSocket::from_std(std_sock).map_err(|e| e.to_string())?;
    rt.spawn(run(ConferenceUa::new(addr), sock, sfu));
    Ok(addr)
}

async fn run(mut ua: ConferenceUa, sock: tokio::net::UdpSocket, sfu: SfuHandle) {
    let ip = sock.local_addr().map(|a| a.ip()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let mut calls: HashMap<String, CallRt> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let deadline = ua.poll_timeout().unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600));
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((n, src)) = r else { continue };
                match Message::parse(Bytes::copy_from_slice(&buf[..n])) {
                    Ok(m) if m.is_request() => ua.handle_request(Instant::now(), m, src),
                    Ok(m) => ua.handle_response(Instant::now(), m),
                    Err(e) => tracing::debug!(%src, error = %e, "conference: unparsable SIP message"),
                }
            }
            Some(ev) = ev_rx.recv() => match ev {
                Event::Joined { call, r } => ua.joined(Instant::now(), &call, r),
                Event::Closed { call } => ua.hangup(Instant::now(), &call),
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => ua.handle_timeout(Instant::now()),
        }
        while let Some(o) = ua.poll_output() {
            match o {
                Output::Send { to, data } => {
                    let _ = sock.send_to(&data, to).await;
                }
                Output::Bind { call } => {
                    let s = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).and_then(|s| s.set_nonblocking(true).map(|_| s));
                    let addr = s.as_ref().ok().and_then(|s| s.local_addr().ok());
                    if let Err(e) = &s {
                        tracing::warn!(call, error = %e, "conference: cannot bind an RTP socket");
                    }
                    calls.insert(call.clone(), CallRt { sock: s.ok(), stop: None, moved: None });
                    ua.bound(Instant::now(), &call, addr);
                }
                Output::Join { call, room, name, media } => {
                    let Some(c) = calls.get_mut(&call) else { continue };
                    let Some(std_sock) = c.sock.take() else { continue };
                    let Ok(rtp) = tokio::net::UdpSocket::from_std(std_sock) else { continue };
                    let (stop_tx, stop_rx) = oneshot::channel();
                    let (moved_tx, moved_rx) = mpsc::unbounded_channel();
                    c.stop = Some(stop_tx);
                    c.moved = Some(moved_tx);
                    tokio::spawn(call_task(call, room, name, media, rtp, sfu.clone(), ev_tx.clone(), stop_rx, moved_rx));
                }
                Output::Moved { call, media } => {
                    if let Some(tx) = calls.get(&call).and_then(|c| c.moved.as_ref()) {
                        let _ = tx.send(media.remote);
                    }
                }
                Output::Leave { call } => {
                    calls.remove(&call);
                }
            }
        }
        metrics::gauge!("edge_conference_calls").set(ua.calls() as f64);
    }
}

/// One phone in a room: its RTP to the SFU, the room's mix back in RTP.
#[allow(clippy::too_many_arguments)]
async fn call_task(
    call: String,
    room: String,
    name: String,
    media: Media,
    rtp: tokio::net::UdpSocket,
    sfu: SfuHandle,
    ev: mpsc::UnboundedSender<Event>,
    mut stop: oneshot::Receiver<()>,
    mut moved: mpsc::UnboundedReceiver<SocketAddr>,
) {
    let mut joined = match sfu.phone_join(&room, &name, media.codec).await {
        Ok(j) => j,
        Err(e) => {
            let code = match &e {
                sfu::core::SfuError::Room(RoomError::Full(_)) => 486,
                sfu::core::SfuError::Room(_) => 403,
                _ => 503,
            };
            let _ = ev.send(Event::Joined { call, r: Err((code, e.to_string())) });
            return;
        }
    };
    let id = joined.id;
    tracing::info!(call, room, participant = id.0, codec = ?media.codec, "conference: phone joined");
    let _ = ev.send(Event::Joined { call: call.clone(), r: Ok(()) });
    let mut remote = media.remote;
    let mut latched = false;
    let seed = Instant::now().elapsed().subsec_nanos() ^ (id.0 as u32).wrapping_mul(0x9e37_79b9);
    let (ssrc, mut seq, mut ts) = (seed.rotate_left(7) | 1, (seed >> 3) as u16, seed.rotate_left(13));
    let mut first = true;
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; 1500];
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(addr) = moved.recv() => remote = addr,
            r = rtp.recv_from(&mut buf) => {
                let Ok((n, src)) = r else { continue };
                let p = &buf[..n];
                if is_rtcp(p) {
                    continue;
                }
                let Ok(h) = RtpHeader::parse(p) else { continue };
                if h.payload_type != media.pt {
                    continue; // telephone-event, comfort noise
                }
                // Symmetric RTP: answer where the phone's media really comes from (NAT).
                if !latched && src != remote {
                    tracing::debug!(call, from = %remote, to = %src, "conference: RTP latched to its source");
                    remote = src;
                }
                latched = true;
                sfu.phone_audio(id, p[h.payload_offset..h.payload_end].to_vec());
            }
            e = joined.events.recv() => match e {
                Some(PhoneEvent::Audio(data)) => {
                    if 12 + data.len() > out.len() {
                        continue;
                    }
                    let end = 12 + data.len();
                    out[12..end].copy_from_slice(&data);
                    RtpHeader { marker: first, payload_type: media.pt, sequence: seq, timestamp: ts, ssrc, payload_offset: 12, payload_end: end }
                        .write_to(&mut out);
                    first = false;
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(media.codec.frame_ticks());
                    let _ = rtp.send_to(&out[..end], remote).await;
                }
                closed => {
                    let reason = match closed {
                        Some(PhoneEvent::Closed(r)) => r,
                        _ => "the SFU stopped".into(),
                    };
                    tracing::info!(call, room, reason, "conference: the room ended the phone's participation");
                    let _ = ev.send(Event::Closed { call: call.clone() });
                    return;
                }
            },
        }
    }
    sfu.phone_leave(id);
    tracing::info!(call, room, participant = id.0, "conference: phone left");
}
