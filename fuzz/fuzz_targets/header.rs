//! `Header::parse_prefix` on arbitrary bytes and file lengths.
//!
//! Contract: any input gives `Ok` or `Err`, never a panic (overflow checks are on in
//! fuzz builds), never a huge allocation (libFuzzer's malloc limit catches those under
//! ASan). On `Ok` the tensors tile `0..data_len()` exactly and the data section ends
//! at `file_len`. When the input is the whole file, the reference `safetensors` crate
//! must reach the same verdict, except that we reject duplicate tensor names.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tensorstream::header::{tensor_bytes, MAX_HEADER_LEN, PREFIX_LEN};
use tensorstream::{Error, Header, Result};

const PATH: &str = "fuzz.safetensors";

fuzz_target!(|data: &[u8]| {
    let path = Path::new(PATH);
    let len = data.len() as u64;
    let whole = Header::parse_prefix(path, data, len);
    if let Ok(h) = &whole {
        check_invariants(h, len);
    }
    check_against_reference(data, &whole);

    // The verdict depends only on the prefix, the JSON and the file length: cutting
    // the data section off changes nothing, cutting into the JSON is an error.
    if let Some(stop) = json_end(data) {
        let cut = Header::parse_prefix(path, &data[..stop], len);
        assert_same(&whole, &cut);
        if stop > PREFIX_LEN as usize {
            assert!(
                Header::parse_prefix(path, &data[..stop - 1], len).is_err(),
                "a header cut one byte short was accepted"
            );
        }
    }

    // Other file lengths, among them one the input chooses (its last eight bytes).
    let mut tail = [0u8; 8];
    let k = data.len().min(8);
    tail[..k].copy_from_slice(&data[data.len() - k..]);
    let chosen = u64::from_le_bytes(tail);
    for file_len in [
        0,
        PREFIX_LEN - 1,
        PREFIX_LEN,
        len.wrapping_sub(1),
        len + 1,
        MAX_HEADER_LEN + PREFIX_LEN,
        u64::MAX,
        chosen,
        chosen % (len + 4096),
    ] {
        if file_len == len {
            continue;
        }
        if let Ok(h) = Header::parse_prefix(path, data, file_len) {
            // The JSON fixes the data length, so at most one file length is valid.
            assert!(
                whole.is_err(),
                "accepted as a {len}-byte file and as a {file_len}-byte file"
            );
            check_invariants(&h, file_len);
        }
    }
});

/// End of the JSON header in `data`, when the prefix says it lies within `data`.
fn json_end(data: &[u8]) -> Option<usize> {
    let prefix: [u8; 8] = data.get(..8)?.try_into().ok()?;
    let n = usize::try_from(u64::from_le_bytes(prefix)).ok()?;
    let stop = n.checked_add(8)?;
    (stop <= data.len()).then_some(stop)
}

fn check_invariants(h: &Header, file_len: u64) {
    assert_eq!(h.file_len, file_len);
    assert!(h.header_len <= MAX_HEADER_LEN);
    assert_eq!(h.data_start(), PREFIX_LEN + h.header_len);
    let data_len = file_len
        .checked_sub(h.data_start())
        .expect("the data section starts past the end of the file");
    assert_eq!(h.data_len(), data_len);
    assert_eq!(h.data_start().checked_add(h.data_len()), Some(file_len));

    let mut names = HashSet::new();
    let mut pos = 0u64;
    for t in &h.tensors {
        assert_eq!(
            t.begin, pos,
            "tensor '{}' does not start where the last ended",
            t.name
        );
        assert!(
            t.end >= t.begin,
            "tensor '{}' ends before it begins",
            t.name
        );
        let want = tensor_bytes(t.dtype, &t.shape).expect("accepted a shape that overflows");
        assert_eq!(
            t.len(),
            want,
            "tensor '{}' has the wrong byte length",
            t.name
        );
        assert_eq!(t.is_empty(), want == 0);
        // numel() multiplies without checks: it must not overflow on an accepted shape.
        let bits = t
            .numel()
            .checked_mul(t.dtype.bits())
            .expect("numel overflows");
        assert_eq!(bits / 8, want);
        assert!(
            names.insert(t.name.as_str()),
            "duplicate tensor '{}' accepted",
            t.name
        );
        assert_eq!(h.tensor(&t.name), Some(t));
        pos = t.end;
    }
    assert_eq!(pos, data_len, "the tensors do not tile the data section");
}

fn assert_same(a: &Result<Header>, b: &Result<Header>) {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.header_len, b.header_len);
            assert_eq!(a.file_len, b.file_len);
            assert_eq!(a.tensors, b.tensors);
            assert_eq!(a.metadata, b.metadata);
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("the verdict changed with bytes past the header: {a:?} vs {b:?}"),
    }
}

/// True for our duplicate-name error, the one rule the reference does not enforce.
fn is_duplicate_name(e: &Error) -> bool {
    e.tensor().is_some() && e.to_string().contains("appears twice")
}

/// The reference sums `last data offset + 8 + n` unchecked, which overflows (a panic
/// under overflow checks) for offsets near `u64::MAX`. Such offsets need 19 or more
/// digits; inputs with a run that long are left out of the comparison.
fn reference_may_overflow(json: &[u8]) -> bool {
    json.split(|b| !b.is_ascii_digit())
        .any(|run| run.len() >= 19)
}

fn check_against_reference(data: &[u8], ours: &Result<Header>) {
    let Some(stop) = json_end(data) else {
        // No complete header: both reject.
        assert!(ours.is_err());
        assert!(safetensors::SafeTensors::read_metadata(data).is_err());
        return;
    };
    if reference_may_overflow(&data[8..stop]) {
        return;
    }
    let theirs = safetensors::SafeTensors::read_metadata(data);
    match (ours, &theirs) {
        (Ok(h), Ok((n, meta))) => {
            assert_eq!(h.header_len, *n as u64);
            let infos = meta.tensors();
            assert_eq!(h.tensors.len(), infos.len());
            for t in &h.tensors {
                let r = infos
                    .get(&t.name)
                    .expect("a tensor the reference does not have");
                assert_eq!(format!("{:?}", r.dtype), t.dtype.name());
                let shape: Vec<u64> = r.shape.iter().map(|&d| d as u64).collect();
                assert_eq!(shape, t.shape);
                assert_eq!(
                    (r.data_offsets.0 as u64, r.data_offsets.1 as u64),
                    (t.begin, t.end)
                );
            }
            let theirs_meta = meta
                .metadata()
                .as_ref()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
            assert_eq!(h.metadata, theirs_meta);
        }
        (Err(_), Err(_)) => {}
        (Err(e), Ok(_)) if is_duplicate_name(e) => {}
        _ => panic!(
            "verdicts differ from the reference: ours {:?}, reference {:?}",
            ours.as_ref().map(|h| h.tensors.len()),
            theirs.as_ref().map(|(n, _)| *n)
        ),
    }
}
