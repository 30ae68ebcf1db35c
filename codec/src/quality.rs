//! Call quality: RFC 3550 receive statistics (sequence extension and loss, appendix A.1
//! and A.3; interarrival jitter, section 6.4.1 and appendix A.8) and the ITU-T G.107
//! E-model (R factor and MOS).
//!
//! Codec impairment values (ITU-T G.113 Appendix I, used by G.107):
//!
//! | codec | Ie | Bpl | source |
//! |---|---|---|---|
//! | G.711 (PCMU/PCMA) with packet loss concealment | 0 | 25.1 | G.113 App. I, table I.3 |
//! | G.711 without concealment | 0 | 4.3 | G.113 App. I, table I.3 |
//! | Opus (narrowband-equivalent, 20 ms, in-band FEC off) | 0 | 20 | chosen: G.113 lists no Opus values; Opus at 20+ kbit/s is transparent for speech (Ie 0) and its PLC is weaker than G.711 App. I PLC under random loss; 20 is a conservative middle between 4.3 and 25.1 |

/// Extends 16-bit sequence numbers and counts loss (RFC 3550 A.1/A.3, simplified: no
/// probation; a jump larger than `MAX_DROPOUT` restarts the count).
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    started: bool,
    base: u64,
    max: u64,
    cycles: u64,
    received: u64,
}

const MAX_DROPOUT: u16 = 3000;

impl SeqTracker {
    /// Records one packet's sequence number.
    pub fn record(&mut self, seq: u16) {
        self.received += 1;
        if !self.started {
            self.started = true;
            self.base = seq as u64;
            self.max = seq as u64;
            return;
        }
        let max16 = (self.max & 0xffff) as u16;
        let delta = seq.wrapping_sub(max16);
        if delta == 0 {
            // duplicate
        } else if delta < MAX_DROPOUT {
            if seq < max16 {
                self.cycles += 1 << 16;
            }
            self.max = self.cycles + seq as u64;
        } else if delta > u16::MAX - 100 {
            // late (reordered) packet: counted as received, max unchanged
        } else {
            // very large jump: resynchronise
            self.base = self.cycles + seq as u64;
            self.max = self.base;
            self.received = 1;
        }
    }

    /// Packets expected from the first to the highest sequence seen.
    pub fn expected(&self) -> u64 {
        if !self.started { 0 } else { self.max - self.base + 1 }
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Cumulative loss (may be negative with duplicates: clamped at 0).
    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }

    /// Loss in percent of expected.
    pub fn loss_pct(&self) -> f64 {
        let e = self.expected();
        if e == 0 { 0.0 } else { self.lost() as f64 * 100.0 / e as f64 }
    }
}

/// RFC 3550 A.8 interarrival jitter, in RTP timestamp units.
#[derive(Debug, Clone, Default)]
pub struct Jitter {
    last_transit: Option<i64>,
    jitter: f64,
}

impl Jitter {
    /// `arrival` is the arrival time in the same units as the RTP `timestamp`.
    pub fn record(&mut self, arrival: u64, timestamp: u32) {
        let transit = arrival as i64 - timestamp as i64;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// Current estimate in timestamp units.
    pub fn value(&self) -> f64 {
        self.jitter
    }

    /// Current estimate in milliseconds for a clock rate in Hz.
    pub fn ms(&self, clock_rate: u32) -> f64 {
        self.jitter * 1000.0 / clock_rate as f64
    }
}

/// Codec impairment parameters of the E-model (see the table in the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CodecImpairment {
    /// Equipment impairment factor Ie.
    pub ie: f64,
    /// Packet-loss robustness factor Bpl.
    pub bpl: f64,
}

impl CodecImpairment {
    /// G.711 with packet loss concealment (G.113 App. I).
    pub const G711_PLC: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 25.1 };
    /// G.711 without concealment.
    pub const G711: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 4.3 };
    /// Opus (chosen values, see module docs).
    pub const OPUS: CodecImpairment = CodecImpairment { ie: 0.0, bpl: 20.0 };
}

/// Inputs of one E-model computation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EModelInput {
    pub codec: CodecImpairment,
    /// Packet loss in percent (Ppl).
    pub loss_pct: f64,
    /// Burst ratio BurstR (1 for random loss).
    pub burst_ratio: f64,
    /// One-way mouth-to-ear delay Ta in ms.
    pub delay_ms: f64,
}

/// R with every other G.107 parameter at its default value (Ro - Is = 93.2).
pub const R_DEFAULT: f64 = 93.2;

/// Effective equipment impairment Ie-eff (G.107 (2015) eq. 7-29).
pub fn ie_eff(codec: CodecImpairment, loss_pct: f64, burst_ratio: f64) -> f64 {
    let ppl = loss_pct.clamp(0.0, 100.0);
    let b = burst_ratio.max(1.0);
    codec.ie + (95.0 - codec.ie) * ppl / (ppl / b + codec.bpl)
}

/// Delay impairment Id (G.107 eq. 7-27 to 7-29 with default T = Tr/2 = Ta and no echo):
/// the common simplification Idd for Ta > 100 ms, 0 below.
pub fn id_delay(ta_ms: f64) -> f64 {
    if ta_ms <= 100.0 {
        return 0.0;
    }
    let x = (ta_ms / 100.0).ln() / 2f64.ln();
    25.0 * ((1.0 + x.powi(6)).powf(1.0 / 6.0) - 3.0 * (1.0 + (x / 3.0).powi(6)).powf(1.0 / 6.0) + 2.0)
}

/// Transmission rating factor R (G.107: R = Ro - Is - Id - Ie,eff + A, with A = 0).
pub fn r_factor(i: EModelInput) -> f64 {
    (R_DEFAULT - id_delay(i.delay_ms) - ie_eff(i.codec, i.loss_pct, i.burst_ratio)).clamp(0.0, 100.0)
}

/// MOS (conversational quality estimate) from R (G.107 annex B, eq. B-4).
pub fn mos_from_r(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7.0e-6
    }
}

/// MOS for the inputs.
pub fn mos(i: EModelInput) -> f64 {
    mos_from_r(r_factor(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_wrap_loss_and_reordering() {
        let mut t = SeqTracker::default();
        for s in 65530u16..=65535 {
            t.record(s);
        }
        for s in 0u16..10 {
            if s != 3 {
                t.record(s);
            }
        }
        t.record(3); // late
        assert_eq!(t.expected(), 16);
        assert_eq!(t.lost(), 0);
        let mut t = SeqTracker::default();
        for s in 0u16..100 {
            if s % 10 != 0 {
                t.record(s);
            }
        }
        assert_eq!(t.expected(), 99); // 1..=99 after the first received (1)
        assert_eq!(t.lost(), 9);
    }

    #[test]
    fn jitter_of_a_steady_stream_is_zero_and_grows_with_variation() {
        let mut j = Jitter::default();
        for i in 0..100u32 {
            j.record(1000 + i as u64 * 160, i * 160);
        }
        assert_eq!(j.value(), 0.0);
        let mut j = Jitter::default();
        for i in 0..2000u32 {
            let wobble = if i % 2 == 0 { 0 } else { 80 }; // 10 ms at 8 kHz every other packet
            j.record(1000 + i as u64 * 160 + wobble, i * 160);
        }
        // |D| is 80 every packet: J converges to 80 units = 10 ms.
        assert!((j.ms(8000) - 10.0).abs() < 0.1, "{}", j.ms(8000));
    }

    #[test]
    fn e_model_reference_values() {
        // No impairment: R = 93.2, MOS 4.41.
        let clean = EModelInput { codec: CodecImpairment::G711_PLC, loss_pct: 0.0, burst_ratio: 1.0, delay_ms: 20.0 };
        assert!((r_factor(clean) - 93.2).abs() < 1e-9);
        assert!((mos(clean) - 4.409).abs() < 0.001);
        // 5% random loss on G.711 with PLC: Ie,eff = 95*5/(5+25.1) = 15.78, R = 77.42, MOS 3.92.
        let lossy = EModelInput { loss_pct: 5.0, ..clean };
        assert!((ie_eff(CodecImpairment::G711_PLC, 5.0, 1.0) - 15.781).abs() < 0.01);
        assert!((mos(lossy) - 3.917).abs() < 0.01, "{}", mos(lossy));
        // Bursty loss hurts more than random loss.
        assert!(mos(EModelInput { burst_ratio: 2.0, ..lossy }) < mos(lossy));
        // Delay: no impairment to 100 ms, then growing.
        assert_eq!(id_delay(100.0), 0.0);
        assert!(id_delay(300.0) > id_delay(200.0) && id_delay(200.0) > 0.0);
        assert_eq!(mos_from_r(0.0), 1.0);
        assert_eq!(mos_from_r(120.0), 4.5);
    }
}
