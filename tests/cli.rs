//! The command-line contract of DESIGN.md: `inspect`, `verify`, `load` (digest, json,
//! only, dtype), `bench`, and the exit codes (0 success, 1 bad input or failed load,
//! 2 usage error, never 101).

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{
    disk_tempdir, reference_files, rng, sha256_hex, write_file, write_index, RefTensor, Spec,
};
use tensorstream::convert::{convert_into, converted_len, output_dtype};
use tensorstream::Dtype;

fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_tensorstream"))
        .args(args)
        .env_remove("TENSORSTREAM_LOG")
        .output()
        .expect("run tensorstream")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed by a signal")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_code(o: &Output, want: i32, what: &str) {
    assert_eq!(
        code(o),
        want,
        "{what}: exit {}\nstdout: {}\nstderr: {}",
        code(o),
        stdout(o),
        stderr(o)
    );
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    /// The single file, or the index of the sharded checkpoint.
    path: PathBuf,
    files: Vec<PathBuf>,
    expected: BTreeMap<String, RefTensor>,
}

fn single() -> Fixture {
    let dir = disk_tempdir();
    let mut r = rng(1);
    let tensors = vec![
        Spec::random("model.embed.weight", Dtype::BF16, &[33, 8], &mut r),
        Spec::random("model.norm.weight", Dtype::F32, &[8], &mut r),
        Spec::random("model.q.weight", Dtype::F16, &[8, 8], &mut r),
        Spec::random("model.q.scale", Dtype::F8_E4M3, &[16], &mut r),
        Spec::random("ids", Dtype::I64, &[5], &mut r),
        Spec::random("flag", Dtype::BOOL, &[], &mut r),
        Spec::random("packed", Dtype::F4, &[10], &mut r),
    ];
    let p = dir.path().join("model.safetensors");
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    common::write_file_ref(&p, &tensors, Some(meta));
    let expected = reference_files([&p]);
    Fixture {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        path: p.clone(),
        files: vec![p],
        expected,
    }
}

/// Name, dtype and shape of a fixture tensor.
type TensorDesc<'a> = (&'a str, Dtype, &'a [u64]);

fn sharded() -> Fixture {
    let dir = disk_tempdir();
    let mut r = rng(2);
    let shards: [&[TensorDesc]; 3] = [
        &[
            ("a.weight", Dtype::BF16, &[40, 3]),
            ("a.bias", Dtype::F32, &[3]),
        ],
        &[
            ("b.weight", Dtype::F16, &[7, 7]),
            ("b.idx", Dtype::U32, &[9]),
        ],
        &[
            ("c.weight", Dtype::F8_E5M2, &[33]),
            ("c.scale", Dtype::F64, &[]),
        ],
    ];
    let mut files = Vec::new();
    let mut map = Vec::new();
    for (i, specs) in shards.iter().enumerate() {
        let name = format!("model-{:05}-of-00003.safetensors", i + 1);
        let tensors: Vec<Spec> = specs
            .iter()
            .map(|(n, d, s)| Spec::random(*n, *d, s, &mut r))
            .collect();
        let p = dir.path().join(&name);
        write_file(&p, &tensors, i * 5);
        for t in &tensors {
            map.push((t.name.clone(), name.clone()));
        }
        files.push(p);
    }
    let index = write_index(
        dir.path(),
        map.iter().map(|(t, f)| (t.as_str(), f.as_str())),
    );
    let expected = reference_files(&files);
    Fixture {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        path: index,
        files,
        expected,
    }
}

fn numel(shape: &[u64]) -> u64 {
    shape.iter().product()
}

#[test]
fn inspect_text_lists_tensors_totals_and_metadata() {
    let fx = single();
    let o = run([OsStr::new("inspect"), fx.path.as_os_str()]);
    assert_code(&o, 0, "inspect");
    let out = stdout(&o);
    assert!(out.contains(&fx.path.display().to_string()), "{out}");
    assert!(out.contains("metadata format = pt"), "{out}");
    for (name, t) in &fx.expected {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("no line for {name}:\n{out}"));
        assert!(line.contains(t.dtype.name()), "{line}");
        assert!(line.contains(&format!("{:?}", t.shape)), "{line}");
        assert!(
            line.trim_end().ends_with(&t.data.len().to_string()),
            "{line}"
        );
    }
    assert!(
        out.contains(&format!(
            "total: {} tensors in 1 file(s)",
            fx.expected.len()
        )),
        "{out}"
    );
    let params: u64 = fx.expected.values().map(|t| numel(&t.shape)).sum();
    let bytes: usize = fx.expected.values().map(|t| t.data.len()).sum();
    let all = out
        .lines()
        .find(|l| l.trim_start().starts_with("all "))
        .expect("an 'all' line");
    let nums: Vec<&str> = all.split_whitespace().collect();
    assert_eq!(
        nums,
        [
            "all",
            &params.to_string(),
            "parameters",
            &bytes.to_string(),
            "bytes"
        ]
    );
}

#[test]
fn inspect_json_sharded_via_index_and_directory() {
    let fx = sharded();
    for path in [fx.path.as_path(), fx.dir.as_path()] {
        let o = run([
            OsStr::new("inspect"),
            path.as_os_str(),
            OsStr::new("--json"),
        ]);
        assert_code(&o, 0, "inspect --json");
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("one JSON document");
        assert_eq!(v["tensor_count"], fx.expected.len());
        let bytes: usize = fx.expected.values().map(|t| t.data.len()).sum();
        assert_eq!(v["tensor_bytes"], bytes);
        let params: u64 = fx.expected.values().map(|t| numel(&t.shape)).sum();
        assert_eq!(v["parameters"], params);
        assert_eq!(v["index"], serde_json::json!(fx.path));
        assert_eq!(v["index_metadata"], serde_json::json!({"total_size": 0}));
        let shards = v["shards"].as_array().unwrap();
        assert_eq!(shards.len(), 3);
        let mut seen = BTreeMap::new();
        for (s, file) in shards.iter().zip(&fx.files) {
            assert_eq!(s["path"], serde_json::json!(file));
            assert_eq!(s["file_bytes"], std::fs::metadata(file).unwrap().len());
            for t in s["tensors"].as_array().unwrap() {
                let name = t["name"].as_str().unwrap().to_string();
                let r = &fx.expected[&name];
                assert_eq!(t["dtype"], r.dtype.name());
                assert_eq!(t["shape"], serde_json::json!(r.shape));
                assert_eq!(t["bytes"], r.data.len());
                let offs = t["data_offsets"].as_array().unwrap();
                assert_eq!(
                    offs[1].as_u64().unwrap() - offs[0].as_u64().unwrap(),
                    r.data.len() as u64
                );
                seen.insert(name, ());
            }
        }
        assert_eq!(seen.len(), fx.expected.len());
        // Totals per dtype.
        let mut per: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for t in fx.expected.values() {
            let e = per.entry(t.dtype.name()).or_default();
            e.0 += numel(&t.shape);
            e.1 += t.data.len() as u64;
        }
        let dtypes = v["dtypes"].as_object().unwrap();
        assert_eq!(dtypes.len(), per.len());
        for (d, (n, b)) in per {
            assert_eq!(
                dtypes[d],
                serde_json::json!({"parameters": n, "bytes": b}),
                "{d}"
            );
        }
    }
}

#[test]
fn inspect_json_single_file_has_metadata() {
    let fx = single();
    let o = run([
        OsStr::new("inspect"),
        fx.path.as_os_str(),
        OsStr::new("--json"),
    ]);
    assert_code(&o, 0, "inspect --json");
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("one JSON document");
    assert_eq!(v["index"], serde_json::Value::Null);
    assert_eq!(
        v["shards"][0]["metadata"],
        serde_json::json!({"format": "pt"})
    );
    assert_eq!(
        v["shards"][0]["header_bytes"].as_u64().unwrap() % 8,
        0,
        "the reference pads to 8"
    );
    assert_eq!(v["tensor_count"], fx.expected.len());
}

#[test]
fn verify_valid_exits_zero() {
    for fx in [single(), sharded()] {
        for path in [fx.path.as_path(), fx.dir.as_path()] {
            let o = run([OsStr::new("verify"), path.as_os_str()]);
            assert_code(&o, 0, "verify");
            let bytes: usize = fx.expected.values().map(|t| t.data.len()).sum();
            assert_eq!(
                stdout(&o).trim(),
                format!(
                    "ok: {} tensors, {bytes} bytes in {} file(s)",
                    fx.expected.len(),
                    fx.files.len()
                )
            );
        }
    }
}

#[test]
fn verify_invalid_exits_one_with_one_line_per_problem() {
    let fx = sharded();
    // Shard 1: one byte short. Shard 3: a trailing byte.
    let b = std::fs::read(&fx.files[0]).unwrap();
    std::fs::write(&fx.files[0], &b[..b.len() - 1]).unwrap();
    let mut c = std::fs::read(&fx.files[2]).unwrap();
    c.push(0x42);
    std::fs::write(&fx.files[2], c).unwrap();
    let o = run([OsStr::new("verify"), fx.dir.as_os_str()]);
    assert_code(&o, 1, "verify");
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("model-00001-of-00003.safetensors") && l.contains("truncated")),
        "{out}"
    );
    assert!(lines.iter().any(|l| l.contains("model-00003-of-00003.safetensors") && l.contains("trailing bytes")), "{out}");
}

fn digests(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The digest lines the contract promises for `expected`, after `--dtype dtype`.
fn check_digests(o: &Output, expected: &BTreeMap<String, RefTensor>, dtype: Option<Dtype>) {
    let lines = digests(o);
    let names: Vec<&str> = lines.iter().map(|v| v["name"].as_str().unwrap()).collect();
    let want: Vec<&str> = expected.keys().map(String::as_str).collect();
    assert_eq!(names, want, "one line per tensor, sorted by name");
    for (v, (name, r)) in lines.iter().zip(expected) {
        let out = output_dtype(r.dtype, dtype);
        let bytes = if out == r.dtype {
            r.data.clone()
        } else {
            let mut b = vec![0u8; converted_len(r.dtype, out, r.data.len() as u64) as usize];
            convert_into(r.dtype, out, &r.data, &mut b).unwrap();
            b
        };
        assert_eq!(v["dtype"], out.name(), "{name}");
        assert_eq!(v["shape"], serde_json::json!(r.shape), "{name}");
        assert_eq!(v["sha256"], sha256_hex(&bytes), "{name}");
        assert_eq!(v.as_object().unwrap().len(), 4, "{name}");
    }
}

#[test]
fn load_digest_matches_reference_bytes_on_every_backend() {
    for fx in [single(), sharded()] {
        for io in ["auto", "direct", "buffered", "pread", "pread-direct"] {
            let o = run([
                OsStr::new("load"),
                fx.path.as_os_str(),
                OsStr::new("--digest"),
                OsStr::new("--io"),
                OsStr::new(io),
            ]);
            // This machine refusing io_uring, or O_DIRECT on the fixture's file system.
            if code(&o) == 1
                && (matches!(io, "direct" | "buffered") && stderr(&o).contains("not available")
                    || matches!(io, "direct" | "pread-direct")
                        && stderr(&o).contains("O_DIRECT is not supported"))
            {
                eprintln!("skipping --io {io}: {}", stderr(&o));
                continue;
            }
            assert_code(&o, 0, io);
            check_digests(&o, &fx.expected, None);
            // The summary goes to stderr, so stdout stays machine-readable.
            assert!(
                stderr(&o).contains(&format!("loaded {} tensors", fx.expected.len())),
                "{}",
                stderr(&o)
            );
        }
    }
}

#[test]
fn contradictory_staging_flags_are_a_usage_error() {
    let fx = sharded();
    for flags in [
        ["--staging-huge", "--no-staging-huge"],
        ["--staging-huge", "--staging-wc"],
    ] {
        let mut args = vec![OsStr::new("load"), fx.path.as_os_str()];
        args.extend(flags.iter().map(OsStr::new));
        assert_code(&run(args), 2, &format!("{flags:?}"));
    }
}

/// The mmap backend was removed (slower than `auto`): asking for it says so.
#[test]
fn the_removed_mmap_backend_is_a_usage_error_saying_why() {
    let fx = single();
    let o = run([
        OsStr::new("load"),
        fx.path.as_os_str(),
        OsStr::new("--io"),
        OsStr::new("mmap"),
    ]);
    assert_code(&o, 2, "--io mmap");
    assert!(
        stderr(&o).contains("mmap backend was removed"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn load_json_summary() {
    let fx = sharded();
    let o = run([OsStr::new("load"), fx.dir.as_os_str(), OsStr::new("--json")]);
    assert_code(&o, 0, "load --json");
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    let bytes: usize = fx.expected.values().map(|t| t.data.len()).sum();
    assert_eq!(v["tensors"], fx.expected.len());
    assert_eq!(v["bytes"], bytes);
    assert_eq!(v["output_bytes"], bytes);
    assert!(v["read_bytes"].as_u64().unwrap() >= bytes as u64);
    assert_eq!(v["device"], "cpu");
    let seconds = v["seconds"].as_f64().unwrap();
    assert!(seconds >= 0.0);
    // Raw tensors read in place: no wait for a buffer, and no more waiting than loading.
    assert_eq!(v["waiting_for_buffers_seconds"].as_f64(), Some(0.0));
    let reads = v["waiting_for_reads_seconds"].as_f64().unwrap();
    assert!((0.0..=seconds).contains(&reads), "{v}");
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    for (f, p) in files.iter().zip(&fx.files) {
        assert_eq!(f["path"], serde_json::json!(p));
        assert!(!f["io"].as_str().unwrap().is_empty());
    }
    // With --digest as well, stdout holds only digests and the JSON goes to stderr.
    let o = run([
        OsStr::new("load"),
        fx.path.as_os_str(),
        OsStr::new("--json"),
        OsStr::new("--digest"),
    ]);
    assert_code(&o, 0, "load --json --digest");
    check_digests(&o, &fx.expected, None);
    let summary: serde_json::Value =
        serde_json::from_str(stderr(&o).trim()).expect("JSON summary on stderr");
    assert_eq!(summary["tensors"], fx.expected.len());
}

/// `--io pread-direct` reports the pread pool with O_DIRECT for every file in
/// `load --json`, and loads the bytes `--io pread` does.
#[test]
fn load_json_pread_direct_reports_its_path() {
    let fx = sharded();
    let load = |io: &str| {
        run([
            OsStr::new("load"),
            fx.path.as_os_str(),
            OsStr::new("--json"),
            OsStr::new("--digest"),
            OsStr::new("--io"),
            OsStr::new(io),
        ])
    };
    let o = load("pread-direct");
    if code(&o) == 1 && stderr(&o).contains("O_DIRECT is not supported") {
        eprintln!("skipping: {}", stderr(&o));
        return;
    }
    assert_code(&o, 0, "load --io pread-direct");
    check_digests(&o, &fx.expected, None);
    let v: serde_json::Value =
        serde_json::from_str(stderr(&o).trim()).expect("JSON summary on stderr");
    let files = v["files"].as_array().unwrap();
    assert_eq!(files.len(), fx.files.len());
    for f in files {
        assert_eq!(f["io"], "pread+O_DIRECT", "{v}");
    }
    let p = load("pread");
    assert_code(&p, 0, "load --io pread");
    assert_eq!(stdout(&o), stdout(&p), "digests of pread-direct and pread");
}

#[test]
fn load_text_summary() {
    let fx = single();
    let o = run([
        OsStr::new("load"),
        fx.path.as_os_str(),
        OsStr::new("--io"),
        OsStr::new("pread"),
    ]);
    assert_code(&o, 0, "load");
    let bytes: usize = fx.expected.values().map(|t| t.data.len()).sum();
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!(
            "loaded {} tensors, {bytes} bytes in ",
            fx.expected.len()
        )),
        "{out}"
    );
    assert!(out.contains("GB/s to cpu (pread buffered)"), "{out}");
}

#[test]
fn load_only_selects_whole_names() {
    let fx = single();
    let o = run([
        OsStr::new("load"),
        fx.path.as_os_str(),
        OsStr::new("--digest"),
        OsStr::new("--only"),
        OsStr::new("model.*.weight"),
        OsStr::new("--only"),
        OsStr::new("id?"),
    ]);
    assert_code(&o, 0, "load --only");
    let want: BTreeMap<String, RefTensor> = fx
        .expected
        .iter()
        .filter(|(k, _)| {
            [
                "model.embed.weight",
                "model.norm.weight",
                "model.q.weight",
                "ids",
            ]
            .contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(want.len(), 4);
    check_digests(&o, &want, None);
    // Nothing matching is an error.
    let o = run([
        OsStr::new("load"),
        fx.path.as_os_str(),
        OsStr::new("--only"),
        OsStr::new("model"),
    ]);
    assert_code(&o, 1, "load --only model");
    assert!(stderr(&o).contains("'model'"), "{}", stderr(&o));
}

/// `--rows` and `--cols`: digests of exactly the selected rows and columns (converted
/// with `--dtype`), through an index; a rule a tensor cannot satisfy exits 1 naming
/// the file and the tensor; a malformed rule is a usage error.
#[test]
fn load_rows_and_cols_digest_the_selected_slices() {
    let fx = sharded();
    let o = run([
        OsStr::new("load"),
        fx.path.as_os_str(),
        OsStr::new("--digest"),
        OsStr::new("--dtype"),
        OsStr::new("F32"),
        OsStr::new("--cols"),
        OsStr::new("b.weight=3:6"),
        OsStr::new("--rows"),
        OsStr::new("a.weight=1/4"),
        OsStr::new("--rows"),
        OsStr::new("b.idx=2:5"),
    ]);
    assert_code(&o, 0, "load --rows --cols");
    let mut want = fx.expected.clone();
    for (name, a, b) in [("a.weight", 10, 20), ("b.idx", 2, 5)] {
        let t = want.get_mut(name).unwrap();
        let row = t.data.len() / t.shape[0] as usize;
        t.data = t.data[a * row..b * row].to_vec();
        t.shape[0] = (b - a) as u64;
    }
    let t = want.get_mut("b.weight").unwrap();
    t.data = t
        .data
        .chunks(7 * 2)
        .flat_map(|r| &r[3 * 2..6 * 2])
        .copied()
        .collect();
    t.shape[1] = 3;
    check_digests(&o, &want, Some(Dtype::F32));

    for (flags, why) in [
        (["--rows", "c.*=0:1"], "scalar"),
        (["--cols", "c.weight=0:1"], "fewer than two dimensions"),
        (["--rows", "c.scale=0:0"], "scalar"),
    ] {
        let o = run([OsStr::new("load"), fx.path.as_os_str()]
            .into_iter()
            .chain(flags.iter().map(OsStr::new)));
        assert_code(&o, 1, flags[1]);
        let err = stderr(&o);
        for part in ["model-00003-of-00003.safetensors", "'c.", why] {
            assert!(err.contains(part), "{err}");
        }
    }
    // One tensor given rows and columns.
    let o = run([
        OsStr::new("load"),
        fx.path.as_os_str(),
        OsStr::new("--rows"),
        OsStr::new("*.weight=0:1"),
        OsStr::new("--cols"),
        OsStr::new("b.weight=3:6"),
    ]);
    assert_code(&o, 1, "rows and columns");
    let err = stderr(&o);
    assert!(
        err.contains("'b.weight'") && err.contains("not both"),
        "{err}"
    );
    for bad in ["a.weight", "a.weight=1-2", "a.weight=1/0", "a.weight=2/2"] {
        for flag in ["--rows", "--cols"] {
            let o = run([
                OsStr::new("load"),
                fx.path.as_os_str(),
                OsStr::new(flag),
                OsStr::new(bad),
            ]);
            assert_code(&o, 2, bad);
        }
    }
}

#[test]
fn load_dtype_converts_floats_only() {
    let fx = single();
    for (flag, dtype) in [
        ("f32", Dtype::F32),
        ("BF16", Dtype::BF16),
        ("f16", Dtype::F16),
    ] {
        let o = run([
            OsStr::new("load"),
            fx.path.as_os_str(),
            OsStr::new("--digest"),
            OsStr::new("--dtype"),
            OsStr::new(flag),
        ]);
        assert_code(&o, 0, flag);
        check_digests(&o, &fx.expected, Some(dtype));
    }
    // A dtype that is not a conversion target is bad input, not a usage error.
    let o = run([
        OsStr::new("load"),
        fx.path.as_os_str(),
        OsStr::new("--dtype"),
        OsStr::new("i8"),
    ]);
    assert_code(&o, 1, "--dtype i8");
    assert!(stderr(&o).contains("I8"), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_two() {
    let fx = single();
    let p = fx.path.to_str().unwrap();
    let cases: &[&[&str]] = &[
        &[],
        &["frobnicate"],
        &["load"],
        &["inspect"],
        &["verify", p, "extra"],
        &["inspect", p, "--bogus"],
        &["load", p, "--io", "floppy"],
        &["load", p, "--dtype", "F12"],
        &["load", p, "--device", "tpu"],
        &["load", p, "--chunk-size", "lots"],
        &["load", p, "--chunk-size", "0"],
        &["load", p, "--queue-depth", "-1"],
        &["bench", "--size", "-5M"],
        &["bench", "--cold", "--warm"],
        &["load", p, "--staging-wc", "--staging-huge"],
    ];
    for args in cases {
        let o = run(*args);
        assert_code(&o, 2, &format!("{args:?}"));
        assert!(!stderr(&o).is_empty(), "{args:?}: no message");
    }
}

fn file_with(path: &Path, json: &str, data: &[u8]) {
    let mut v = (json.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v.extend_from_slice(data);
    std::fs::write(path, v).unwrap();
}

#[test]
fn bad_input_exits_one_naming_file_and_tensor() {
    let dir = disk_tempdir();
    let p = dir.path().join("bad.safetensors");
    let mut r = rng(3);
    let data = common::random_bytes(&mut r, 8);
    file_with(
        &p,
        r#"{"ok.weight":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"broken.weight":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
        &data[..6],
    );
    for cmd in ["inspect", "verify", "load"] {
        let o = run([OsStr::new(cmd), p.as_os_str()]);
        assert_code(&o, 1, cmd);
        let msg = if cmd == "verify" {
            stdout(&o)
        } else {
            stderr(&o)
        };
        assert!(msg.contains(&p.display().to_string()), "{cmd}: {msg}");
        assert!(msg.contains("'broken.weight'"), "{cmd}: {msg}");
        assert!(msg.contains("overlap"), "{cmd}: {msg}");
        if cmd != "verify" {
            assert!(msg.starts_with("error: "), "{cmd}: {msg}");
            assert!(stdout(&o).is_empty(), "{cmd}: {}", stdout(&o));
        }
    }
}

/// Many kinds of bad input, through every subcommand: exit 1 with a message naming
/// the file, never a panic (101) and never a usage error.
#[test]
fn bad_inputs_never_panic() {
    let dir = disk_tempdir();
    let d = dir.path();
    let mut r = rng(4);
    let data = common::random_bytes(&mut r, 64);
    let mut inputs: Vec<PathBuf> = Vec::new();
    let mut add = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        inputs.push(p);
    };
    add("empty.safetensors", b"");
    add("short.safetensors", &[1, 2, 3]);
    add("garbage.safetensors", &data);
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    add("huge-len.safetensors", &huge);
    let mut limit = 100_000_001u64.to_le_bytes().to_vec();
    limit.extend_from_slice(b"{}");
    add("over-limit.safetensors", &limit);
    for (name, json, n) in [
        ("array.safetensors", "[]", 0),
        ("not-json.safetensors", "{\"a\":", 0),
        (
            "bad-dtype.safetensors",
            r#"{"a":{"dtype":"F12","shape":[1],"data_offsets":[0,1]}}"#,
            1,
        ),
        (
            "truncated.safetensors",
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
            15,
        ),
        (
            "trailing.safetensors",
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            5,
        ),
        (
            "overflow.safetensors",
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#,
            4,
        ),
        (
            "dup.safetensors",
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
            1,
        ),
        ("meta.safetensors", r#"{"__metadata__":{"a":1}}"#, 0),
        (
            "f4.safetensors",
            r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#,
            2,
        ),
    ] {
        let p = d.join(name);
        file_with(&p, json, &data[..n]);
        inputs.push(p);
    }
    // Directories: empty, and with an index escaping it.
    let empty = d.join("empty-dir");
    std::fs::create_dir(&empty).unwrap();
    inputs.push(empty);
    let escape = d.join("escape");
    std::fs::create_dir(&escape).unwrap();
    write_index(&escape, [("w", "../garbage.safetensors")]);
    inputs.push(escape);
    inputs.push(d.join("does-not-exist.safetensors"));

    for input in &inputs {
        for cmd in ["inspect", "verify", "load"] {
            let o = run([OsStr::new(cmd), input.as_os_str()]);
            assert_code(&o, 1, &format!("{cmd} {}", input.display()));
            let msg = if cmd == "verify" {
                stdout(&o)
            } else {
                stderr(&o)
            };
            let name = input.file_name().unwrap().to_string_lossy();
            assert!(msg.contains(name.as_ref()), "{cmd} {name}: {msg}");
        }
    }
}

#[test]
fn cuda_without_the_feature_or_a_device_is_an_error_not_a_panic() {
    let fx = single();
    let o = run([
        OsStr::new("load"),
        fx.path.as_os_str(),
        OsStr::new("--device"),
        OsStr::new("cuda"),
    ]);
    // Built without the feature here: a clear error. (With it and a GPU, a load.)
    if cfg!(feature = "cuda") {
        assert!(
            code(&o) == 0 || code(&o) == 1,
            "exit {}: {}",
            code(&o),
            stderr(&o)
        );
    } else {
        assert_code(&o, 1, "--device cuda");
        assert!(stderr(&o).contains("CUDA"), "{}", stderr(&o));
    }
}

/// Regressions: a queue depth or chunk size too large for memory or for the
/// arithmetic aborted or panicked; `bench` exited 0 when every load had failed.
#[test]
fn extreme_settings_and_failed_benches_are_exit_codes_not_crashes() {
    let fx = single();
    let p = fx.path.to_str().unwrap();
    for depth in ["100000000000", "18446744073709551615", "3000000000"] {
        for io in ["pread", "buffered"] {
            let o = run(["load", p, "--queue-depth", depth, "--io", io]);
            assert!(
                code(&o) == 0 || code(&o) == 1,
                "--queue-depth {depth} --io {io}: exit {}: {}",
                code(&o),
                stderr(&o)
            );
        }
    }
    let o = run(["load", p, "--chunk-size", "1e30"]);
    assert_code(&o, 1, "--chunk-size 1e30");
    assert!(stderr(&o).contains("chunk size"), "{}", stderr(&o));
    if !cfg!(feature = "cuda") {
        let dir = disk_tempdir();
        let o = bench_tiny(dir.path(), "1", &["--device", "cuda"]);
        assert_code(&o, 1, "bench --device cuda without the feature");
        assert!(stdout(&o).contains("failed"), "{}", stdout(&o));
    }
}

/// `bench` on an 8 MB synthetic checkpoint written under `dir`, warm only.
fn bench_tiny(dir: &Path, runs: &str, extra: &[&str]) -> Output {
    let mut args: Vec<&OsStr> = ["bench", "--size", "8M", "--warm", "--runs", runs]
        .into_iter()
        .chain(extra.iter().copied())
        .map(OsStr::new)
        .collect();
    args.push(OsStr::new("--dir"));
    args.push(dir.as_os_str());
    run(args)
}

#[test]
fn bench_tiny_warm_pread() {
    let dir = disk_tempdir();
    let o = bench_tiny(dir.path(), "1", &["--backends", "pread"]);
    assert_code(&o, 0, "bench");
    let out = stdout(&o);
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("warm")).collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert!(
        rows[0].contains("pread") && rows[0].contains("GB/s"),
        "{out}"
    );
    assert!(!rows[0].contains("failed"), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("cold")), "{out}");
    // The synthetic checkpoint was written under --dir and cleaned up afterwards.
    assert!(
        stderr(&o).contains(&dir.path().display().to_string()),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "bench left files behind"
    );
}

#[test]
fn bench_reusing_memory_says_so_in_json() {
    let dir = disk_tempdir();
    let o = bench_tiny(
        dir.path(),
        "2",
        &["--backends", "pread,buffered", "--reuse-memory", "--json"],
    );
    assert_code(&o, 0, "bench --reuse-memory");
    let out = stdout(&o);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for r in &rows {
        assert_eq!(r["reuse_memory"], true, "{out}");
        assert_eq!(r["runs"].as_array().map(Vec::len), Some(2), "{out}");
        assert!(r["median_gbps"].as_f64().is_some_and(|g| g > 0.0), "{out}");
        assert_eq!(r["note"], "", "{out}");
    }
}

/// `bench --json` reports the bytes its loads select (`--only`, `--rows`), which its
/// rates count, not the whole checkpoint's.
#[test]
fn bench_json_bytes_are_the_selected_ones() {
    let fx = single();
    let o = run([
        OsStr::new("bench"),
        fx.path.as_os_str(),
        OsStr::new("--warm"),
        OsStr::new("--runs"),
        OsStr::new("1"),
        OsStr::new("--backends"),
        OsStr::new("pread"),
        OsStr::new("--json"),
        OsStr::new("--only"),
        OsStr::new("model.*.weight"),
        OsStr::new("--rows"),
        OsStr::new("model.embed.weight=0:11"),
    ]);
    assert_code(&o, 0, "bench --only --rows");
    let row: serde_json::Value = stdout(&o)
        .lines()
        .find(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .unwrap();
    let e = &fx.expected;
    let want = e["model.embed.weight"].data.len() / 33 * 11
        + e["model.norm.weight"].data.len()
        + e["model.q.weight"].data.len();
    assert_eq!(row["bytes"], want, "{row}");
}

/// Relative paths: an index named from its own directory, and `.` as the directory.
#[test]
fn relative_paths_from_the_checkpoint_directory() {
    let fx = sharded();
    for path in [
        "model.safetensors.index.json",
        ".",
        "./model.safetensors.index.json",
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_tensorstream"))
            .args(["load", path, "--digest"])
            .current_dir(&fx.dir)
            .output()
            .unwrap();
        assert_code(&o, 0, path);
        check_digests(&o, &fx.expected, None);
    }
}

/// `verify` prints one line per problem even when a tensor name holds a line break.
#[test]
fn verify_one_line_per_problem_with_a_newline_in_a_name() {
    let dir = disk_tempdir();
    let p = dir.path().join("nl.safetensors");
    let mut r = rng(5);
    let data = common::random_bytes(&mut r, 8);
    file_with(
        &p,
        r#"{"ok":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"evil\nname":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
        &data[..6],
    );
    let o = run([OsStr::new("verify"), p.as_os_str()]);
    assert_code(&o, 1, "verify");
    assert_eq!(stdout(&o).lines().count(), 1, "{:?}", stdout(&o));
}
