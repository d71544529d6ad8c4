//! Host memory pools: a load into a reused buffer hands back exactly what a load into
//! fresh memory does (the reference bytes, and zeros wherever no read wrote), on every
//! backend; the pool keeps what its limit allows; a failed load gives its buffers back.

mod common;

use std::path::Path;

use common::{disk_tempdir, load_or_skip, reference_file, rng, write_file, Spec, BACKENDS};
use tensorstream::{Checkpoint, Dtype, ErrorKind, HostPool, Loader, Model, Storage};

/// The whole host buffer behind the tensors of a one-file model.
fn raw_buffer(m: &Model) -> Vec<u8> {
    let t = m.tensors().next().expect("a tensor");
    match t.storage().0 {
        Storage::Host(b) => b.as_slice().to_vec(),
        #[allow(unreachable_patterns)]
        _ => panic!("not on the host"),
    }
}

fn buffer_addr(m: &Model) -> usize {
    let t = m.tensors().next().expect("a tensor");
    match t.storage().0 {
        Storage::Host(b) => b.as_slice().as_ptr() as usize,
        #[allow(unreachable_patterns)]
        _ => panic!("not on the host"),
    }
}

/// Random tensors of about 3 MiB (enough for a buffer of its own), with `tail` extra
/// bytes in a last tensor, so that files differ in length by less than a page.
fn write(path: &Path, seed: u64, tail: u64) {
    let mut r = rng(seed);
    let tensors = vec![
        Spec::random("w.0", Dtype::BF16, &[512, 1024], &mut r),
        Spec::random("w.1", Dtype::F32, &[300_001], &mut r),
        Spec::random("w.2", Dtype::U8, &[777_777], &mut r),
        Spec::random("z.tail", Dtype::U8, &[tail], &mut r),
    ];
    write_file(path, &tensors, 5);
}

fn check_against_reference(m: &Model, path: &Path, what: &str) {
    let expected = reference_file(path);
    assert_eq!(m.len(), expected.len(), "{what}");
    for (name, e) in &expected {
        let t = m
            .get(name)
            .unwrap_or_else(|| panic!("{what}: {name} missing"));
        assert_eq!(t.dtype, e.dtype, "{what}: {name}");
        assert_eq!(t.shape, e.shape, "{what}: {name}");
        assert!(
            t.host_bytes() == Some(&e.data[..]),
            "{what}: {name}: bytes differ"
        );
    }
}

#[test]
fn a_reused_buffer_holds_what_a_fresh_one_would() {
    let dir = disk_tempdir();
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    // `a` runs a few KiB further than `b`: where `b`'s buffer holds alignment slack past
    // its end of file, `a`'s held file bytes.
    write(&a, 1, 9_000);
    write(&b, 2, 1_000);
    let ckpt_a = Checkpoint::open(&a).unwrap();
    let ckpt_b = Checkpoint::open(&b).unwrap();
    for backend in BACKENDS {
        let fresh_loader = Loader::new();
        let Some(fresh_b) = load_or_skip(&fresh_loader, backend, &ckpt_b) else {
            continue;
        };
        let fresh_bytes = raw_buffer(&fresh_b);
        drop(fresh_b);

        let pool = HostPool::new(1 << 30);
        let loader = Loader::new().host_pool(pool.clone());
        let model_a = load_or_skip(&loader, backend, &ckpt_a).unwrap();
        check_against_reference(&model_a, &a, &format!("{backend:?} a"));
        let a_bytes = raw_buffer(&model_a);
        let a_addr = buffer_addr(&model_a);
        assert_eq!(
            pool.idle_bytes(),
            0,
            "{backend:?}: buffer in use is not idle"
        );
        drop(model_a);
        assert!(pool.idle_bytes() >= a_bytes.len() as u64, "{backend:?}");

        // The test can fail: somewhere `a`'s buffer holds non-zero bytes where a fresh
        // load of `b` leaves zeros.
        let stale = (0..fresh_bytes.len())
            .filter(|&i| fresh_bytes[i] == 0 && a_bytes.get(i).is_some_and(|&x| x != 0))
            .count();
        assert!(
            stale > 1000,
            "{backend:?}: only {stale} stale bytes to check"
        );

        let model_b = load_or_skip(&loader, backend, &ckpt_b).unwrap();
        assert_eq!(
            buffer_addr(&model_b),
            a_addr,
            "{backend:?}: buffer not reused"
        );
        assert_eq!(pool.idle_bytes(), 0, "{backend:?}");
        check_against_reference(&model_b, &b, &format!("{backend:?} b reused"));
        let b_bytes = raw_buffer(&model_b);
        assert_eq!(b_bytes.len(), fresh_bytes.len(), "{backend:?}");
        let first_diff = b_bytes.iter().zip(&fresh_bytes).position(|(x, y)| x != y);
        assert_eq!(
            first_diff, None,
            "{backend:?}: reused buffer differs from fresh"
        );
    }
}

#[test]
fn the_pool_keeps_no_more_than_its_limit() {
    let dir = disk_tempdir();
    let a = dir.path().join("a.safetensors");
    write(&a, 3, 10);
    let ckpt = Checkpoint::open(&a).unwrap();

    let none = HostPool::new(0);
    let m = Loader::new()
        .host_pool(none.clone())
        .load_checkpoint(&ckpt)
        .unwrap();
    drop(m);
    assert_eq!(none.idle_bytes(), 0);

    let pool = HostPool::new(1 << 30);
    let loader = Loader::new().host_pool(pool.clone());
    let m1 = loader.load_checkpoint(&ckpt).unwrap();
    // A second load while the first holds its buffer gets fresh memory.
    let m2 = loader.load_checkpoint(&ckpt).unwrap();
    assert_ne!(buffer_addr(&m1), buffer_addr(&m2));
    let one = raw_buffer(&m1).len() as u64;
    drop(m1);
    drop(m2);
    assert!(pool.idle_bytes() >= 2 * one);
    pool.clear();
    assert_eq!(pool.idle_bytes(), 0);

    // Room for one buffer only: the second is unmapped.
    let small = HostPool::new(one.next_multiple_of(4096));
    let loader = Loader::new().host_pool(small.clone());
    let m1 = loader.load_checkpoint(&ckpt).unwrap();
    let m2 = loader.load_checkpoint(&ckpt).unwrap();
    drop(m1);
    drop(m2);
    assert_eq!(small.idle_bytes(), one.next_multiple_of(4096));
}

#[test]
fn a_failed_load_returns_its_buffer_and_the_next_load_is_right() {
    let dir = disk_tempdir();
    let a = dir.path().join("a.safetensors");
    write(&a, 4, 4321);
    let ckpt = Checkpoint::open(&a).unwrap();
    let pool = HostPool::new(1 << 30);
    let loader = Loader::new().host_pool(pool.clone()).chunk_size(256 << 10);
    let m = loader.load_checkpoint(&ckpt).unwrap();
    drop(m);
    let idle = pool.idle_bytes();
    assert!(idle > 0);
    let err = loader
        .clone()
        .fail_nth_read(3)
        .load_checkpoint(&ckpt)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert_eq!(pool.idle_bytes(), idle, "the failed load's buffer is back");
    let m = loader.load_checkpoint(&ckpt).unwrap();
    check_against_reference(&m, &a, "after a failed load");
}

#[test]
fn a_reused_converted_area_holds_what_a_fresh_one_would() {
    let dir = disk_tempdir();
    let write_conv = |path: &Path, seed: u64, first: u64| {
        let mut r = rng(seed);
        let tensors = vec![
            Spec::random("c.0", Dtype::BF16, &[first], &mut r),
            Spec::random("c.1", Dtype::F16, &[3], &mut r),
            Spec::random("c.2", Dtype::BF16, &[300_000], &mut r),
        ];
        write_file(path, &tensors, 0);
    };
    // `a`'s first tensor runs further than `b`'s, over `b`'s alignment gap.
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    write_conv(&a, 5, 700_100);
    write_conv(&b, 6, 700_001);
    let (ckpt_a, ckpt_b) = (Checkpoint::open(&a).unwrap(), Checkpoint::open(&b).unwrap());
    let to_f32 = Loader::new().dtype(Some(Dtype::F32));
    let fresh = to_f32.load_checkpoint(&ckpt_b).unwrap();
    let fresh_bytes = raw_buffer(&fresh);
    drop(fresh);

    let pool = HostPool::new(1 << 30);
    let loader = to_f32.clone().host_pool(pool.clone());
    let model_a = loader.load_checkpoint(&ckpt_a).unwrap();
    let a_bytes = raw_buffer(&model_a);
    let a_addr = buffer_addr(&model_a);
    drop(model_a);
    let stale = (0..fresh_bytes.len())
        .filter(|&i| fresh_bytes[i] == 0 && a_bytes.get(i).is_some_and(|&x| x != 0))
        .count();
    assert!(stale > 0, "no stale bytes to check");

    let model_b = loader.load_checkpoint(&ckpt_b).unwrap();
    assert_eq!(buffer_addr(&model_b), a_addr, "converted area not reused");
    for t in model_b.tensors() {
        assert_eq!(t.dtype, Dtype::F32, "{}", t.name);
    }
    let b_bytes = raw_buffer(&model_b);
    assert_eq!(b_bytes.len(), fresh_bytes.len());
    let first_diff = b_bytes.iter().zip(&fresh_bytes).position(|(x, y)| x != y);
    assert_eq!(first_diff, None, "reused converted area differs from fresh");
}
