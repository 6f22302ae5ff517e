//! The btrfs send stream parser (the btrfs driver's O(change) diff reads
//! what BTRFS_IOC_SEND writes): any bytes give commands or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(commands) = genoci::driver::btrfs::send::parse(data) {
        let _ = genoci::driver::btrfs::send::touched_paths(&commands);
    }
});
