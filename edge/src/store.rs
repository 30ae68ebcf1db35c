//! Embedded persistence: registration bindings and call records survive a crash (`kill -9`).
//!
//! [`Store`] is the interface (a Redis backend for clusters can implement it later);
//! [`SqliteStore`] is the embedded default: one SQLite file in the data directory, WAL
//! journal, `synchronous = NORMAL` (a committed transaction is in the WAL before `commit`
//! returns, so it survives the process being killed; only a power loss can lose the last
//! transactions). SQLite rather than a key-value store because the call log is queried by
//! user, time range and direction, which is plain SQL; operators can open the file with the
//! `sqlite3` shell.
//!
//! The cores never touch the store: they queue [`StoreOp`]s, and the runtime writes each
//! batch in one transaction before it sends the responses of that batch (a REGISTER is
//! answered 200 only after its bindings are committed).

use crate::location::{Binding, Source};
use crate::media::anchor::CallRecord;
use crate::transport::Transport;
use rusqlite::{Connection, params};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A write the runtime must commit before sending the responses queued with it.
#[derive(Debug, Clone)]
pub enum StoreOp {
    /// The complete current binding list of an address of record (empty: none left).
    Bindings { aor: String, bindings: Vec<Binding> },
    /// A finished call.
    CallRecord(Box<CallRecord>),
}

/// The same instant on the monotonic clock and on the wall clock (to store expiries).
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    pub instant: Instant,
    pub unix: f64,
}

impl WallClock {
    fn to_unix(self, at: Instant) -> f64 {
        if at >= self.instant {
            self.unix + at.duration_since(self.instant).as_secs_f64()
        } else {
            self.unix - self.instant.duration_since(at).as_secs_f64()
        }
    }
    fn to_instant(self, unix: f64) -> Option<Instant> {
        let d = unix - self.unix;
        if d >= 0.0 { self.instant.checked_add(Duration::from_secs_f64(d)) } else { self.instant.checked_sub(Duration::from_secs_f64(-d)) }
    }
}

/// A store failure (the caller logs it; SIP keeps working from memory).
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// A call-log query.
#[derive(Debug, Clone, Default)]
pub struct CallQuery {
    /// Calls from or to this user (matched against the From and To URIs' user part).
    pub user: Option<String>,
    /// Unix seconds: calls that ended in `[since, until)`.
    pub since: Option<f64>,
    pub until: Option<f64>,
    pub limit: usize,
}

/// A user created through the admin API (only HA1 hashes, never the password).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredUser {
    pub name: String,
    pub ha1_md5: Option<String>,
    pub ha1_sha256: Option<String>,
    pub max_contacts: Option<u32>,
}

/// An upstream (trunk) created through the admin API.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredUpstream {
    pub name: String,
    pub uri: String,
    pub priority: u32,
    pub anchor_media: Option<bool>,
    /// `keep`, `plain` or `sdes`.
    pub srtp: Option<String>,
    /// Targets, selection, limits, trust, credentials, probing.
    pub options: crate::trunk::TrunkOptions,
}

/// Persistence of the edge's state.
pub trait Store: Send + Sync {
    /// Creates or replaces an upstream.
    fn put_upstream(&self, u: &StoredUpstream) -> Result<(), StoreError>;
    /// Deletes an upstream; `false` if there was none.
    fn delete_upstream(&self, name: &str) -> Result<bool, StoreError>;
    /// Every stored upstream.
    fn load_upstreams(&self) -> Result<Vec<StoredUpstream>, StoreError>;
    /// Creates or replaces a route.
    fn put_route(&self, r: &crate::core::Route) -> Result<(), StoreError>;
    /// Deletes a route; `false` if there was none.
    fn delete_route(&self, name: &str) -> Result<bool, StoreError>;
    /// Every stored route (not yet checked: see `Route::checked`).
    fn load_routes(&self) -> Result<Vec<crate::core::Route>, StoreError>;
    /// Creates or replaces a user.
    fn put_user(&self, u: &StoredUser) -> Result<(), StoreError>;
    /// Deletes a user (and its bindings); `false` if there was none.
    fn delete_user(&self, name: &str, aor: &str) -> Result<bool, StoreError>;
    /// Every stored user.
    fn load_users(&self) -> Result<Vec<StoredUser>, StoreError>;
    /// Commits a batch atomically.
    fn write(&self, clock: WallClock, ops: &[StoreOp]) -> Result<(), StoreError>;
    /// Bindings that have not expired at `clock`, with their remaining lifetime.
    fn load_bindings(&self, clock: WallClock) -> Result<Vec<(String, Binding)>, StoreError>;
    /// Call records, newest first, each as its JSON object (with `ended_at`).
    fn call_records(&self, q: &CallQuery) -> Result<Vec<serde_json::Value>, StoreError>;
}

/// The embedded SQLite store.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bindings (
    aor TEXT NOT NULL, uri TEXT NOT NULL, params TEXT NOT NULL, expires_at REAL NOT NULL,
    call_id TEXT NOT NULL, cseq INTEGER NOT NULL, instance TEXT, reg_id INTEGER, path TEXT NOT NULL,
    transport INTEGER NOT NULL, source TEXT NOT NULL, since REAL NOT NULL,
    PRIMARY KEY (aor, uri)
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT, call_id TEXT NOT NULL, ended_at REAL NOT NULL,
    from_uri TEXT NOT NULL, to_uri TEXT NOT NULL, reason TEXT NOT NULL, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_ended ON calls (ended_at);
CREATE TABLE IF NOT EXISTS upstreams (
    name TEXT PRIMARY KEY, uri TEXT NOT NULL, priority INTEGER NOT NULL, anchor_media INTEGER, srtp TEXT
);
CREATE TABLE IF NOT EXISTS routes (
    name TEXT PRIMARY KEY, priority INTEGER NOT NULL, prefix TEXT, domain TEXT, upstream TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS route_specs (
    name TEXT PRIMARY KEY, spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS upstream_options (
    name TEXT PRIMARY KEY, options TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, ha1_md5 TEXT, ha1_sha256 TEXT, max_contacts INTEGER
);
";

impl SqliteStore {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(SqliteStore { conn: Mutex::new(conn) })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError("lock poisoned".into()))
    }
}

fn user_of(uri: &str) -> String {
    let rest = uri.split_once(':').map(|(_, r)| r).unwrap_or(uri);
    rest.split(['@', ';', '>']).next().unwrap_or("").to_string()
}

impl Store for SqliteStore {
    fn put_upstream(&self, u: &StoredUpstream) -> Result<(), StoreError> {
        let opts = serde_json::to_string(&u.options).map_err(|e| StoreError(e.to_string()))?;
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO upstreams (name, uri, priority, anchor_media, srtp) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![u.name, u.uri, u.priority, u.anchor_media, u.srtp],
        )?;
        tx.execute("INSERT OR REPLACE INTO upstream_options (name, options) VALUES (?1, ?2)", params![u.name, opts])?;
        tx.commit()?;
        Ok(())
    }

    fn put_route(&self, r: &crate::core::Route) -> Result<(), StoreError> {
        let spec = serde_json::to_string(r).map_err(|e| StoreError(e.to_string()))?;
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO routes (name, priority, prefix, domain, upstream) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![r.name, r.priority, r.prefix, r.domain, r.upstreams.first()],
        )?;
        tx.execute("INSERT OR REPLACE INTO route_specs (name, spec) VALUES (?1, ?2)", params![r.name, spec])?;
        tx.commit()?;
        Ok(())
    }

    fn delete_route(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM routes WHERE name = ?1", params![name])?;
        tx.execute("DELETE FROM route_specs WHERE name = ?1", params![name])?;
        tx.commit()?;
        Ok(n > 0)
    }

    fn load_routes(&self) -> Result<Vec<crate::core::Route>, StoreError> {
        let conn = self.lock()?;
        let mut st = conn.prepare(
            "SELECT r.name, r.priority, r.prefix, r.domain, r.upstream, s.spec FROM routes r LEFT JOIN route_specs s ON s.name = r.name",
        )?;
        let rows = st.query_map([], |r| {
            let spec: Option<String> = r.get(5)?;
            if let Some(route) = spec.and_then(|s| serde_json::from_str::<crate::core::Route>(&s).ok()) {
                return Ok(route);
            }
            // Stored before routes had more than one trunk.
            let up: String = r.get(4)?;
            let (name, priority, prefix, domain): (String, u32, Option<String>, Option<String>) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let v = serde_json::json!({"name": name, "priority": priority, "prefix": prefix, "regex": null, "domain": domain, "upstreams": [up]});
            serde_json::from_value(v).map_err(|_| rusqlite::Error::InvalidQuery)
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn delete_upstream(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM upstreams WHERE name = ?1", params![name])?;
        tx.execute("DELETE FROM upstream_options WHERE name = ?1", params![name])?;
        tx.commit()?;
        Ok(n > 0)
    }

    fn load_upstreams(&self) -> Result<Vec<StoredUpstream>, StoreError> {
        let conn = self.lock()?;
        let mut st = conn.prepare(
            "SELECT u.name, u.uri, u.priority, u.anchor_media, u.srtp, o.options FROM upstreams u \
             LEFT JOIN upstream_options o ON o.name = u.name ORDER BY u.name",
        )?;
        let rows = st.query_map([], |r| {
            let opts: Option<String> = r.get(5)?;
            Ok(StoredUpstream {
                name: r.get(0)?,
                uri: r.get(1)?,
                priority: r.get(2)?,
                anchor_media: r.get(3)?,
                srtp: r.get(4)?,
                options: opts.and_then(|o| serde_json::from_str(&o).ok()).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn put_user(&self, u: &StoredUser) -> Result<(), StoreError> {
        self.lock()?.execute(
            "INSERT OR REPLACE INTO users (name, ha1_md5, ha1_sha256, max_contacts) VALUES (?1, ?2, ?3, ?4)",
            params![u.name, u.ha1_md5, u.ha1_sha256, u.max_contacts],
        )?;
        Ok(())
    }

    fn delete_user(&self, name: &str, aor: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM users WHERE name = ?1", params![name])?;
        tx.execute("DELETE FROM bindings WHERE aor = ?1", params![aor])?;
        tx.commit()?;
        Ok(n > 0)
    }

    fn load_users(&self) -> Result<Vec<StoredUser>, StoreError> {
        let conn = self.lock()?;
        let mut st = conn.prepare("SELECT name, ha1_md5, ha1_sha256, max_contacts FROM users ORDER BY name")?;
        let rows =
            st.query_map([], |r| Ok(StoredUser { name: r.get(0)?, ha1_md5: r.get(1)?, ha1_sha256: r.get(2)?, max_contacts: r.get(3)? }))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn write(&self, clock: WallClock, ops: &[StoreOp]) -> Result<(), StoreError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock()?;
        let tx = conn.transaction()?;
        for op in ops {
            match op {
                StoreOp::Bindings { aor, bindings } => {
                    tx.execute("DELETE FROM bindings WHERE aor = ?1", params![aor])?;
                    for b in bindings {
                        let path = serde_json::to_string(&b.path.iter().map(|p| p.to_string()).collect::<Vec<_>>()).unwrap_or_default();
                        tx.execute(
                            "INSERT OR REPLACE INTO bindings VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                            params![
                                aor,
                                &*b.uri,
                                &*b.params,
                                clock.to_unix(b.expires),
                                &*b.call_id,
                                b.cseq,
                                b.instance.as_deref(),
                                b.reg_id,
                                path,
                                b.source.transport.index(),
                                b.source.addr.to_string(),
                                clock.to_unix(b.since),
                            ],
                        )?;
                    }
                }
                StoreOp::CallRecord(r) => {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    if let Some(o) = v.as_object_mut() {
                        o.insert("ended_at".into(), serde_json::json!(clock.unix));
                    }
                    let reason = match &v["reason"] {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    tx.execute(
                        "INSERT INTO calls (call_id, ended_at, from_uri, to_uri, reason, record) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![r.call_id, clock.unix, r.from, r.to, reason, v.to_string()],
                    )?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn load_bindings(&self, clock: WallClock) -> Result<Vec<(String, Binding)>, StoreError> {
        let conn = self.lock()?;
        conn.execute("DELETE FROM bindings WHERE expires_at <= ?1", params![clock.unix])?;
        let mut st = conn.prepare(
            "SELECT aor, uri, params, expires_at, call_id, cseq, instance, reg_id, path, transport, source, since FROM bindings",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, f64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, u32>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<u32>>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, u8>(9)?,
                r.get::<_, String>(10)?,
                r.get::<_, f64>(11)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (aor, uri, prm, exp, call_id, cseq, instance, reg_id, path, transport, source, since) = row?;
            let (Some(expires), Some(transport), Ok(addr)) = (clock.to_instant(exp), Transport::from_index(transport), source.parse())
            else {
                continue;
            };
            let path: Vec<String> = serde_json::from_str(&path).unwrap_or_default();
            out.push((
                aor,
                Binding {
                    uri: uri.into(),
                    params: prm.into(),
                    expires,
                    call_id: call_id.into(),
                    cseq,
                    instance: instance.map(Into::into),
                    reg_id,
                    path: path.into_iter().map(Into::into).collect(),
                    // Connections do not survive a restart: the binding is reached anew.
                    source: Source { transport, addr, flow: None },
                    since: clock.to_instant(since).unwrap_or(clock.instant),
                },
            ));
        }
        Ok(out)
    }

    fn call_records(&self, q: &CallQuery) -> Result<Vec<serde_json::Value>, StoreError> {
        let conn = self.lock()?;
        let mut st = conn
            .prepare("SELECT from_uri, to_uri, record FROM calls WHERE ended_at >= ?1 AND ended_at < ?2 ORDER BY ended_at DESC, id DESC")?;
        let rows = st.query_map(params![q.since.unwrap_or(0.0), q.until.unwrap_or(f64::MAX)], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?))
        })?;
        let mut out = Vec::new();
        let limit = if q.limit == 0 { 1000 } else { q.limit };
        for row in rows {
            let (from, to, rec) = row?;
            if let Some(u) = &q.user
                && user_of(&from) != *u
                && user_of(&to) != *u
            {
                continue;
            }
            if let Ok(v) = serde_json::from_str(&rec) {
                out.push(v);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

/// The current wall clock (for the runtime).
#[allow(clippy::disallowed_methods)]
pub fn wall_clock() -> WallClock {
    WallClock { instant: Instant::now(), unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0) }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn binding(uri: &str, expires: Instant, now: Instant) -> Binding {
        Binding {
            uri: uri.into(),
            params: ";transport=udp".into(),
            expires,
            call_id: "c1".into(),
            cseq: 3,
            instance: Some("<urn:uuid:1>".into()),
            reg_id: Some(1),
            path: vec!["<sip:p1;lr>".into()],
            source: Source { transport: Transport::Tcp, addr: "127.0.0.1:5070".parse().unwrap(), flow: Some(crate::transport::FlowId(4)) },
            since: now,
        }
    }

    #[test]
    fn bindings_come_back_with_their_remaining_expiry_and_expired_ones_do_not() {
        let dir = tempfile_dir();
        let s = SqliteStore::open(&dir.join("t.db")).unwrap();
        let clock = wall_clock();
        let now = clock.instant;
        let ops = vec![StoreOp::Bindings {
            aor: "alice@x".into(),
            bindings: vec![
                binding("sip:a@1.2.3.4", now + Duration::from_secs(600), now),
                binding("sip:b@1.2.3.4", now + Duration::from_secs(1), now),
            ],
        }];
        s.write(clock, &ops).unwrap();
        drop(s);
        // "Restart" 2 s later: the short binding expired, the other has ~598 s left.
        let s = SqliteStore::open(&dir.join("t.db")).unwrap();
        let later = WallClock { instant: now + Duration::from_secs(2), unix: clock.unix + 2.0 };
        let got = s.load_bindings(later).unwrap();
        assert_eq!(got.len(), 1);
        let (aor, b) = &got[0];
        assert_eq!((aor.as_str(), &*b.uri, b.cseq, b.reg_id), ("alice@x", "sip:a@1.2.3.4", 3, Some(1)));
        let left = b.expires.duration_since(later.instant).as_secs_f64();
        assert!((597.0..=598.5).contains(&left), "{left}");
        assert_eq!(b.source.flow, None);
        assert_eq!(b.path.len(), 1);
        // Replacing the list with an empty one removes them.
        s.write(later, &[StoreOp::Bindings { aor: "alice@x".into(), bindings: vec![] }]).unwrap();
        assert!(s.load_bindings(later).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("edge-store-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::create_dir_all(&d);
        d
    }
}
