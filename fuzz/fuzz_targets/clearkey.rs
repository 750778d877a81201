#![no_main]

use libfuzzer_sys::fuzz_target;
use licensegate_drm::challenge;
use licensegate_drm::drm::Drm;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = challenge::parse(Drm::ClearKey, data) {
        assert!(info.key_ids.len() <= challenge::MAX_KEY_IDS);
    }
});
