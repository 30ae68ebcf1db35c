//! Live connections (flows) and how to reach them from any worker.

use crate::transport::{FlowId, Transport};
use bytes::Bytes;
use dashmap::DashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// A connection's writer queue.
#[derive(Clone)]
pub struct FlowHandle {
    pub tx: mpsc::UnboundedSender<Bytes>,
    pub transport: Transport,
    pub remote: SocketAddr,
}

/// Every open connection, by id and by (transport, remote address) for reuse.
#[derive(Default)]
pub struct Flows {
    next: AtomicU64,
    by_id: DashMap<FlowId, FlowHandle>,
    by_addr: DashMap<(Transport, SocketAddr), FlowId>,
}

impl Flows {
    pub fn register(&self, transport: Transport, remote: SocketAddr) -> (FlowId, mpsc::UnboundedReceiver<Bytes>) {
        let id = FlowId(self.next.fetch_add(1, Ordering::Relaxed) + 1);
        let (tx, rx) = mpsc::unbounded_channel();
        self.by_id.insert(id, FlowHandle { tx, transport, remote });
        self.by_addr.insert((transport, remote), id);
        (id, rx)
    }

    pub fn get(&self, id: FlowId) -> Option<FlowHandle> {
        self.by_id.get(&id).map(|h| h.clone())
    }

    pub fn by_addr(&self, transport: Transport, remote: SocketAddr) -> Option<FlowHandle> {
        let id = *self.by_addr.get(&(transport, remote))?;
        self.get(id)
    }

    pub fn remove(&self, id: FlowId) {
        if let Some((_, h)) = self.by_id.remove(&id) {
            self.by_addr.remove_if(&(h.transport, h.remote), |_, v| *v == id);
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
