//! The restricted unpickler (`convert` of PyTorch checkpoints) on arbitrary bytes.
//!
//! Contract: any input gives `Ok` or `Err`, never a panic, a hang or unbounded
//! memory; the tree's root is one of its values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tensorstream::internals::unpickle;

fuzz_target!(|data: &[u8]| {
    if let Ok(tree) = unpickle(data) {
        assert!(tree.get(tree.root).is_some(), "root outside the tree");
    }
});
