//! TLS server configuration: a configured PEM certificate, or a self-signed one generated
//! with rcgen on first start and kept in the data directory.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Paths of the certificate and key in use.
pub fn cert_paths(data_dir: &Path, cert: Option<&Path>, key: Option<&Path>) -> (PathBuf, PathBuf) {
    match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        _ => (data_dir.join("tls").join("cert.pem"), data_dir.join("tls").join("key.pem")),
    }
}

/// Generates a self-signed certificate for localhost/127.0.0.1/::1 unless one exists.
pub fn ensure_self_signed(cert: &Path, key: &Path) -> Result<bool, String> {
    if cert.exists() && key.exists() {
        return Ok(false);
    }
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| format!("generating certificate: {e}"))?;
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::write(cert, ck.cert.pem()).map_err(|e| format!("writing {}: {e}", cert.display()))?;
    write_private(key, ck.key_pair.serialize_pem().as_bytes())?;
    Ok(true)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    f.write_all(data).map_err(|e| format!("writing {}: {e}", path.display()))
}

/// A TLS client for connections the edge opens (trunks over TLS, https webhooks): the
/// system's trusted roots plus the certificates in `ca_file` (PEM), if given.
pub fn client_connector(ca_file: Option<&Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(p) = ca_file {
        for c in load_certs(p)? {
            roots.add(c).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    let b = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client: {e}"))?;
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(b.with_root_certificates(roots).with_no_client_auth())))
}

/// Loads a PEM certificate chain.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut BufReader::new(f)).collect();
    let certs = certs.map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// The certificate in use, swappable at run time: new handshakes get the current one,
/// established connections keep theirs (rustls `ResolvesServerCert`).
#[derive(Debug)]
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    /// Modification times of (cert, key) when last loaded (file-change reload).
    loaded: std::sync::Mutex<(Option<std::time::SystemTime>, Option<std::time::SystemTime>)>,
}

fn mtime(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn certified_key(cert: &Path, key: &Path) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    let certs = load_certs(cert)?;
    let f = std::fs::File::open(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key found", key.display()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider.key_provider.load_private_key(key_der).map_err(|e| format!("{}: {e}", key.display()))?;
    let ck = rustls::sign::CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| format!("{} does not belong to {}: {e}", key.display(), cert.display()))?;
    Ok(Arc::new(ck))
}

impl CertStore {
    /// Loads the certificate and key.
    pub fn load(cert: &Path, key: &Path) -> Result<CertStore, String> {
        let ck = certified_key(cert, key)?;
        Ok(CertStore {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: std::sync::RwLock::new(ck),
            loaded: std::sync::Mutex::new((mtime(cert), mtime(key))),
        })
    }

    /// Loads the files again. On error the certificate in use stays. Returns the SHA-256
    /// fingerprint (hex) of the new leaf certificate.
    pub fn reload(&self) -> Result<String, String> {
        let ck = certified_key(&self.cert, &self.key)?;
        let fp = ck.cert.first().map(|c| crate::auth::hex(&<sha2::Sha256 as sha2::Digest>::digest(c.as_ref()))).unwrap_or_default();
        if let Ok(mut cur) = self.current.write() {
            *cur = ck;
        }
        if let Ok(mut l) = self.loaded.lock() {
            *l = (mtime(&self.cert), mtime(&self.key));
        }
        Ok(fp)
    }

    /// Fingerprint (SHA-256, hex) of the certificate in use.
    pub fn fingerprint(&self) -> String {
        let cur = self.current.read().map(|c| c.clone());
        cur.ok()
            .and_then(|c| c.cert.first().map(|d| crate::auth::hex(&<sha2::Sha256 as sha2::Digest>::digest(d.as_ref()))))
            .unwrap_or_default()
    }

    /// Reloads if either file changed since the last load; `None` if unchanged.
    pub fn reload_if_changed(&self) -> Option<Result<String, String>> {
        let now = (mtime(&self.cert), mtime(&self.key));
        let changed = self.loaded.lock().map(|l| *l != now).unwrap_or(false);
        changed.then(|| {
            let r = self.reload();
            if r.is_err()
                && let Ok(mut l) = self.loaded.lock()
            {
                // Do not retry the same broken files every tick.
                *l = now;
            }
            r
        })
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

/// Builds the rustls server config (aws-lc-rs provider) around a reloadable certificate.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, String> {
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(store);
    Ok(Arc::new(cfg))
}
