//! Fuzzes the SIP parser, typed header views, the forwarding writer and stream framing.
//! Run: `cargo fuzz run sip_message -s none` (stable), or with AddressSanitizer under
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run sip_message`.
#![no_main]

use bytes::Bytes;
use edge::msg::framing::Framer;
use edge::msg::write::{Forward, error_response_raw};
use edge::msg::{HeaderName, Message, NameAddr, SipUri, Via};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Message::parse(Bytes::copy_from_slice(data)) {
        Ok(m) => {
            let _ = m.validate();
            let _ = (m.call_id(), m.cseq(), m.top_via(), m.from_hdr(), m.to_hdr(), m.max_forwards());
            for n in [HeaderName::Via, HeaderName::Route, HeaderName::Contact, HeaderName::RecordRoute] {
                for v in m.values(n) {
                    let _ = Via::parse(v);
                    if let Some(na) = NameAddr::parse(v) {
                        let _ = SipUri::parse(na.uri);
                    }
                }
            }
            let out = Forward { drop_vias: 1, drop_routes: 1, max_forwards: Some(1), ..Default::default() }.write(&m);
            let _ = Message::parse(out);
        }
        Err(e) => {
            let _ = error_response_raw(data, 400, &e.to_string());
        }
    }
    let mut f = Framer::new(4096);
    f.extend(data);
    while let Ok(Some(_)) = f.next_frame() {}
});
