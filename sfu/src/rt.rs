//! The SFU runtime: one UDP socket for all WebRTC media (ICE, DTLS, SRTP demultiplexed by
//! the core), optionally an ICE-TCP listener on the same port (RFC 6544; RFC 4571 frames,
//! one reader and writer task per connection), one tokio task owning the sans-IO [`Sfu`],
//! and a handle the HTTP layer
//! (WHIP/WHEP, admin API) uses to talk to it. The only place in this crate that reads the
//! clock or touches a socket.
#![allow(clippy::disallowed_methods)] // the runtime is where the clock is read

use crate::core::{Action, Sfu, SfuConfig, SfuError, Signal};
use crate::mixer::PhoneCodec;
use crate::room::{ClientType, Member, ParticipantId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// A room as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomView {
    pub id: String,
    pub participants: Vec<Member>,
    /// Latest per-track quality of each participant.
    pub quality: HashMap<ParticipantId, Vec<crate::core::TrackQuality>>,
}

enum Cmd {
    Whip {
        room: String,
        offer: String,
        reply: oneshot::Sender<Result<(ParticipantId, String), SfuError>>,
    },
    Whep {
        room: String,
        offer: String,
        reply: oneshot::Sender<Result<(ParticipantId, String), SfuError>>,
    },
    Leave {
        id: ParticipantId,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    Remove {
        room: String,
        id: ParticipantId,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    Rooms {
        reply: oneshot::Sender<Vec<RoomView>>,
    },
    Join {
        room: String,
        name: String,
        client: ClientType,
        reply: oneshot::Sender<Result<Joined, SfuError>>,
    },
    Offer {
        id: ParticipantId,
        sdp: String,
        reply: oneshot::Sender<Result<String, SfuError>>,
    },
    Answer {
        id: ParticipantId,
        sdp: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    Act {
        id: ParticipantId,
        action: Action,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    PhoneJoin {
        room: String,
        name: String,
        codec: PhoneCodec,
        reply: oneshot::Sender<Result<PhoneJoined, SfuError>>,
    },
    PhoneAudio {
        id: ParticipantId,
        payload: Vec<u8>,
    },
    PhoneLeave {
        id: ParticipantId,
    },
    /// ICE-TCP: a connection from `peer` was accepted (its frames go out through `writer`),
    /// one RFC 4571 frame arrived on it, or it closed.
    TcpOpen {
        peer: SocketAddr,
        writer: mpsc::UnboundedSender<Vec<u8>>,
    },
    TcpFrame {
        peer: SocketAddr,
        data: Vec<u8>,
    },
    TcpClosed {
        peer: SocketAddr,
    },
}

/// What the SFU sends a phone in a room.
#[derive(Debug)]
pub enum PhoneEvent {
    /// 20 ms of the room's mix in the phone's codec (one RTP payload).
    Audio(Vec<u8>),
    /// The phone is out of the room (removed by the moderator or an operator, timed out).
    Closed(String),
}

/// A phone that joined a room: its participant id and its mix.
pub struct PhoneJoined {
    pub id: ParticipantId,
    pub events: mpsc::UnboundedReceiver<PhoneEvent>,
}

/// A member that joined with the room protocol: its id, the room's members at that
/// moment, and where its messages (offers, room events) arrive.
pub struct Joined {
    pub id: ParticipantId,
    pub roster: Vec<Member>,
    pub signals: mpsc::UnboundedReceiver<Signal>,
}

/// How the rest of the binary reaches the SFU task.
#[derive(Clone)]
pub struct SfuHandle {
    tx: mpsc::UnboundedSender<Cmd>,
    /// Where media arrives (the ICE host candidate).
    pub media_addr: SocketAddr,
    /// Bearer token per room (`*`: every room without its own); rooms without one are open.
    tokens: std::sync::Arc<HashMap<String, String>>,
}

fn gone() -> SfuError {
    SfuError::Unsupported("the SFU is not running".into())
}

impl SfuHandle {
    /// `true` if `token` may publish, watch or join `room`.
    pub fn authorized(&self, room: &str, token: Option<&str>) -> bool {
        match self.tokens.get(room).or_else(|| self.tokens.get("*")) {
            None => true,
            Some(want) => {
                token.is_some_and(|t| t.len() == want.len() && t.bytes().zip(want.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0)
            }
        }
    }

    /// A WHIP offer for `room`: the publisher's id and the SDP answer.
    pub async fn whip(&self, room: &str, offer: String) -> Result<(ParticipantId, String), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Whip { room: room.to_string(), offer, reply }).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// A WHEP offer for `room`: the viewer's id and the SDP answer.
    pub async fn whep(&self, room: &str, offer: String) -> Result<(ParticipantId, String), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Whep { room: room.to_string(), offer, reply }).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// A participant leaves (WHIP/WHEP DELETE, or removed by an operator).
    pub async fn leave(&self, id: ParticipantId) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Leave { id, reply }).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// An operator removes a participant from a room.
    pub async fn remove(&self, room: &str, id: ParticipantId) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Remove { room: room.to_string(), id, reply }).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// A member joins `room` (room protocol).
    pub async fn join(&self, room: &str, name: &str, client: ClientType) -> Result<Joined, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Join { room: room.to_string(), name: name.to_string(), client, reply }).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// A member's SDP offer: the answer.
    pub async fn offer(&self, id: ParticipantId, sdp: String) -> Result<String, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Offer { id, sdp, reply }).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// A member's answer to the SFU's offer.
    pub async fn answer(&self, id: ParticipantId, sdp: String) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Answer { id, sdp, reply }).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// A member's request (moderator actions, its state).
    pub async fn act(&self, id: ParticipantId, action: Action) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::Act { id, action, reply }).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// A SIP phone joins `room` (dial-plan target `conference:{room}`).
    pub async fn phone_join(&self, room: &str, name: &str, codec: PhoneCodec) -> Result<PhoneJoined, SfuError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Cmd::PhoneJoin { room: room.to_string(), name: name.to_string(), codec, reply }).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// One RTP payload from a phone.
    pub fn phone_audio(&self, id: ParticipantId, payload: Vec<u8>) {
        let _ = self.tx.send(Cmd::PhoneAudio { id, payload });
    }

    /// The phone hung up.
    pub fn phone_leave(&self, id: ParticipantId) {
        let _ = self.tx.send(Cmd::PhoneLeave { id });
    }

    /// Every room with its members.
    pub async fn rooms(&self) -> Vec<RoomView> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Rooms { reply }).is_err() {
            return vec![];
        }
        rx.await.unwrap_or_default()
    }
}

/// Binds the media socket (before the process reports it started) and runs the SFU on
/// `rt`. `cfg.media_addr` may have port 0: the bound port is used.
pub fn start(rt: &tokio::runtime::Handle, mut cfg: SfuConfig, tokens: HashMap<String, String>) -> Result<SfuHandle, String> {
    let std_sock = std::net::UdpSocket::bind(cfg.media_addr).map_err(|e| format!("SFU media socket {}: {e}", cfg.media_addr))?;
    // Bursts (key frames to many subscribers, a join storm keeping the task busy) must not
    // overflow the kernel's default 208 KB: dropped STUN checks end ICE sessions.
    let s2 = socket2::SockRef::from(&std_sock);
    let _ = s2.set_recv_buffer_size(8 << 20);
    let _ = s2.set_send_buffer_size(8 << 20);
    std_sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    cfg.media_addr = std_sock.local_addr().map_err(|e| e.to_string())?;
    let media_addr = cfg.media_addr;
    let (tx, rx) = mpsc::unbounded_channel();
    let _guard = rt.enter();
    let sock = tokio::net::UdpSocket::from_std(std_sock).map_err(|e| e.to_string())?;
    if cfg.tcp_addr.is_some() {
        // ICE-TCP on the same address and port as the UDP socket.
        let l = std::net::TcpListener::bind(media_addr).map_err(|e| format!("SFU ICE-TCP listener {media_addr}: {e}"))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
        cfg.tcp_addr = Some(media_addr);
        rt.spawn(tcp_accept(l, tx.clone()));
    }
    rt.spawn(run(Sfu::new(cfg), sock, rx));
    Ok(SfuHandle { tx, media_addr, tokens: std::sync::Arc::new(tokens) })
}

/// Most ICE-TCP connections at once; more are closed at once.
const TCP_MAX: usize = 4096;
/// An ICE-TCP connection with nothing received for this long is closed (ICE consent checks
/// come every few seconds on a live one, RFC 7675).
const TCP_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Accepts ICE-TCP connections: each gets a reader (RFC 4571 frames to the SFU task) and a
/// writer (the SFU's datagrams for it, framed).
async fn tcp_accept(l: tokio::net::TcpListener, tx: mpsc::UnboundedSender<Cmd>) {
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let Ok((conn, peer)) = l.accept().await else {
            // Out of descriptors, say: try again a little later, not in a busy loop.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        if open.load(std::sync::atomic::Ordering::Relaxed) >= TCP_MAX {
            continue; // dropped: closed
        }
        let _ = conn.set_nodelay(true);
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, open) = (tx.clone(), open.clone());
        tokio::spawn(async move {
            tcp_conn(conn, peer, &tx).await;
            let _ = tx.send(Cmd::TcpClosed { peer });
            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

/// One ICE-TCP connection: RFC 4571 frames (16-bit length, then a STUN, DTLS, RTP or RTCP
/// packet) both ways until either side closes or it idles for [`TCP_IDLE`].
async fn tcp_conn(conn: tokio::net::TcpStream, peer: SocketAddr, tx: &mpsc::UnboundedSender<Cmd>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = conn.into_split();
    let (wtx, mut wrx) = mpsc::unbounded_channel::<Vec<u8>>();
    if tx.send(Cmd::TcpOpen { peer, writer: wtx }).is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        let mut out = Vec::with_capacity(2048);
        while let Some(d) = wrx.recv().await {
            let Ok(len) = u16::try_from(d.len()) else { continue };
            out.clear();
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&d);
            if wr.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 2048];
    loop {
        let mut len = [0u8; 2];
        let Ok(Ok(_)) = tokio::time::timeout(TCP_IDLE, rd.read_exact(&mut len)).await else { break };
        let n = u16::from_be_bytes(len) as usize;
        if n > buf.len() {
            buf.resize(n, 0);
        }
        let Ok(Ok(_)) = tokio::time::timeout(TCP_IDLE, rd.read_exact(&mut buf[..n])).await else { break };
        if tx.send(Cmd::TcpFrame { peer, data: buf[..n].to_vec() }).is_err() {
            break;
        }
    }
    writer.abort();
}

/// The runtime's metric handles.
struct SfuMetrics {
    forwarded: metrics::Counter,
    received: metrics::Counter,
    timeouts: metrics::Counter,
    participants: metrics::Gauge,
    rooms: metrics::Gauge,
    busy: metrics::Gauge,
    load_cap: metrics::Gauge,
}

/// Shortest time between two timer passes over the participants' sessions.
const TICK: std::time::Duration = std::time::Duration::from_millis(1);

/// Datagrams taken from the media socket per wake-up (after the first).
const RECV_BATCH: usize = 63;

async fn run(mut sfu: Sfu, sock: tokio::net::UdpSocket, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let local = sock.local_addr().unwrap_or_else(|_| ([127, 0, 0, 1], 0).into());
    let mut buf = vec![0u8; 2048];
    let mut subs: HashMap<ParticipantId, mpsc::UnboundedSender<Signal>> = HashMap::new();
    let mut phones: HashMap<ParticipantId, mpsc::UnboundedSender<PhoneEvent>> = HashMap::new();
    let mut tcp: HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>> = HashMap::new();
    let mut last_timeout = Instant::now();
    // The thread's busy share, measured over a second and given to the core (`handle_load`).
    let (mut window, mut idle) = (Instant::now(), std::time::Duration::ZERO);
    // Metric handles taken once (a registry lookup per wake-up otherwise).
    let m = SfuMetrics {
        forwarded: metrics::counter!("edge_sfu_frames_forwarded_total"),
        received: metrics::counter!("edge_sfu_frames_received_total"),
        timeouts: metrics::counter!("edge_sfu_session_timeouts_total"),
        participants: metrics::gauge!("edge_sfu_participants"),
        rooms: metrics::gauge!("edge_sfu_rooms"),
        busy: metrics::gauge!("edge_sfu_busy_ratio"),
        load_cap: metrics::gauge!("edge_sfu_load_video_cap"),
    };
    loop {
        // str0m asks for its timeout again at once while written packets wait for its send
        // pass (reasons Pacer(Immediate), SendStream): taken at most once per `TICK`, so one
        // pass sends what many packets left (measured in frame mode in
        // `benches/sfu_forward.rs`: taking them at once cost 1.3-5x the CPU).
        let waiting = Instant::now();
        let deadline = sfu.poll_timeout().unwrap_or(waiting + std::time::Duration::from_secs(1)).max(last_timeout + TICK);
        if waiting >= window + std::time::Duration::from_secs(1) {
            let busy = 1.0 - (idle.as_secs_f32() / (waiting - window).as_secs_f32()).min(1.0);
            m.busy.set(busy as f64);
            m.load_cap.set(sfu.handle_load(busy).map_or(-1.0, |c| c as f64));
            (window, idle) = (waiting, std::time::Duration::ZERO);
        }
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                let now = Instant::now();
                idle += now - waiting;
                match cmd {
                    Cmd::Whip { room, offer, reply } => { let _ = reply.send(sfu.handle_whip(now, &room, &offer)); }
                    Cmd::Whep { room, offer, reply } => { let _ = reply.send(sfu.handle_whep(now, &room, &offer)); }
                    Cmd::Leave { id, reply } => { let _ = reply.send(sfu.handle_leave(now, id)); }
                    Cmd::Remove { room, id, reply } => { let _ = reply.send(sfu.handle_remove(now, &room, id)); }
                    Cmd::Join { room, name, client, reply } => {
                        let r = sfu.handle_join(now, &room, &name, client).map(|id| {
                            let (tx, rx) = mpsc::unbounded_channel();
                            subs.insert(id, tx);
                            Joined { id, roster: sfu.roster(&room), signals: rx }
                        });
                        let _ = reply.send(r);
                    }
                    Cmd::Offer { id, sdp, reply } => { let _ = reply.send(sfu.handle_offer(now, id, &sdp)); }
                    Cmd::Answer { id, sdp, reply } => { let _ = reply.send(sfu.handle_answer(now, id, &sdp)); }
                    Cmd::Act { id, action, reply } => { let _ = reply.send(sfu.handle_action(now, id, action)); }
                    Cmd::PhoneJoin { room, name, codec, reply } => {
                        let r = sfu.handle_phone_join(now, &room, &name, codec).map(|id| {
                            let (tx, rx) = mpsc::unbounded_channel();
                            phones.insert(id, tx);
                            PhoneJoined { id, events: rx }
                        });
                        let _ = reply.send(r);
                    }
                    Cmd::PhoneAudio { id, payload } => sfu.handle_phone_audio(now, id, &payload),
                    Cmd::PhoneLeave { id } => {
                        phones.remove(&id);
                        let _ = sfu.handle_phone_leave(now, id);
                    }
                    Cmd::TcpOpen { peer, writer } => { tcp.insert(peer, writer); }
                    Cmd::TcpFrame { peer, data } => sfu.handle_receive_on(now, str0m::net::Protocol::Tcp, peer, local, &data),
                    Cmd::TcpClosed { peer } => { tcp.remove(&peer); }
                    Cmd::Rooms { reply } => {
                        let rooms = sfu
                            .rooms()
                            .map(|(id, r)| RoomView { id: id.clone(), participants: r.members().to_vec(), quality: sfu.quality(id) })
                            .collect();
                        let _ = reply.send(rooms);
                    }
                }
            }
            r = sock.recv_from(&mut buf) => {
                let now = Instant::now();
                idle += now - waiting;
                if let Ok((n, src)) = r {
                    sfu.handle_receive(now, src, local, &buf[..n]);
                    // What else is queued, up to a batch: the subscribers it is forwarded
                    // to are polled once for the batch (in `poll_transmit`).
                    for _ in 0..RECV_BATCH {
                        let Ok((n, src)) = sock.try_recv_from(&mut buf) else { break };
                        sfu.handle_receive(now, src, local, &buf[..n]);
                    }
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                last_timeout = Instant::now();
                idle += last_timeout - waiting;
                sfu.handle_timeout(last_timeout);
            }
        }
        while let Some(t) = sfu.poll_transmit() {
            if t.proto != str0m::net::Protocol::Udp {
                if let Some(w) = tcp.get(&t.destination) {
                    let _ = w.send(t.data);
                }
                continue;
            }
            if let Err(e) = sock.try_send_to(&t.data, t.destination)
                && e.kind() == std::io::ErrorKind::WouldBlock
            {
                let _ = sock.send_to(&t.data, t.destination).await;
            }
        }
        while let Some((id, data)) = sfu.poll_phone_audio() {
            if let Some(tx) = phones.get(&id) {
                let _ = tx.send(PhoneEvent::Audio(data));
            }
        }
        while let Some((id, sig)) = sfu.poll_signal() {
            if let (Some(tx), Signal::Closed { reason }) = (phones.get(&id), &sig) {
                let _ = tx.send(PhoneEvent::Closed(reason.clone()));
                phones.remove(&id);
                continue;
            }
            let closed = matches!(sig, Signal::Closed { .. });
            if let Some(tx) = subs.get(&id) {
                let _ = tx.send(sig);
            }
            if closed {
                subs.remove(&id);
            }
        }
        while let Some((room, e)) = sfu.poll_event() {
            tracing::info!(room, event = ?e, "room event");
        }
        while let Some(q) = sfu.poll_quality() {
            let (kind, dir) = (q.q.kind, q.q.direction);
            metrics::histogram!("edge_sfu_loss_ratio", "kind" => kind, "direction" => dir).record(q.q.loss_pct / 100.0);
            metrics::histogram!("edge_sfu_jitter_seconds", "kind" => kind, "direction" => dir).record(q.q.jitter_ms / 1000.0);
            if let Some(r) = q.q.rtt_ms {
                metrics::histogram!("edge_sfu_rtt_seconds", "kind" => kind, "direction" => dir).record(r / 1000.0);
            }
            if let Some(m) = q.q.mos {
                metrics::histogram!("edge_sfu_audio_mos", "direction" => dir).record(m);
            }
        }
        let st = sfu.take_stats();
        m.forwarded.increment(st.frames_forwarded);
        m.received.increment(st.frames_in);
        m.timeouts.increment(st.rtc_timeouts);
        m.participants.set(sfu.participant_count() as f64);
        m.rooms.set(sfu.rooms().count() as f64);
    }
}
