//! Hostile PyTorch checkpoints the other tests leave out: unknown opcodes, unbalanced
//! stacks, memo abuse, deep nesting, huge declared lengths, and zip archives whose
//! directory lies (a bomb of declared sizes, too many entries). Each is an error
//! naming the file, from `convert`, `load` and `verify` alike: never a panic, never
//! an allocation of what the file merely declares.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tensorstream::internals::{convert_pytorch, unpickle};
use tensorstream::Loader;

/// A zip holding `data.pkl` with `pickle`, written by tests/pytorch_fixtures.py.
fn raw_zip(dir: &Path, name: &str, pickle: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let pkl = dir.join(format!("{name}.pkl"));
    std::fs::write(&pkl, pickle).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pytorch_fixtures.py");
    let st = Command::new("python3")
        .arg(&script)
        .args(["raw"])
        .arg(&path)
        .arg(&pkl)
        .status()
        .expect("python3 is needed for these tests");
    assert!(st.success());
    path
}

/// Every way in refuses `path` quickly with an error naming it, and `words`.
fn refused_everywhere(path: &Path, words: &str) {
    let start = Instant::now();
    let e = Loader::new().load(path).unwrap_err().to_string();
    assert!(
        e.contains(path.to_str().unwrap()) && e.contains(words),
        "{e}"
    );
    let out = path.with_extension("out");
    let e = convert_pytorch(path, &out, None, u64::MAX)
        .unwrap_err()
        .to_string();
    assert!(e.contains(words), "{e}");
    assert!(!out.exists());
    for cmd in ["load", "verify", "inspect"] {
        let o = Command::new(env!("CARGO_BIN_EXE_tensorstream"))
            .arg(cmd)
            .arg(path)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{cmd} {}", path.display());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(text.contains(words), "{cmd}: {text}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

/// `n` dicts, each the value of key "a" in the one before: `{"a": {"a": ...}}`.
fn nested_dicts(n: usize) -> Vec<u8> {
    let mut p = b"\x80\x02".to_vec();
    for _ in 0..n {
        p.extend_from_slice(b"}X\x01\x00\x00\x00a");
    }
    p.push(b'}');
    p.extend(std::iter::repeat_n(b's', n));
    p.push(b'.');
    p
}

/// A dict put in the memo under `n` distinct indices (LONG_BINPUT).
fn many_memo_entries(n: u32) -> Vec<u8> {
    let mut p = b"\x80\x02}".to_vec();
    for i in 0..n {
        p.push(b'r');
        p.extend_from_slice(&i.to_le_bytes());
    }
    p.push(b'.');
    p
}

#[test]
fn malformed_pickles_are_errors_never_panics() {
    let mut deep_marks = b"\x80\x02".to_vec();
    deep_marks.extend(std::iter::repeat_n(b'(', 100_000));
    deep_marks.push(b'.');
    // A memo index of 2^32 - 1 is fine (the memo is a map, nothing is allocated for
    // the indices below it); more entries than the memo's limit are not.
    let far = b"\x80\x02}r\xff\xff\xff\xff0j\xff\xff\xff\xff.";
    assert!(unpickle(far).is_ok());
    let cases: [(&str, Vec<u8>); 9] = [
        ("unknown opcode", b"\x80\x02\xff.".to_vec()),
        ("pop of an empty stack", b"\x80\x020.".to_vec()),
        ("stop with an empty stack", b"\x80\x02.".to_vec()),
        ("a tuple without its mark", b"\x80\x02(tt.".to_vec()),
        (
            "memo read before it is written",
            b"\x80\x02}h\x05.".to_vec(),
        ),
        (
            "more memo entries than the limit",
            many_memo_entries((1 << 20) + 1),
        ),
        ("100,000 nested marks", deep_marks),
        (
            "a string declaring 4 GiB",
            b"\x80\x02X\xff\xff\xff\xffab.".to_vec(),
        ),
        (
            "a long declaring 2 GiB",
            b"\x80\x02\x8b\xff\xff\xff\x7f\x01.".to_vec(),
        ),
    ];
    for (what, p) in &cases {
        assert!(unpickle(p).is_err(), "{what}");
        // Every prefix too: a pickle cut anywhere is an error.
        for n in 0..p.len().min(64) {
            assert!(unpickle(&p[..n]).is_err(), "{what}, first {n} bytes");
        }
    }
}

#[test]
fn malformed_pickles_in_a_checkpoint_are_refused_by_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for (name, p) in [
        ("opcode.bin", b"\x80\x02\xff.".to_vec()),
        ("unbalanced.bin", b"\x80\x020.".to_vec()),
        ("memo.bin", b"\x80\x02}h\x05.".to_vec()),
        ("huge_string.bin", b"\x80\x02X\xff\xff\xff\xffab.".to_vec()),
    ] {
        let path = raw_zip(dir.path(), name, &p);
        refused_everywhere(&path, "data.pkl");
    }
}

#[test]
fn dicts_nested_past_the_limit_are_refused_without_deep_recursion() {
    // The unpickler builds them iteratively; naming their tensors stops at depth 64.
    let dir = tempfile::tempdir().unwrap();
    let path = raw_zip(dir.path(), "deep.bin", &nested_dicts(100_000));
    refused_everywhere(&path, "nested deeper than");
}

/// A stored zip of one entry `name`, whose central directory declares `size` bytes
/// (and `count` entries), whatever the bytes that follow.
fn lying_zip(name: &str, data: &[u8], size: u32, count: u16) -> Vec<u8> {
    let mut z = Vec::new();
    let crc = 0u32;
    z.extend_from_slice(b"PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&(name.len() as u16).to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(name.as_bytes());
    z.extend_from_slice(data);
    let cd = z.len() as u32;
    z.extend_from_slice(b"PK\x01\x02\x14\x00\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&size.to_le_bytes());
    z.extend_from_slice(&(name.len() as u16).to_le_bytes());
    z.extend_from_slice(&[0u8; 12]);
    z.extend_from_slice(&0u32.to_le_bytes());
    z.extend_from_slice(name.as_bytes());
    let cd_len = z.len() as u32 - cd;
    z.extend_from_slice(b"PK\x05\x06\x00\x00\x00\x00");
    z.extend_from_slice(&count.to_le_bytes());
    z.extend_from_slice(&count.to_le_bytes());
    z.extend_from_slice(&cd_len.to_le_bytes());
    z.extend_from_slice(&cd.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    z
}

#[test]
fn zip_directories_that_lie_about_sizes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pkl = b"\x80\x02}.";
    // The honest archive opens (an empty state dict), so the lies below are what fails.
    let honest = dir.path().join("honest.bin");
    std::fs::write(&honest, lying_zip("archive/data.pkl", pkl, 4, 1)).unwrap();
    let ckpt = tensorstream::Checkpoint::open(&honest).unwrap();
    assert_eq!(ckpt.tensor_count(), 0);
    for (name, size, count, words) in [
        // A bomb of declared bytes: 4 GiB in a file of a hundred.
        ("bomb.bin", u32::MAX - 1, 1, "runs past the end of the file"),
        ("count.bin", 4, 0xFFFE, "central directory cut short"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, lying_zip("archive/data.pkl", pkl, size, count)).unwrap();
        refused_everywhere(&path, words);
    }
}
