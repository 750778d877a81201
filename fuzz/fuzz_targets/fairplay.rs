#![no_main]

use libfuzzer_sys::fuzz_target;
use licensegate_drm::fairplay::{self, CkcSource};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = fairplay::read_request(data, None) {
        assert!(!request.spc.is_empty() && request.spc.len() <= fairplay::MAX_SPC_BYTES);
        if let Some(uri) = &request.uri {
            let _ = fairplay::read_skd_uri(uri);
        }
    }
    let _ = fairplay::read_request(data, Some("application/x-www-form-urlencoded"));
    let _ = fairplay::read_ckc(CkcSource::Any, data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = fairplay::read_skd_uri(text);
    }
});
