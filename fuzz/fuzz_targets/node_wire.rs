//! What the node's transport reads from peers before the engine sees it: the frames of every
//! libp2p stream (a length, then bytes) and the read protocol's requests and pages. A frame
//! over its limit is refused from its length alone (`-malloc_limit_mb` in `.ci/run` catches
//! an allocation for it); bad bytes are errors, never panics; what decodes encodes again.
//!
//! The two modules are the node's own files, included by path: the node is a binary crate,
//! and building it here would put its whole network stack under sanitizers.
#![no_main]

#[path = "../../node/src/frames.rs"]
#[allow(dead_code)]
mod frames;
#[path = "../../node/src/read_wire.rs"]
#[allow(dead_code)]
mod read_wire;

use libfuzzer_sys::fuzz_target;
use read_wire::{PeerPage, PeerRead};

/// A frame limit far below the fuzzer's allocation limit, so a frame read beyond its limit
/// would show.
const FRAME_MAX: usize = 1 << 20;

fuzz_target!(|bytes: &[u8]| {
    let mut stream = futures::io::Cursor::new(bytes);
    while let Ok(frame) = futures::executor::block_on(frames::read_frame(&mut stream, FRAME_MAX)) {
        assert!(frame.len() <= FRAME_MAX, "a frame over its limit was read");
        let mut again = Vec::new();
        futures::executor::block_on(frames::write_frame(
            &mut futures::io::Cursor::new(&mut again),
            &frame,
            FRAME_MAX,
        ))
        .expect("a frame read writes again");
        assert_eq!(again.len(), frames::LENGTH_BYTES + frame.len());
    }
    if let Ok(read) = PeerRead::decode(bytes) {
        let again = read.encode().expect("a decoded read encodes");
        assert_eq!(PeerRead::decode(&again), Ok(read), "a read changed on its way back");
    }
    if let Ok(page) = PeerPage::decode(bytes) {
        PeerPage::decode(&page.encode()).expect("a decoded page decodes again");
    }
});
