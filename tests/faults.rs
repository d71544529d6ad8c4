//! Hostile conditions during a load: injected read errors, files truncated or
//! rewritten mid-load, cancellation, staging bounds, many shards, and the message a
//! user sees for each kind of error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use tensorstream::internals::{host_memory, reset_host_peak};
use tensorstream::{CancelToken, Checkpoint, Dtype, ErrorKind, IoBackend, Loader};

/// Host-memory counters are process-wide: tests that read them run one at a time.
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

const BACKENDS: [IoBackend; 5] = IoBackend::ALL;

fn dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Writes a file of `n` random tensors of `elems` elements each with the reference
/// writer; returns the path and the reference bytes by name.
fn write_random(
    dir: &Path,
    name: &str,
    dtype: safetensors::Dtype,
    n: usize,
    elems: usize,
    seed: u64,
) -> (PathBuf, HashMap<String, Vec<u8>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let esize = dtype.bitsize() / 8;
    let data: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let mut v = vec![0u8; elems * esize];
            rng.fill(&mut v[..]);
            (format!("layer.{i}.weight"), v)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(k, v)| (k.clone(), TensorView::new(dtype, vec![elems], v).unwrap()))
        .collect();
    let path = dir.join(name);
    safetensors::serialize_to_file(views, None, &path).unwrap();
    (path, data.into_iter().collect())
}

fn try_backends() -> Vec<IoBackend> {
    BACKENDS.to_vec()
}

fn unsupported(e: &tensorstream::Error) -> bool {
    e.kind() == ErrorKind::Unsupported
}

#[test]
fn failing_nth_read_errors_for_every_backend_and_frees_everything() {
    let _g = lock();
    let d = dir();
    let (path, _) = write_random(
        d.path(),
        "m.safetensors",
        safetensors::Dtype::F32,
        8,
        300_000,
        1,
    );
    for backend in try_backends() {
        for dtype in [None, Some(Dtype::BF16)] {
            let (before, _) = host_memory();
            let r = Loader::new()
                .io(backend)
                .dtype(dtype)
                .chunk_size(256 << 10)
                .queue_depth(4)
                .fail_nth_read(3)
                .load(&path);
            match r {
                Err(e) if unsupported(&e) => {
                    eprintln!("skipping {backend:?}: {e}");
                    continue;
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Io, "{backend:?}: {e}");
                    let msg = e.to_string();
                    assert!(
                        msg.contains("m.safetensors") && msg.contains("read"),
                        "{msg}"
                    );
                }
                Ok(_) => panic!("{backend:?}: a failed read must fail the load"),
            }
            let (after, _) = host_memory();
            assert_eq!(
                after, before,
                "{backend:?}: host memory leaked after a failed load"
            );
        }
    }
}

#[test]
fn truncation_during_the_load_is_an_error_and_returns_no_tensors() {
    let _g = lock();
    for backend in try_backends() {
        let d = dir();
        let (path, _) = write_random(
            d.path(),
            "t.safetensors",
            safetensors::Dtype::F16,
            16,
            200_000,
            2,
        );
        let ckpt = Checkpoint::open(&path).unwrap();
        // Another thread truncates the file once the load has started; the first
        // progress report waits until it has, so the race is the same every run.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let p2 = path.clone();
        let truncator = std::thread::spawn(move || {
            if go_rx.recv().is_ok() {
                let f = std::fs::OpenOptions::new().write(true).open(&p2).unwrap();
                f.set_len(100_000).unwrap();
                let _ = done_tx.send(());
            }
        });
        let once = std::sync::Once::new();
        let go_tx = Mutex::new(go_tx);
        let done_rx = Mutex::new(done_rx);
        let r = Loader::new()
            .io(backend)
            .chunk_size(64 << 10)
            .queue_depth(1)
            .progress(move |_, _| {
                once.call_once(|| {
                    let _ = go_tx.lock().unwrap().send(());
                    let _ = done_rx.lock().unwrap().recv();
                });
            })
            .load_checkpoint(&ckpt);
        truncator.join().unwrap();
        match r {
            Err(e) if unsupported(&e) => eprintln!("skipping {backend:?}: {e}"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::FileChanged, "{backend:?}: {e}");
                assert!(e.to_string().contains("t.safetensors"), "{e}");
            }
            Ok(_) => panic!("{backend:?}: a truncated file must not load"),
        }
    }
}

#[test]
fn a_file_rewritten_in_place_during_the_load_is_an_error() {
    let _g = lock();
    let d = dir();
    let (path, _) = write_random(
        d.path(),
        "w.safetensors",
        safetensors::Dtype::F16,
        4,
        100_000,
        3,
    );
    let ckpt = Checkpoint::open(&path).unwrap();
    let p2 = path.clone();
    let once = Arc::new(std::sync::Once::new());
    let r = Loader::new()
        .io(IoBackend::Pread)
        .chunk_size(64 << 10)
        .queue_depth(1)
        .progress(move |_, _| {
            once.call_once(|| {
                use std::io::{Seek, SeekFrom, Write};
                let mut f = std::fs::OpenOptions::new().write(true).open(&p2).unwrap();
                f.seek(SeekFrom::End(-16)).unwrap();
                f.write_all(&[0xAB; 16]).unwrap();
                let t = std::time::SystemTime::now() + Duration::from_secs(5);
                f.set_modified(t).unwrap();
            });
        })
        .load_checkpoint(&ckpt);
    let e = r.expect_err("a file modified during the load must not load");
    assert_eq!(e.kind(), ErrorKind::FileChanged, "{e}");
    assert!(e.to_string().contains("modified during the load"), "{e}");
}

#[test]
fn a_file_that_changed_size_after_validation_is_refused() {
    let _g = lock();
    let d = dir();
    let (path, _) = write_random(
        d.path(),
        "s.safetensors",
        safetensors::Dtype::U8,
        2,
        5000,
        4,
    );
    let ckpt = Checkpoint::open(&path).unwrap();
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.set_len(ckpt.shards[0].file_len + 10).unwrap();
    let e = Loader::new().load_checkpoint(&ckpt).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FileChanged);
    let msg = e.to_string();
    assert!(
        msg.contains("s.safetensors") && msg.contains("when its header was validated"),
        "{msg}"
    );
}

#[test]
fn cancel_before_and_during_a_load() {
    let _g = lock();
    let d = dir();
    let (path, _) = write_random(
        d.path(),
        "c.safetensors",
        safetensors::Dtype::F32,
        32,
        250_000,
        5,
    );
    let token = CancelToken::new();
    token.cancel();
    let e = Loader::new().cancel_token(token).load(&path).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled);
    assert_eq!(e.to_string(), "load cancelled");

    // From another thread, while the load runs (small reads, one at a time).
    let (before, _) = host_memory();
    let token = CancelToken::new();
    let loader = Loader::new()
        .io(IoBackend::Pread)
        .chunk_size(4096)
        .queue_depth(1)
        .cancel_token(token.clone());
    let p = path.clone();
    let started = Arc::new(std::sync::Barrier::new(2));
    let s2 = Arc::clone(&started);
    let h = std::thread::spawn(move || {
        let loader = loader.progress({
            let once = std::sync::Once::new();
            move |_, _| {
                once.call_once(|| {
                    s2.wait();
                })
            }
        });
        let t = Instant::now();
        (loader.load(&p), t)
    });
    started.wait();
    let cancelled_at = Instant::now();
    token.cancel();
    let (r, _) = h.join().unwrap();
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled, "{e}");
    // Promptly: one 4 KiB read is at most in flight. Generous bound for a noisy machine.
    assert!(cancelled_at.elapsed() < Duration::from_secs(10));
    assert_eq!(host_memory().0, before, "memory freed after cancel");
}

#[test]
fn staging_bound_holds_for_every_backend() {
    let _g = lock();
    let d = dir();
    let (path, _) = write_random(
        d.path(),
        "b.safetensors",
        safetensors::Dtype::F32,
        16,
        500_000,
        6,
    );
    let chunk = 256u64 << 10;
    let staging = 1u64 << 20; // 4 slots
    for backend in try_backends() {
        for dtype in [None, Some(Dtype::BF16)] {
            reset_host_peak();
            let (base, _) = host_memory();
            let m = match Loader::new()
                .io(backend)
                .dtype(dtype)
                .chunk_size(chunk)
                .staging_bytes(staging)
                .load(&path)
            {
                Err(e) if unsupported(&e) => continue,
                r => r.unwrap(),
            };
            let (_, peak) = host_memory();
            let out = m.stats().output_bytes;
            // Destinations hold the output (plus alignment slack); staging is fixed.
            let bound = out + staging + 64 * 4096;
            assert!(
                peak - base <= bound,
                "{backend:?} {dtype:?}: peak {} > bound {bound} (output {out})",
                peak - base
            );
            drop(m);
        }
    }
}

#[test]
fn a_thousand_shards_load_with_few_file_descriptors() {
    let _g = lock();
    let d = dir();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut want = HashMap::new();
    for i in 0..1000 {
        let mut v = vec![0u8; 64 + (i % 7) * 4];
        rng.fill(&mut v[..]);
        let name = format!("t{i:04}");
        let view = TensorView::new(safetensors::Dtype::U8, vec![v.len()], &v).unwrap();
        safetensors::serialize_to_file(
            vec![(name.clone(), view)],
            None,
            &d.path().join(format!("s{i:04}.safetensors")),
        )
        .unwrap();
        want.insert(name, v);
    }
    let m = Loader::new().load(d.path()).unwrap();
    assert_eq!(m.len(), 1000);
    for (k, v) in &want {
        assert_eq!(m.get(k).unwrap().host_bytes().unwrap(), &v[..], "{k}");
    }
    // The CLI under a 64-descriptor limit, when prlimit is available.
    match std::process::Command::new("prlimit")
        .args(["--nofile=64:64", env!("CARGO_BIN_EXE_tensorstream"), "load"])
        .arg(d.path())
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("skipping the descriptor-limit run: prlimit unavailable ({e})"),
    }
}

#[test]
fn a_header_of_200k_tensors_validates() {
    let _g = lock();
    use std::fmt::Write;
    let mut json = String::from("{");
    for i in 0..200_000u64 {
        if i > 0 {
            json.push(',');
        }
        write!(
            json,
            r#""t{i}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{}]}}"#,
            i + 1
        )
        .unwrap();
    }
    json.push('}');
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.extend((0..200_000u32).map(|i| (i * 7 + 3) as u8));
    let t = Instant::now();
    let h =
        tensorstream::Header::parse_prefix(Path::new("big"), &bytes, bytes.len() as u64).unwrap();
    eprintln!("200,000-tensor header validated in {:?}", t.elapsed());
    assert_eq!(h.tensors.len(), 200_000);
    assert_eq!(h.tensor("t199999").unwrap().begin, 199_999);
}

/// Each error kind, and the message a user sees.
#[test]
fn error_messages_name_the_file_the_tensor_and_the_rule() {
    let _g = lock();
    let d = dir();
    let p = d.path();
    // Io: missing file.
    let e = Loader::new().load(p.join("nope.safetensors")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(
        e.to_string()
            .starts_with(&format!("{}: open: ", p.join("nope.safetensors").display())),
        "{e}"
    );
    // InvalidHeader: length lie.
    let f = p.join("lie.safetensors");
    let mut b = 1000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    std::fs::write(&f, &b).unwrap();
    let e = Loader::new().load(&f).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidHeader);
    assert_eq!(
        e.to_string(),
        format!(
            "{}: invalid header: header length 1000 runs past the end of the 10-byte file",
            f.display()
        )
    );
    // InvalidTensor: shape that does not match the offsets.
    let f = p.join("shape.safetensors");
    let json = r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
    let mut b = (json.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(json.as_bytes());
    b.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    std::fs::write(&f, &b).unwrap();
    let e = Loader::new().load(&f).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidTensor);
    assert_eq!(e.tensor(), Some("w"));
    assert_eq!(
        e.to_string(),
        format!(
            "{}: tensor 'w': shape [3] of F32 needs 12 bytes but data_offsets [0, 8) hold 8",
            f.display()
        )
    );
    // InvalidCheckpoint: index naming a missing shard.
    let idx = p.join("model.safetensors.index.json");
    std::fs::write(&idx, r#"{"weight_map":{"a.weight":"model-1.safetensors"}}"#).unwrap();
    let e = Loader::new().load(&idx).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCheckpoint);
    assert_eq!(
        e.to_string(),
        format!(
            "{}: shard model-1.safetensors (holding tensor 'a.weight', among others) is missing",
            idx.display()
        )
    );
    // InvalidArgument: a filter that matches nothing.
    let (good, _) = write_random(p, "good.safetensors", safetensors::Dtype::U8, 1, 10, 8);
    let e = Loader::new().only("missing.*").load(&good).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(
        e.to_string().contains("no tensor of") && e.to_string().contains("'missing.*'"),
        "{e}"
    );
    // Unsupported or Cuda: a GPU load on this machine.
    let e = Loader::new()
        .device(tensorstream::Device::Cuda(0))
        .load(&good);
    if let Err(e) = e {
        if cfg!(feature = "cuda") {
            assert_eq!(e.kind(), ErrorKind::Cuda, "{e}");
            assert!(e.to_string().starts_with("CUDA: "), "{e}");
        } else {
            assert_eq!(e.kind(), ErrorKind::Unsupported);
            assert!(e.to_string().contains("--features cuda"), "{e}");
        }
    }
    // The same from `prepare` (which pins staging ahead of a CUDA load); on the CPU it
    // has nothing to do.
    Loader::new().prepare().unwrap();
    Loader::new().release_staging();
    let r = Loader::new()
        .device(tensorstream::Device::Cuda(0))
        .prepare();
    if !cfg!(feature = "cuda") {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("--features cuda"), "{e}");
    } else if let Err(e) = r {
        assert_eq!(e.kind(), ErrorKind::Cuda, "{e}");
    }
    // FileChanged and Cancelled are asserted in their own tests above.
}
