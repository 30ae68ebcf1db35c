//! SRTP and SRTCP (RFC 3711) with AES_CM_128_HMAC_SHA1_80 and _32 (RFC 4568 crypto
//! suites) and AEAD_AES_128_GCM (RFC 7714): key derivation (4.3), AES counter mode (4.1.1),
//! HMAC-SHA1 authentication (4.2), AES-GCM with the RTP header as associated data (RFC 7714
//! 8-9), rollover counter estimation (3.3.1, appendix A) and a 64-packet replay window (3.3.2).
//! Packets are processed in place in a caller's `Vec` (the tag is appended or removed).

use aes::Aes128;
use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::collections::HashMap;

type Ctr = ctr::Ctr128BE<Aes128>;
type HmacSha1 = Hmac<Sha1>;

/// Crypto suites (RFC 4568 6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Profile {
    /// AES_CM_128_HMAC_SHA1_80: 80-bit tags.
    Aes128CmSha1_80,
    /// AES_CM_128_HMAC_SHA1_32: 32-bit RTP tags (SRTCP keeps 80 bits, RFC 4568 6.2.2).
    Aes128CmSha1_32,
    /// AEAD_AES_128_GCM (RFC 7714): 16-byte tag, 12-byte master salt.
    AeadAes128Gcm,
}

impl Profile {
    /// The `a=crypto` suite name.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Aes128CmSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Profile::Aes128CmSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            Profile::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }
    pub fn from_name(s: &str) -> Option<Profile> {
        match s {
            "AES_CM_128_HMAC_SHA1_80" => Some(Profile::Aes128CmSha1_80),
            "AES_CM_128_HMAC_SHA1_32" => Some(Profile::Aes128CmSha1_32),
            "AEAD_AES_128_GCM" => Some(Profile::AeadAes128Gcm),
            _ => None,
        }
    }
    fn rtp_tag(self) -> usize {
        match self {
            Profile::Aes128CmSha1_80 => 10,
            Profile::Aes128CmSha1_32 => 4,
            Profile::AeadAes128Gcm => 16,
        }
    }

    /// Master salt length: 14 bytes for AES-CM, 12 for GCM (RFC 7714 12).
    pub fn salt_len(self) -> usize {
        match self {
            Profile::AeadAes128Gcm => 12,
            _ => 14,
        }
    }
}

/// Why a packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SrtpError {
    #[error("packet too short")]
    Truncated,
    #[error("authentication failed")]
    Auth,
    #[error("replayed packet")]
    Replay,
    #[error("packet too old for the replay window")]
    TooOld,
}

/// Session keys of one direction of RTP or RTCP.
#[derive(Clone)]
struct Keys {
    enc: [u8; 16],
    salt: [u8; 14],
    auth: HmacSha1,
}

/// AES-GCM session key and salt of one of RTP or RTCP (RFC 7714).
#[derive(Clone)]
struct GcmKeys {
    cipher: aes_gcm::Aes128Gcm,
    salt: [u8; 12],
}

impl GcmKeys {
    /// Session keys from the master key and 12-byte salt: the RFC 3711 KDF with the salt
    /// padded to 112 bits (RFC 7714 12, as libsrtp does).
    fn new(master_key: &[u8; 16], master_salt: &[u8; 12], base_label: u8) -> GcmKeys {
        let mut ms = [0u8; 14];
        ms[..12].copy_from_slice(master_salt);
        let mut enc = [0u8; 16];
        let mut salt = [0u8; 14];
        derive(master_key, &ms, base_label, &mut enc);
        derive(master_key, &ms, base_label + 2, &mut salt);
        let mut s12 = [0u8; 12];
        s12.copy_from_slice(&salt[..12]);
        GcmKeys::from_session(&enc, &s12)
    }

    fn from_session(key: &[u8; 16], salt: &[u8; 12]) -> GcmKeys {
        use aes_gcm::KeyInit;
        GcmKeys { cipher: aes_gcm::Aes128Gcm::new(key.into()), salt: *salt }
    }

    /// IV = salt XOR (00 00 || SSRC || ROC || SEQ) for RTP, (00 00 || SSRC || 00 00 || index)
    /// for RTCP (RFC 7714 8.1, 9.1).
    fn iv(&self, ssrc: u32, hi: u16, lo: u32) -> [u8; 12] {
        let mut iv = [0u8; 12];
        iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
        iv[6..8].copy_from_slice(&hi.to_be_bytes());
        iv[8..12].copy_from_slice(&lo.to_be_bytes());
        for (d, s) in iv.iter_mut().zip(self.salt) {
            *d ^= s;
        }
        iv
    }
}

/// AES-CM keystream PRF of the key derivation (RFC 3711 4.3.3).
fn prf(master_key: &[u8; 16], x: &[u8; 14], out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(x);
    out.fill(0);
    let mut c = Ctr::new(master_key.into(), &iv.into());
    c.apply_keystream(out);
}

/// Derives one session key for `label` (RFC 3711 4.3.1, key derivation rate 0).
pub fn derive(master_key: &[u8; 16], master_salt: &[u8; 14], label: u8, out: &mut [u8]) {
    let mut x = *master_salt;
    x[7] ^= label;
    prf(master_key, &x, out);
}

impl Keys {
    fn new(master_key: &[u8; 16], master_salt: &[u8; 14], base_label: u8) -> Keys {
        let mut enc = [0u8; 16];
        let mut auth = [0u8; 20];
        let mut salt = [0u8; 14];
        derive(master_key, master_salt, base_label, &mut enc);
        derive(master_key, master_salt, base_label + 1, &mut auth);
        derive(master_key, master_salt, base_label + 2, &mut salt);
        let auth = <HmacSha1 as Mac>::new_from_slice(&auth).unwrap_or_else(|_| unreachable_hmac());
        Keys { enc, salt, auth }
    }

    /// Encrypts or decrypts `data` for (ssrc, index) (RFC 3711 4.1.1).
    fn crypt(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (i, b) in ssrc.to_be_bytes().iter().enumerate() {
            iv[4 + i] ^= b;
        }
        for (i, b) in index.to_be_bytes()[2..].iter().enumerate() {
            iv[8 + i] ^= b;
        }
        let mut c = Ctr::new((&self.enc).into(), &iv.into());
        c.apply_keystream(data);
    }

    fn tag(&self, parts: &[&[u8]]) -> [u8; 20] {
        let mut m = self.auth.clone();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }
}

fn unreachable_hmac() -> HmacSha1 {
    // HMAC takes keys of any length: this cannot happen.
    panic!("HMAC key rejected")
}

/// 64-packet sliding replay window over 48-bit (or 31-bit) indices (RFC 3711 3.3.2).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayWindow {
    max: Option<u64>,
    bits: u64,
}

impl ReplayWindow {
    /// Checks without recording.
    pub fn check(&self, index: u64) -> Result<(), SrtpError> {
        let Some(max) = self.max else { return Ok(()) };
        if index > max {
            return Ok(());
        }
        let d = max - index;
        if d >= 64 {
            return Err(SrtpError::TooOld);
        }
        if self.bits & (1 << d) != 0 {
            return Err(SrtpError::Replay);
        }
        Ok(())
    }

    /// Records an authenticated index.
    pub fn accept(&mut self, index: u64) {
        match self.max {
            None => {
                self.max = Some(index);
                self.bits = 1;
            }
            Some(max) if index > max => {
                let shift = index - max;
                self.bits = if shift >= 64 { 1 } else { (self.bits << shift) | 1 };
                self.max = Some(index);
            }
            Some(max) => self.bits |= 1 << (max - index),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct RtpState {
    started: bool,
    roc: u32,
    s_l: u16,
    replay: ReplayWindow,
}

impl RtpState {
    /// Index guess for a received sequence number (RFC 3711 appendix A).
    fn estimate(&self, seq: u16) -> (u32, u64) {
        if !self.started {
            return (0, seq as u64);
        }
        let v = if self.s_l < 32768 {
            if seq as i32 - self.s_l as i32 > 32768 { self.roc.wrapping_sub(1) } else { self.roc }
        } else if (self.s_l as i32 - 32768) > seq as i32 {
            self.roc.wrapping_add(1)
        } else {
            self.roc
        };
        (v, ((v as u64) << 16) | seq as u64)
    }

    fn update(&mut self, v: u32, seq: u16) {
        if !self.started {
            self.started = true;
            self.roc = v;
            self.s_l = seq;
        } else if v == self.roc.wrapping_add(1) {
            self.roc = v;
            self.s_l = seq;
        } else if v == self.roc && seq > self.s_l {
            self.s_l = seq;
        }
    }
}

/// One SRTP context: a master key and salt for one direction of one leg.
pub struct Srtp {
    profile: Profile,
    rtp: Keys,
    rtcp: Keys,
    /// AEAD keys (GCM profile only; then `rtp`/`rtcp` are unused).
    gcm: Option<(GcmKeys, GcmKeys)>,
    /// Per-SSRC rollover and replay state (RFC 3711 3.2.1: one context per SSRC).
    states: HashMap<u32, RtpState>,
    /// Sender's SRTCP index.
    srtcp_index: u32,
    rtcp_replay: HashMap<u32, ReplayWindow>,
}

const RTCP_TAG: usize = 10;

fn rtp_header_len(b: &[u8]) -> Result<usize, SrtpError> {
    crate::rtp::RtpHeader::parse(b).map(|h| h.payload_offset).map_err(|_| SrtpError::Truncated)
}

impl Srtp {
    /// A context from the 16-byte master key and 14-byte master salt (RFC 4568 inline key
    /// is the 30 bytes key || salt).
    pub fn new(profile: Profile, master_key: &[u8; 16], master_salt: &[u8; 14]) -> Srtp {
        let gcm = (profile == Profile::AeadAes128Gcm).then(|| {
            let s12: [u8; 12] = master_salt[..12].try_into().unwrap_or([0; 12]);
            (GcmKeys::new(master_key, &s12, 0), GcmKeys::new(master_key, &s12, 3))
        });
        Srtp {
            profile,
            rtp: Keys::new(master_key, master_salt, 0),
            rtcp: Keys::new(master_key, master_salt, 3),
            gcm,
            states: HashMap::new(),
            srtcp_index: 0,
            rtcp_replay: HashMap::new(),
        }
    }

    /// From the master key||salt of an `a=crypto` inline key (30 bytes; 28 for GCM).
    pub fn from_inline(profile: Profile, key_salt: &[u8]) -> Option<Srtp> {
        if key_salt.len() != 16 + profile.salt_len() {
            return None;
        }
        let k: [u8; 16] = key_salt[..16].try_into().ok()?;
        let mut s = [0u8; 14];
        s[..profile.salt_len()].copy_from_slice(&key_salt[16..]);
        Some(Srtp::new(profile, &k, &s))
    }

    /// A GCM context from session key and salt directly (no KDF; RFC 7714 test vectors).
    pub fn gcm_from_session_keys(key: &[u8; 16], salt: &[u8; 12]) -> Srtp {
        let mut s = Srtp::new(Profile::AeadAes128Gcm, key, &[0; 14]);
        s.gcm = Some((GcmKeys::from_session(key, salt), GcmKeys::from_session(key, salt)));
        s
    }

    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// Encrypts and authenticates an RTP packet in place (RFC 3711 3.3).
    pub fn protect_rtp(&mut self, pkt: &mut Vec<u8>) -> Result<(), SrtpError> {
        let hl = rtp_header_len(pkt)?;
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        let st = self.states.entry(ssrc).or_default();
        // Sender side: the rollover counter increments when the sequence number wraps.
        if st.started && seq < st.s_l && st.s_l - seq > 32768 {
            st.roc = st.roc.wrapping_add(1);
        }
        if !st.started || seq > st.s_l || st.s_l - seq > 32768 {
            st.s_l = seq;
        }
        st.started = true;
        let roc = st.roc;
        let index = ((roc as u64) << 16) | seq as u64;
        if let Some((g, _)) = &self.gcm {
            use aes_gcm::aead::AeadInPlace;
            let iv = g.iv(ssrc, (roc >> 16) as u16, (roc << 16) | seq as u32);
            let (head, body) = pkt.split_at_mut(hl);
            let tag = g.cipher.encrypt_in_place_detached(&iv.into(), head, body).map_err(|_| SrtpError::Auth)?;
            pkt.extend_from_slice(&tag);
            return Ok(());
        }
        self.rtp.crypt(ssrc, index, &mut pkt[hl..]);
        let tag = self.rtp.tag(&[pkt, &roc.to_be_bytes()]);
        pkt.extend_from_slice(&tag[..self.profile.rtp_tag()]);
        Ok(())
    }

    /// Authenticates, replay-checks and decrypts an SRTP packet in place.
    pub fn unprotect_rtp(&mut self, pkt: &mut Vec<u8>) -> Result<(), SrtpError> {
        let tl = self.profile.rtp_tag();
        if pkt.len() < 12 + tl {
            return Err(SrtpError::Truncated);
        }
        let body_len = pkt.len() - tl;
        let hl = rtp_header_len(&pkt[..body_len])?;
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        let st = self.states.get(&ssrc).copied().unwrap_or_default();
        let (v, index) = st.estimate(seq);
        st.replay.check(index)?;
        if let Some((g, _)) = &self.gcm {
            use aes_gcm::aead::AeadInPlace;
            let iv = g.iv(ssrc, (v >> 16) as u16, (v << 16) | seq as u32);
            let tag: [u8; 16] = pkt[body_len..].try_into().map_err(|_| SrtpError::Truncated)?;
            let (head, body) = pkt[..body_len].split_at_mut(hl);
            g.cipher.decrypt_in_place_detached(&iv.into(), head, body, &tag.into()).map_err(|_| SrtpError::Auth)?;
            pkt.truncate(body_len);
            let st = self.states.entry(ssrc).or_default();
            st.update(v, seq);
            st.replay.accept(index);
            return Ok(());
        }
        let tag = self.rtp.tag(&[&pkt[..body_len], &v.to_be_bytes()]);
        if !constant_time_eq(&tag[..tl], &pkt[body_len..]) {
            return Err(SrtpError::Auth);
        }
        pkt.truncate(body_len);
        self.rtp.crypt(ssrc, index, &mut pkt[hl..]);
        let st = self.states.entry(ssrc).or_default();
        st.update(v, seq);
        st.replay.accept(index);
        Ok(())
    }

    /// Encrypts and authenticates a (compound) RTCP packet in place (RFC 3711 3.4).
    pub fn protect_rtcp(&mut self, pkt: &mut Vec<u8>) -> Result<(), SrtpError> {
        if pkt.len() < 8 {
            return Err(SrtpError::Truncated);
        }
        let ssrc = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let index = self.srtcp_index & 0x7fff_ffff;
        self.srtcp_index = self.srtcp_index.wrapping_add(1) & 0x7fff_ffff;
        if let Some((_, g)) = &self.gcm {
            // RFC 7714 9: AAD = the 8-byte header || E flag and index; output
            // header || ciphertext || tag || E|index.
            use aes_gcm::aead::AeadInPlace;
            let e_index = (index | 0x8000_0000).to_be_bytes();
            let mut aad = [0u8; 12];
            aad[..8].copy_from_slice(&pkt[..8]);
            aad[8..].copy_from_slice(&e_index);
            let iv = g.iv(ssrc, 0, index);
            let tag = g.cipher.encrypt_in_place_detached(&iv.into(), &aad, &mut pkt[8..]).map_err(|_| SrtpError::Auth)?;
            pkt.extend_from_slice(&tag);
            pkt.extend_from_slice(&e_index);
            return Ok(());
        }
        self.rtcp.crypt(ssrc, index as u64, &mut pkt[8..]);
        pkt.extend_from_slice(&(index | 0x8000_0000).to_be_bytes());
        let tag = self.rtcp.tag(&[pkt]);
        pkt.extend_from_slice(&tag[..RTCP_TAG]);
        Ok(())
    }

    /// Authenticates, replay-checks and decrypts an SRTCP packet in place.
    pub fn unprotect_rtcp(&mut self, pkt: &mut Vec<u8>) -> Result<(), SrtpError> {
        if pkt.len() < 8 + 4 + RTCP_TAG {
            return Err(SrtpError::Truncated);
        }
        if let Some((_, g)) = &self.gcm {
            use aes_gcm::aead::AeadInPlace;
            if pkt.len() < 8 + 16 + 4 {
                return Err(SrtpError::Truncated);
            }
            let n = pkt.len();
            let e_index: [u8; 4] = pkt[n - 4..].try_into().map_err(|_| SrtpError::Truncated)?;
            let index = u32::from_be_bytes(e_index) & 0x7fff_ffff;
            let ssrc = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
            let w = self.rtcp_replay.entry(ssrc).or_default();
            w.check(index as u64)?;
            let tag: [u8; 16] = pkt[n - 20..n - 4].try_into().map_err(|_| SrtpError::Truncated)?;
            let mut aad = [0u8; 12];
            aad[..8].copy_from_slice(&pkt[..8]);
            aad[8..].copy_from_slice(&e_index);
            let iv = g.iv(ssrc, 0, index);
            g.cipher.decrypt_in_place_detached(&iv.into(), &aad, &mut pkt[8..n - 20], &tag.into()).map_err(|_| SrtpError::Auth)?;
            w.accept(index as u64);
            pkt.truncate(n - 20);
            return Ok(());
        }
        let tag_at = pkt.len() - RTCP_TAG;
        let tag = self.rtcp.tag(&[&pkt[..tag_at]]);
        if !constant_time_eq(&tag[..RTCP_TAG], &pkt[tag_at..]) {
            return Err(SrtpError::Auth);
        }
        let e_index = u32::from_be_bytes([pkt[tag_at - 4], pkt[tag_at - 3], pkt[tag_at - 2], pkt[tag_at - 1]]);
        let index = e_index & 0x7fff_ffff;
        let ssrc = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let w = self.rtcp_replay.entry(ssrc).or_default();
        w.check(index as u64)?;
        w.accept(index as u64);
        pkt.truncate(tag_at - 4);
        if e_index & 0x8000_0000 != 0 {
            self.rtcp.crypt(ssrc, index as u64, &mut pkt[8..]);
        }
        Ok(())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn rfc3711_b2_aes_cm_keystream() {
        let key: [u8; 16] = hex("2B7E151628AED2A6ABF7158809CF4F3C").try_into().unwrap();
        let salt: [u8; 14] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap();
        let mut ks = [0u8; 48];
        prf(&key, &salt, &mut ks);
        assert_eq!(ks.to_vec(), hex("E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB 41E95B3BB0A2E8DD477901E4FCA894C0"));
    }

    #[test]
    fn rfc3711_b3_key_derivation() {
        let mk: [u8; 16] = hex("E1F97A0D3E018BE0D64FA32C06DE4139").try_into().unwrap();
        let ms: [u8; 14] = hex("0EC675AD498AFEEBB6960B3AABE6").try_into().unwrap();
        let mut enc = [0u8; 16];
        derive(&mk, &ms, 0, &mut enc);
        assert_eq!(enc.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut salt = [0u8; 14];
        derive(&mk, &ms, 2, &mut salt);
        assert_eq!(salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth = [0u8; 20];
        derive(&mk, &ms, 1, &mut auth);
        assert_eq!(auth[..16].to_vec(), hex("CEBE321F6FF7716B6FD4AB49AF256A15"));
    }

    fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0xca, 0xfe, 0xba, 0xbe];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn protect_unprotect_round_trip_tamper_and_replay() {
        for profile in [Profile::Aes128CmSha1_80, Profile::Aes128CmSha1_32] {
            let (k, s) = ([7u8; 16], [9u8; 14]);
            let (mut tx, mut rx) = (Srtp::new(profile, &k, &s), Srtp::new(profile, &k, &s));
            for seq in [65530u16, 65535, 0, 1, 5] {
                let plain = rtp(seq, b"hello, world");
                let mut p = plain.clone();
                tx.protect_rtp(&mut p).unwrap();
                assert_eq!(p.len(), plain.len() + profile.rtp_tag());
                assert_ne!(&p[12..24], b"hello, world");
                // A flipped bit is refused (and does not consume the index).
                let mut t = p.clone();
                t[14] ^= 1;
                assert_eq!(rx.unprotect_rtp(&mut t), Err(SrtpError::Auth));
                let mut q = p.clone();
                rx.unprotect_rtp(&mut q).unwrap();
                assert_eq!(q, plain, "{profile:?} seq {seq}");
                // Replay of the same packet is refused.
                let mut r = p.clone();
                assert_eq!(rx.unprotect_rtp(&mut r), Err(SrtpError::Replay));
            }
            // The rollover counter advanced across the wrap: ROC 1 for seq 0..5.
            assert_eq!(rx.states[&0xcafebabe].roc, 1);
        }
    }

    #[test]
    fn srtcp_round_trip() {
        let (k, s) = ([1u8; 16], [2u8; 14]);
        let (mut tx, mut rx) = (Srtp::new(Profile::Aes128CmSha1_80, &k, &s), Srtp::new(Profile::Aes128CmSha1_80, &k, &s));
        let mut buf = [0u8; 64];
        let n = crate::rtcp::write_rr(&mut buf, 0x1234, &[]);
        let n2 = crate::rtcp::write_bye(&mut buf[n..], &[0x1234]);
        let plain = buf[..n + n2].to_vec();
        let mut p = plain.clone();
        tx.protect_rtcp(&mut p).unwrap();
        assert_eq!(p.len(), plain.len() + 4 + 10);
        let mut q = p.clone();
        rx.unprotect_rtcp(&mut q).unwrap();
        assert_eq!(q, plain);
        assert_eq!(rx.unprotect_rtcp(&mut p.clone()), Err(SrtpError::Replay));
    }

    #[test]
    fn rfc7714_16_aead_aes_128_gcm_rtp() {
        let key: [u8; 16] = hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
        let salt: [u8; 12] = hex("517569642070726f2071756f").try_into().unwrap();
        let plain = hex("8040f17b 8041f8d3 5501a0b2 47616c6c 69612065 7374206f 6d6e6973 20646976 69736120 696e2070 61727465 73207472 6573");
        let expected = hex(
            "8040f17b 8041f8d3 5501a0b2 f24de3a3 fb34de6c acba861c 9d7e4bca be633bd5 0d294e6f 42a5f47a 51c7d19b 36de3adf 8833 899d7f27 beb16a91 52cf765e e4390cce",
        );
        let mut tx = Srtp::gcm_from_session_keys(&key, &salt);
        assert_eq!(tx.gcm.as_ref().unwrap().0.iv(0x5501a0b2, 0, 0xf17b).to_vec(), hex("51753c6580c2726f20718414"));
        let mut p = plain.clone();
        tx.protect_rtp(&mut p).unwrap();
        assert_eq!(p, expected);
        let mut rx = Srtp::gcm_from_session_keys(&key, &salt);
        rx.unprotect_rtp(&mut p).unwrap();
        assert_eq!(p, plain);
        let mut bad = expected.clone();
        bad[20] ^= 1;
        assert_eq!(Srtp::gcm_from_session_keys(&key, &salt).unprotect_rtp(&mut bad), Err(SrtpError::Auth));
        // SRTCP round trip (RFC 7714 9) and replay.
        let rtcp =
            hex("81c8000d 4d617273 4e545031 4e545032 52545020 0000042a 0000e930 4c756e61 deadbeef deadbeef deadbeef deadbeef deadbeef");
        let mut c = rtcp.clone();
        tx.protect_rtcp(&mut c).unwrap();
        assert_eq!(c.len(), rtcp.len() + 20);
        let mut d = c.clone();
        rx.unprotect_rtcp(&mut d).unwrap();
        assert_eq!(d, rtcp);
        assert_eq!(rx.unprotect_rtcp(&mut c.clone()), Err(SrtpError::Replay));
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        w.accept(100);
        assert_eq!(w.check(100), Err(SrtpError::Replay));
        assert!(w.check(99).is_ok());
        assert_eq!(w.check(36), Err(SrtpError::TooOld));
        w.accept(200);
        assert_eq!(w.check(100), Err(SrtpError::TooOld));
        assert!(w.check(199).is_ok());
    }
}
