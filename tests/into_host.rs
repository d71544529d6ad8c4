//! Loading into host memory the caller allocated (`Loader::load_into_host`): each
//! chosen tensor lands in the caller's region as the loader's own host load gives it
//! (in the dtype the caller asked for, sliced where rules say), through every backend
//! and chunk size, whatever the region's alignment; not a byte outside the regions is
//! written; a region of the wrong length or dtype is refused, naming the file and the
//! tensor, before anything is written.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{
    disk_tempdir, random_dtype, refused_here, rng, write_file, write_index, Spec, BACKENDS,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore};
use tensorstream::{Checkpoint, Dtype, ErrorKind, HostRegion, IoBackend, Loader, Slice};

const TARGETS: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::BF16];

/// Two shards of random tensors of random dtypes: small ones, ones spanning many
/// chunks, empty ones, and a 2-D BF16 "w.rows" and F16 "w.cols" for slice rules.
fn fixture(dir: &Path, r: &mut StdRng) -> PathBuf {
    let mut map = Vec::new();
    for shard in 0..2 {
        let mut specs = Vec::new();
        for i in 0..r.gen_range(2..7) {
            let dtype = random_dtype(r);
            let shape: Vec<u64> = match r.gen_range(0..4) {
                0 => vec![r.gen_range(0..40)],
                1 => vec![r.gen_range(1..300), r.gen_range(1..300)],
                2 => vec![r.gen_range(1..9), r.gen_range(1..9), r.gen_range(1..2000)],
                _ => vec![],
            };
            specs.push(Spec::random(format!("s{shard}.t{i}"), dtype, &shape, r));
        }
        if shard == 1 {
            specs.push(Spec::random("w.rows", Dtype::BF16, &[64, 777], r));
            specs.push(Spec::random("w.cols", Dtype::F16, &[300, 96], r));
        }
        let file = format!("model-{:05}-of-00002.safetensors", shard + 1);
        write_file(&dir.join(&file), &specs, r.gen_range(0..40));
        map.extend(specs.iter().map(|s| (s.name.clone(), file.clone())));
    }
    write_index(dir, map.iter().map(|(t, f)| (t.as_str(), f.as_str())))
}

/// What the caller asks for one tensor: leave it out, keep its dtype, or convert.
#[derive(Debug, Clone, Copy)]
enum Choice {
    Skip,
    Keep,
    Convert(Dtype),
}

/// The loader's own host load of `ckpt` with `dtype`, by name: dtype and bytes.
fn host_load(l: &Loader, ckpt: &Checkpoint, dtype: Option<Dtype>) -> BTreeMap<String, Vec<u8>> {
    let m = l
        .clone()
        .io(IoBackend::Pread)
        .dtype(dtype)
        .load_checkpoint(ckpt)
        .unwrap();
    m.tensors()
        .map(|t| (t.name.clone(), t.host_bytes().unwrap().to_vec()))
        .collect()
}

/// The absolute file offset of each tensor's first byte, by name.
fn offsets(ckpt: &Checkpoint) -> BTreeMap<String, u64> {
    ckpt.shards
        .iter()
        .flat_map(|h| {
            h.tensors
                .iter()
                .map(move |t| (t.name.clone(), h.data_start() + t.begin))
        })
        .collect()
}

fn one_case(seed: u64, chunk: u64, backend: IoBackend, slices: bool) {
    let dir = disk_tempdir();
    let mut r = rng(seed);
    let path = fixture(dir.path(), &mut r);
    let ckpt = Checkpoint::open(&path).unwrap();
    let mut base = Loader::new().chunk_size(chunk).staging_bytes(chunk * 3);
    if slices {
        base = base
            .rows("w.rows", Slice::Part { rank: 1, world: 4 })
            .columns("w.cols", Slice::Range { start: 7, end: 61 });
    }
    let want: BTreeMap<Option<Dtype>, _> = [None]
        .into_iter()
        .chain(TARGETS.map(Some))
        .map(|d| (d, host_load(&base, &ckpt, d)))
        .collect();
    let at = offsets(&ckpt);
    // Per tensor: the choice, and the region inside an arena of random bytes: at a
    // random offset, or (for half the whole tensors) where a read of the file at an
    // aligned offset lands at an aligned address, as O_DIRECT needs to read in place.
    let mut choices = BTreeMap::new();
    let mut arenas: BTreeMap<String, (Vec<u8>, usize, usize)> = BTreeMap::new();
    for h in &ckpt.shards {
        for t in &h.tensors {
            let c = match r.gen_range(0..4) {
                0 => Choice::Skip,
                1 | 2 if t.dtype.is_convertible_float() => {
                    Choice::Convert(TARGETS[r.gen_range(0..3)])
                }
                _ => Choice::Keep,
            };
            choices.insert(t.name.clone(), c);
            let key = match c {
                Choice::Convert(d) => Some(d),
                _ => None,
            };
            let len = want[&key][&t.name].len();
            let mut arena = vec![0u8; len + 3 * 4096];
            r.fill_bytes(&mut arena);
            let aligned = 4096 - (arena.as_ptr() as usize % 4096);
            let off = if r.gen_bool(0.5) && !t.name.starts_with("w.") {
                aligned + (at[&t.name] % 4096) as usize
            } else {
                r.gen_range(0..4096)
            };
            arenas.insert(t.name.clone(), (arena, off, len));
        }
    }
    if choices.values().all(|c| matches!(c, Choice::Skip)) {
        choices.insert("w.rows".into(), Choice::Keep);
    }
    let before: BTreeMap<String, Vec<u8>> = arenas
        .iter()
        .map(|(k, (a, ..))| (k.clone(), a.clone()))
        .collect();
    let mut regions: BTreeMap<String, &mut [u8]> = arenas
        .iter_mut()
        .map(|(k, (a, off, len))| (k.clone(), &mut a[*off..*off + *len]))
        .collect();
    let mut seen = Vec::new();
    let l = base.clone().io(backend);
    let result = l.load_into_host(&ckpt, |t| {
        seen.push(t.name.to_string());
        let key = match choices[t.name] {
            Choice::Skip => return None,
            Choice::Keep => None,
            Choice::Convert(d) => Some(d),
        };
        // What the spec says is what the loader's own load gives.
        assert_eq!(t.len, want[&None][t.name].len(), "{}", t.name);
        let dtype = key.unwrap_or(t.file_dtype);
        assert_eq!(
            t.len_as(dtype),
            Some(want[&key][t.name].len()),
            "{}",
            t.name
        );
        Some(HostRegion {
            bytes: regions.remove(t.name).unwrap(),
            dtype,
        })
    });
    let stats = match result {
        Err(e) if refused_here(backend, &e) => {
            eprintln!("skipping {backend:?}: {e}");
            return;
        }
        r => r.unwrap(),
    };
    // Without O_DIRECT every read of a tensor kept raw (its dtype, no columns) lands
    // straight in the caller's memory, and only those.
    if matches!(backend, IoBackend::Pread | IoBackend::Buffered) {
        let file_dtype: BTreeMap<&str, Dtype> = ckpt
            .shards
            .iter()
            .flat_map(|h| &h.tensors)
            .map(|t| (t.name.as_str(), t.dtype))
            .collect();
        let raw: u64 = choices
            .iter()
            .filter(|(name, c)| match c {
                Choice::Skip => false,
                _ if slices && name.as_str() == "w.cols" => false,
                Choice::Keep => true,
                Choice::Convert(d) => *d == file_dtype[name.as_str()],
            })
            .map(|(name, _)| want[&None][name].len() as u64)
            .sum();
        assert_eq!(
            stats.in_place_bytes, raw,
            "seed {seed} chunk {chunk} {backend:?}"
        );
    }
    // Every tensor offered once, file by file.
    seen.sort();
    assert_eq!(seen, at.keys().cloned().collect::<Vec<_>>());
    for (name, (arena, off, len)) in &arenas {
        let was = &before[name];
        let what = format!("seed {seed} chunk {chunk} {backend:?} slices {slices}: {name}");
        assert_eq!(
            &arena[..*off],
            &was[..*off],
            "{what}: bytes before the region"
        );
        assert_eq!(
            &arena[off + len..],
            &was[off + len..],
            "{what}: bytes after the region"
        );
        let got = &arena[*off..off + len];
        match choices[name] {
            Choice::Skip => assert_eq!(got, &was[*off..off + len], "{what}: left out"),
            Choice::Keep => assert!(got == want[&None][name].as_slice(), "{what}"),
            Choice::Convert(d) => assert!(got == want[&Some(d)][name].as_slice(), "{what}"),
        }
    }
    assert!(stats.read_bytes > 0 || stats.tensor_bytes == 0);
}

#[test]
fn chosen_tensors_land_in_the_callers_memory_through_every_backend() {
    for (i, backend) in BACKENDS.into_iter().enumerate() {
        for chunk in [4096u64, 3 * 4096, 64 << 10] {
            one_case(
                100 + i as u64 * 10 + chunk / 4096,
                chunk,
                backend,
                chunk != 4096,
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_choices_and_regions_equal_the_loaders_own_load(
        seed in any::<u64>(),
        chunk in prop_oneof![Just(4096u64), Just(8192u64), 4096u64..200_000],
        backend in prop::sample::select(BACKENDS.to_vec()),
        slices in any::<bool>(),
    ) {
        one_case(seed, chunk, backend, slices);
    }
}

#[test]
fn wrong_regions_are_refused_before_anything_is_written() {
    let dir = disk_tempdir();
    let mut r = rng(7);
    let specs = [
        Spec::random("a.f32", Dtype::F32, &[1000], &mut r),
        Spec::random("b.i32", Dtype::I32, &[10, 10], &mut r),
    ];
    let path = dir.path().join("m.safetensors");
    write_file(&path, &specs, 0);
    let ckpt = Checkpoint::open(&path).unwrap();
    let mut a = vec![0x5Au8; 4000];
    let mut b = vec![0xA5u8; 400];
    let l = Loader::new();
    // Offers `bytes` as `dtype` for tensor `name` alone (each region once: the
    // callback may be called for several tensors, and safe code cannot hand out one
    // `&mut` twice).
    fn only<'m>(
        name: &'static str,
        bytes: &'m mut [u8],
        dtype: Dtype,
    ) -> impl FnMut(&tensorstream::TensorSpec<'_>) -> Option<HostRegion<'m>> {
        let mut bytes = Some(bytes);
        move |t| {
            (t.name == name)
                .then(|| bytes.take())
                .flatten()
                .map(|bytes| HostRegion { bytes, dtype })
        }
    }

    // One byte short.
    let e = l
        .load_into_host(&ckpt, only("a.f32", &mut a[..3999], Dtype::F32))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let msg = e.to_string();
    assert!(
        msg.contains("m.safetensors") && msg.contains("'a.f32'") && msg.contains("3999"),
        "{msg}"
    );
    // An integer tensor cannot convert.
    let e = l
        .load_into_host(&ckpt, only("b.i32", &mut b[..200], Dtype::F16))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("'b.i32'"), "{e}");
    // A float converts; its length is that of the conversion (2000 bytes as F16).
    let e = l
        .load_into_host(&ckpt, only("a.f32", &mut a[..], Dtype::F16))
        .unwrap_err();
    assert!(e.to_string().contains("2000 bytes as F16"), "{e}");
    // None chosen.
    let e = l.load_into_host(&ckpt, |_| None).unwrap_err();
    assert!(e.to_string().contains("no tensor was given"), "{e}");
    assert!(a.iter().all(|&x| x == 0x5A) && b.iter().all(|&x| x == 0xA5));

    // A checkpoint assembled by hand with one file twice: its names repeat, and two
    // tensors would share one region. Refused before the callback is called.
    let mut twice = Checkpoint::open(&path).unwrap();
    twice.shards.push(twice.shards[0].clone());
    let e = l
        .load_into_host(&twice, |_| -> Option<HostRegion<'_>> {
            panic!("called for a checkpoint with repeated names")
        })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCheckpoint, "{e}");
    assert!(e.to_string().contains("appears twice"), "{e}");

    // A failed read is an error, not a panic.
    let e = Loader::new()
        .io(IoBackend::Pread)
        .fail_nth_read(1)
        .load_into_host(&ckpt, only("a.f32", &mut a[..], Dtype::F32))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
}

/// With `split_at_tensors` and no alignment, every raw read lies within one tensor and
/// the reads of each tensor cover its bytes exactly once.
#[test]
fn reads_split_at_tensors_lie_within_one_tensor() {
    use tensorstream::plan::{plan, PlanOptions, Target};
    let dir = disk_tempdir();
    let mut r = rng(11);
    let path = fixture(dir.path(), &mut r);
    let ckpt = Checkpoint::open(&path).unwrap();
    for chunk in [4096, 5000, 1 << 20] {
        let opts = PlanOptions {
            align: 1,
            chunk_size: chunk,
            split_at_tensors: true,
            ..PlanOptions::default()
        };
        let p = plan(&ckpt, &opts).unwrap();
        for f in &p.files {
            let mut covered: BTreeMap<&str, u64> = BTreeMap::new();
            for op in f
                .reads
                .iter()
                .filter(|op| matches!(op.target, Target::Raw { .. }))
            {
                let (r0, r1) = (op.offset, op.offset + op.required);
                let inside: Vec<_> = f
                    .tensors
                    .iter()
                    .filter(|t| t.file_offset < r1 && r0 < t.file_offset + t.src_len)
                    .collect();
                assert_eq!(inside.len(), 1, "chunk {chunk}: {op:?} {inside:?}");
                let t = inside[0];
                assert!(
                    t.file_offset <= r0 && r1 <= t.file_offset + t.src_len,
                    "{op:?}"
                );
                *covered.entry(&t.name).or_default() += r1 - r0;
            }
            for t in f.tensors.iter().filter(|t| t.src_len > 0) {
                assert_eq!(covered.get(t.name.as_str()), Some(&t.src_len), "{}", t.name);
            }
        }
    }
}
