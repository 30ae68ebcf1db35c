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

/// Builds the rustls server config (aws-lc-rs provider).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs = load_certs(cert)?;
    let f = std::fs::File::open(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut BufReader::new(f))
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{}: no private key found", key.display()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| format!("TLS certificate: {e}"))?;
    Ok(Arc::new(cfg))
}
