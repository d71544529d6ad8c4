//! The command line against a hostile environment and hostile files (issue 22): shards
//! that dangle or are missing, paths that are not UTF-8, threads the OS refuses,
//! stdout and stderr that fail, text that would drive a terminal, signals during
//! `bench`, open-file limits, and files that are not safetensors at all. Every case is
//! an exit code and a message, never a panic (101) or an abort (134).
//!
//! `TENSORSTREAM_BIN` runs these against another build of the binary (to see them
//! fail on one without the fixes).

mod common;

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{disk_tempdir, rng, write_file, write_index, Spec};
use tensorstream::Dtype;

fn bin() -> OsString {
    std::env::var_os("TENSORSTREAM_BIN")
        .unwrap_or_else(|| OsString::from(env!("CARGO_BIN_EXE_tensorstream")))
}

fn cmd<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(bin());
    c.args(args).env_remove("TENSORSTREAM_LOG");
    c
}

fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    cmd(args).output().expect("run tensorstream")
}

fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("killed by signal {:?}", o.status.signal()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_code(o: &Output, want: i32, what: &str) {
    assert_eq!(
        code(o),
        want,
        "{what}\nstdout: {}\nstderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// A valid file of three random tensors at `p`.
fn small(p: &Path, seed: u64) {
    let mut r = rng(seed);
    write_file(
        p,
        &[
            Spec::random("a", Dtype::BF16, &[16, 8], &mut r),
            Spec::random("b", Dtype::F32, &[8], &mut r),
            Spec::random("c", Dtype::F16, &[4, 4], &mut r),
        ],
        0,
    );
}

fn file_with(path: &Path, json: &[u8], data: &[u8]) {
    let mut v = (json.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(json);
    v.extend_from_slice(data);
    std::fs::write(path, v).unwrap();
}

/// inspect, verify and load of `path` all exit 1, and their message holds `words`.
fn all_refuse(path: &Path, words: &[&str]) {
    for c in ["inspect", "verify", "load"] {
        let o = run([OsStr::new(c), path.as_os_str()]);
        assert_code(&o, 1, &format!("{c} {}", path.display()));
        let msg = if c == "verify" {
            text(&o.stdout)
        } else {
            text(&o.stderr)
        };
        for w in words {
            assert!(msg.contains(w), "{c}: no {w:?} in {msg}");
        }
    }
}

/// A Hugging Face cache layout: snapshot links to blobs, the second blob deleted. The
/// load used to succeed with half the model.
#[test]
fn dangling_shard_link_is_an_error_naming_it() {
    let d = disk_tempdir();
    let blobs = d.path().join("blobs");
    let snap = d.path().join("snap");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    small(&blobs.join("b1"), 1);
    for (i, blob) in ["b1", "b2"].iter().enumerate() {
        let link = snap.join(format!("model-{:05}-of-00002.safetensors", i + 1));
        std::os::unix::fs::symlink(Path::new("../blobs").join(blob), link).unwrap();
    }
    all_refuse(
        &snap,
        &[
            "model-00002-of-00002.safetensors",
            "symbolic link to ../blobs/b2, which does not exist",
        ],
    );
    // Named by an index: the same.
    write_index(&snap, [("a", "model-00002-of-00002.safetensors")]);
    all_refuse(
        &snap,
        &["model-00002-of-00002.safetensors", "symbolic link"],
    );
}

/// A directory, a FIFO or a dangling link named like a shard: an error naming it,
/// never skipped (and the FIFO never opened, which would wait for a writer).
#[test]
fn entries_named_like_shards_that_are_not_files_are_errors() {
    let d = disk_tempdir();
    small(&d.path().join("good.safetensors"), 2);
    let odd = d.path().join("odd.safetensors");
    std::fs::create_dir(&odd).unwrap();
    all_refuse(d.path(), &["odd.safetensors", "is a directory"]);
    std::fs::remove_dir(&odd).unwrap();
    let c = std::ffi::CString::new(odd.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    all_refuse(d.path(), &["odd.safetensors", "FIFO"]);
    std::fs::remove_file(&odd).unwrap();
    std::os::unix::fs::symlink("nowhere", &odd).unwrap();
    all_refuse(d.path(), &["odd.safetensors", "symbolic link to nowhere"]);
    // Alone in its directory, the entry is named in the "no files" message.
    let alone = d.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    std::os::unix::fs::symlink("../blobs/x", alone.join("model.safetensors")).unwrap();
    all_refuse(
        &alone,
        &[
            "holds no .safetensors files",
            "model.safetensors is a symbolic link to ../blobs/x, which does not exist",
        ],
    );
    // A dangling index is not passed over for the shards beside it.
    std::fs::remove_file(&odd).unwrap();
    std::os::unix::fs::symlink("gone.json", d.path().join("model.safetensors.index.json")).unwrap();
    all_refuse(d.path(), &["model.safetensors.index.json", "symbolic link"]);
}

/// An unreadable shard is an error naming it (root reads everything: skipped there).
#[test]
fn unreadable_shard_is_an_error_naming_it() {
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("skipped: root reads files whatever their mode");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let d = disk_tempdir();
    small(&d.path().join("a.safetensors"), 3);
    let b = d.path().join("b.safetensors");
    small(&b, 4);
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o000)).unwrap();
    all_refuse(d.path(), &["b.safetensors", "Permission denied"]);
}

/// Numbered shards without an index must be the whole set.
#[test]
fn missing_numbered_shard_is_an_error_naming_it() {
    let d = disk_tempdir();
    small(&d.path().join("model-00001-of-00004.safetensors"), 5);
    let mut r = rng(6);
    write_file(
        &d.path().join("model-00003-of-00004.safetensors"),
        &[Spec::random("z", Dtype::U8, &[64], &mut r)],
        0,
    );
    all_refuse(
        d.path(),
        &[
            "incomplete (2 of 4 present)",
            "model-00002-of-00004.safetensors, model-00004-of-00004.safetensors",
        ],
    );
    // A number outside its set.
    std::fs::rename(
        d.path().join("model-00003-of-00004.safetensors"),
        d.path().join("model-00007-of-00004.safetensors"),
    )
    .unwrap();
    all_refuse(
        d.path(),
        &["model-00007-of-00004.safetensors", "outside 1..=4"],
    );
}

/// A FIFO or a device given as PATH says what it is and what was expected.
#[test]
fn fifo_or_device_as_path_says_what_it_is() {
    let d = disk_tempdir();
    let fifo = d.path().join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let expected =
        "expected a .safetensors file, a directory of shards or a model.safetensors.index.json";
    all_refuse(&fifo, &["is a FIFO (named pipe)", expected]);
    all_refuse(Path::new("/dev/zero"), &["is a character device", expected]);
}

/// Paths are bytes: every subcommand takes one that is not UTF-8, and JSON carries it
/// with U+FFFD in place of the bad bytes. (It used to panic.)
#[test]
fn non_utf8_paths_work_in_every_subcommand() {
    let d = disk_tempdir();
    let name = OsStr::from_bytes(b"bad\xff\xfename.safetensors");
    let p = d.path().join(name);
    small(&p, 7);
    let lossy = "bad\u{fffd}\u{fffd}name.safetensors";
    for args in [
        &["inspect"][..],
        &["inspect", "--json"],
        &["verify"],
        &["load"],
        &["load", "--json"],
        &["load", "--digest"],
        &["load", "--json", "--digest", "--io", "pread"],
    ] {
        let mut all: Vec<&OsStr> = vec![OsStr::new(args[0]), p.as_os_str()];
        all.extend(args[1..].iter().map(OsStr::new));
        let o = run(&all);
        assert_code(&o, 0, &format!("{args:?}"));
        if args.contains(&"--json") {
            let out = if args.contains(&"--digest") {
                text(&o.stderr)
            } else {
                text(&o.stdout)
            };
            let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
            assert!(v.to_string().contains(lossy), "{args:?}: {v}");
        }
    }
    let o = run([
        OsStr::new("bench"),
        p.as_os_str(),
        OsStr::new("--warm"),
        OsStr::new("--runs"),
        OsStr::new("1"),
        OsStr::new("--backends"),
        OsStr::new("pread"),
    ]);
    assert_code(&o, 0, "bench");
    // synth into a directory that is not UTF-8: the path printed as its bytes.
    let dir = d.path().join(OsStr::from_bytes(b"out\xff"));
    let o = run([
        OsStr::new("synth"),
        dir.as_os_str(),
        OsStr::new("--size"),
        OsStr::new("1M"),
    ]);
    assert_code(&o, 0, "synth");
    let printed = o.stdout.strip_suffix(b"\n").unwrap();
    assert_eq!(
        printed,
        dir.join("model.safetensors").as_os_str().as_bytes()
    );
}

/// Threads the OS refuses: every library thread goes through thread::Builder, and a
/// refusal is exit 1 naming the thread (it used to panic in the pread pool). The
/// refusal is forced by asking for thread stacks larger than the address space
/// (RUST_MIN_STACK, read by std for every thread started without an explicit size):
/// pthread_create fails with EAGAIN, as under a process or memory limit. (Where the
/// OS grants the thread but std then fails to map its signal stack, std aborts inside
/// the new thread before any of our code runs: exit 134, which no caller can catch.)
#[test]
fn refused_threads_are_errors_naming_the_thread() {
    let d = disk_tempdir();
    let p = d.path().join("m.safetensors");
    small(&p, 8);
    let huge = (1u64 << 50).to_string();
    let refused = |args: &[&str]| {
        let mut all: Vec<&OsStr> = vec![OsStr::new("load"), p.as_os_str()];
        all.extend(args.iter().map(OsStr::new));
        cmd(&all).env("RUST_MIN_STACK", &huge).output().unwrap()
    };
    let o = refused(&["--io", "pread"]);
    assert_code(&o, 1, "--io pread");
    assert!(
        text(&o.stderr).contains("could not start thread tensorstream-pread-0"),
        "{}",
        text(&o.stderr)
    );
    // The placing threads (a conversion through the staging slots, read by io_uring).
    let o = refused(&["--io", "buffered", "--dtype", "F32"]);
    assert_code(&o, 1, "--io buffered --dtype F32");
    assert!(
        text(&o.stderr).contains("tensorstream-place-0: could not start the thread"),
        "{}",
        text(&o.stderr)
    );
    // Every backend: exit 0 (no thread needed) or 1 with the thread named.
    for io in ["auto", "direct", "buffered", "pread-direct"] {
        for extra in [&[][..], &["--dtype", "BF16"]] {
            let mut args = vec!["--io", io];
            args.extend_from_slice(extra);
            let o = refused(&args);
            let c = code(&o);
            assert!(c == 0 || c == 1, "{args:?}: exit {c}: {}", text(&o.stderr));
            if c == 1 {
                let e = text(&o.stderr);
                assert!(
                    e.contains("could not start") || e.contains("refused"),
                    "{e}"
                );
            }
        }
    }
}

fn dev_full() -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full")
}

/// stdout on a full disk is exit 1 with a message (it used to panic); stderr on a
/// full disk leaves the exit code as it was.
#[test]
fn full_stdout_is_exit_1_and_full_stderr_is_not_a_panic() {
    let d = disk_tempdir();
    let p = d.path().join("m.safetensors");
    small(&p, 9);
    for args in [
        &["verify"][..],
        &["inspect"],
        &["inspect", "--json"],
        &["load"],
    ] {
        let mut all: Vec<&OsStr> = vec![OsStr::new(args[0]), p.as_os_str()];
        all.extend(args[1..].iter().map(OsStr::new));
        let o = cmd(&all).stdout(dev_full()).output().unwrap();
        assert_code(&o, 1, &format!("{args:?} > /dev/full"));
        assert!(
            text(&o.stderr).contains("error: writing to standard output: No space left"),
            "{}",
            text(&o.stderr)
        );
    }
    let o = cmd(["load", "/nonexistent", "--device", "cpu"])
        .stderr(dev_full())
        .output()
        .unwrap();
    assert_code(&o, 1, "load /nonexistent 2>/dev/full");
    // Log lines on a full stderr are dropped.
    let o = cmd([OsStr::new("load"), p.as_os_str(), OsStr::new("-v")])
        .stderr(dev_full())
        .output()
        .unwrap();
    assert_code(&o, 0, "load -v 2>/dev/full");
    let o = cmd(["--help"]).stdout(dev_full()).output().unwrap();
    assert_code(&o, 1, "--help > /dev/full");
}

/// Runs `args` with stdout a pipe that is closed after the first line (`| head -1`).
fn first_line_then_close(args: &[&OsStr]) -> (Output, String) {
    let mut child = cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    (o, first)
}

/// A closed pipe ends the output quietly; the exit code stays the command's (verify:
/// 1, as problems were found; inspect: 0). It used to panic.
#[test]
fn closed_stdout_pipe_ends_quietly() {
    let d = disk_tempdir();
    for i in 0..3000 {
        std::fs::write(
            d.path().join(format!("bad-{i:04}.safetensors")),
            [1u8, 2, 3],
        )
        .unwrap();
    }
    let (o, first) = first_line_then_close(&[OsStr::new("verify"), d.path().as_os_str()]);
    assert!(first.contains("bad-0000.safetensors"), "{first}");
    assert_code(&o, 1, "verify manybad | head -1");
    assert!(o.stderr.is_empty(), "{}", text(&o.stderr));
    // A large inspect: 100,000 tensors, stdout closed after one line.
    let p = d.path().join("wide");
    std::fs::create_dir(&p).unwrap();
    many_tensors(&p.join("m.safetensors"), 100_000);
    for json in [false, true] {
        let mut args = vec![OsStr::new("inspect"), p.as_os_str()];
        if json {
            args.push(OsStr::new("--json"));
        }
        let (o, _) = first_line_then_close(&args);
        assert_code(&o, 0, &format!("inspect json={json} | head -1"));
        assert!(o.stderr.is_empty(), "{}", text(&o.stderr));
    }
}

/// A file of `n` one-byte U8 tensors of random values.
fn many_tensors(p: &Path, n: usize) {
    let mut json = String::from("{");
    for i in 0..n {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            r#""layer.{i}.w":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{}]}}"#,
            i + 1
        ));
    }
    json.push('}');
    let data = common::random_bytes(&mut rng(10), n);
    file_with(p, json.as_bytes(), &data);
}

/// Text from a file reaches the terminal escaped: `inspect` names and metadata,
/// `verify` lines and error messages. A newline cannot forge a table row.
#[test]
fn hostile_names_and_metadata_are_escaped() {
    let d = disk_tempdir();
    let p = d.path().join("evil.safetensors");
    let data = common::random_bytes(&mut rng(11), 4);
    file_with(
        &p,
        "{\"__metadata__\":{\"k\\u001b]0;x\\u0007\":\"v\\r\\u202eevil\"},\
          \"k\\u001b[2J\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\
          \"a\\nb\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},\
          \"\\u0000nul\\u202e\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}"
            .as_bytes(),
        &data,
    );
    let o = run([OsStr::new("inspect"), p.as_os_str()]);
    assert_code(&o, 0, "inspect");
    let out = text(&o.stdout);
    for bad in ['\u{1b}', '\0', '\r', '\u{202e}', '\u{7}'] {
        assert!(!out.contains(bad), "raw {bad:?} in {out}");
    }
    for shown in [
        "k\\u{1b}[2J",
        "a\\nb",
        "\\0nul\\u{202e}",
        "metadata k\\u{1b}]0;x\\u{7} = v\\r\\u{202e}evil",
    ] {
        assert!(out.contains(shown), "no {shown:?} in {out}");
    }
    // One header line, one metadata line, the column headers, three tensors, totals.
    assert_eq!(out.lines().count(), 1 + 1 + 1 + 3 + 1 + 2, "{out}");

    // An error quoting a hostile name: escaped in the message and in verify's line.
    let q = d.path().join("overlap.safetensors");
    file_with(
        &q,
        b"{\"ok\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},\
           \"x\\u001b[2J\\u202e\\n\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}",
        &common::random_bytes(&mut rng(12), 6),
    );
    for c in ["verify", "load", "inspect"] {
        let o = run([OsStr::new(c), q.as_os_str()]);
        assert_code(&o, 1, c);
        let msg = text(if c == "verify" { &o.stdout } else { &o.stderr });
        assert!(
            msg.contains("tensor 'x\\u{1b}[2J\\u{202e}\\n'"),
            "{c}: {msg}"
        );
        assert!(
            !msg.contains('\u{1b}') && !msg.contains('\u{202e}'),
            "{c}: {msg}"
        );
        assert_eq!(msg.lines().count(), 1, "{c}: {msg}");
    }
}

/// A 10 MB dtype string or tensor name is cut in the message, with its size said.
#[test]
fn huge_quoted_input_is_cut_with_its_size() {
    let d = disk_tempdir();
    let big = "A".repeat(10_000_000);
    let p = d.path().join("dtype.safetensors");
    let json = format!(r#"{{"w":{{"dtype":"{big}","shape":[1],"data_offsets":[0,1]}}}}"#);
    file_with(&p, json.as_bytes(), &[7]);
    let q = d.path().join("name.safetensors");
    let json = format!(
        r#"{{"ok":{{"dtype":"U8","shape":[2],"data_offsets":[0,2]}},"{big}":{{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}}}"#
    );
    file_with(&q, json.as_bytes(), &[7, 8, 9]);
    for (f, words) in [(&p, "unknown dtype 'AAAA"), (&q, "tensor 'AAAA")] {
        for c in ["verify", "load"] {
            let o = run([OsStr::new(c), f.as_os_str()]);
            assert_code(&o, 1, c);
            let msg = text(if c == "verify" { &o.stdout } else { &o.stderr });
            assert!(msg.len() < 1500, "{c}: {} bytes of message", msg.len());
            assert!(msg.contains(words), "{c}: {msg}");
            assert!(msg.contains("…' (10000000 bytes)"), "{c}: {msg}");
        }
    }
}

/// Files that are not safetensors say what they look like, not "header length …":
/// a zip or a legacy pickle goes to the PyTorch reader, which says what is wrong.
#[test]
fn zip_pickle_and_json_files_are_named_as_such() {
    let d = disk_tempdir();
    let mut noise = common::random_bytes(&mut rng(13), 256);
    let mut zip = b"PK\x03\x04".to_vec();
    zip.append(&mut noise.clone());
    let mut pickle = vec![0x80u8, 0x02, 0x8a, 0x0a];
    pickle.append(&mut noise);
    let json = br#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 4096}"#.to_vec();
    for (name, bytes, words) in [
        (
            "pytorch_model.bin",
            zip,
            "not a valid zip archive: no end-of-central-directory record",
        ),
        (
            "old.bin",
            pickle,
            "a legacy (pre-1.6, non-zip) PyTorch checkpoint; only the zip format",
        ),
        (
            "config.json",
            json,
            "not a safetensors file: looks like JSON",
        ),
    ] {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        all_refuse(&p, &[name, words]);
    }
}

/// Twenty shards under a limit of 12 open files: the message says what to do.
#[test]
fn too_many_open_files_says_the_shard_count_and_the_limit() {
    let d = disk_tempdir();
    let o = run([
        OsStr::new("synth"),
        d.path().as_os_str(),
        OsStr::new("--size"),
        OsStr::new("8M"),
        OsStr::new("--shards"),
        OsStr::new("20"),
    ]);
    assert_code(&o, 0, "synth");
    let mut c = cmd([OsStr::new("load"), d.path().as_os_str()]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        c.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 12,
                rlim_max: 12,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = c.output().unwrap();
    assert_code(&o, 1, "load under ulimit -n 12");
    assert!(
        text(&o.stderr).contains(
            "too many open files: the checkpoint has 20 shards; raise the limit (ulimit -n)"
        ),
        "{}",
        text(&o.stderr)
    );
}

/// `synth --shards N` writes exactly N shards, or refuses saying why.
#[test]
fn synth_writes_exactly_the_shards_asked_or_refuses() {
    let d = disk_tempdir();
    let o = run([
        OsStr::new("synth"),
        d.path().as_os_str(),
        OsStr::new("--size"),
        OsStr::new("200M"),
        OsStr::new("--shards"),
        OsStr::new("20"),
    ]);
    assert_code(&o, 0, "synth --shards 20");
    let shards = std::fs::read_dir(d.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with("-of-00020.safetensors")
        })
        .count();
    assert_eq!(shards, 20);
    let o = run([OsStr::new("verify"), d.path().as_os_str()]);
    assert_code(&o, 0, "verify");
    let e = disk_tempdir();
    let o = run([
        OsStr::new("synth"),
        e.path().as_os_str(),
        OsStr::new("--size"),
        OsStr::new("1M"),
        OsStr::new("--shards"),
        OsStr::new("500"),
    ]);
    assert_code(&o, 1, "synth --shards 500");
    assert!(
        text(&o.stderr).contains("cannot write 500 shards") && text(&o.stderr).contains("at most"),
        "{}",
        text(&o.stderr)
    );
    let o = run(["synth", "x", "--shards", "0"]);
    assert_code(&o, 2, "--shards 0");
}

/// `bench` interrupted by SIGINT (after writing) or SIGTERM (while writing) removes its
/// temporary checkpoint and dies of that signal.
#[test]
fn interrupted_bench_removes_its_checkpoint() {
    for (sig, after) in [
        (libc::SIGINT, "written in"),
        (libc::SIGTERM, "writing a synthetic"),
    ] {
        let d = disk_tempdir();
        let mut child = cmd([
            OsStr::new("bench"),
            OsStr::new("--size"),
            OsStr::new("64M"),
            OsStr::new("--warm"),
            OsStr::new("--runs"),
            OsStr::new("100000"),
            OsStr::new("--backends"),
            OsStr::new("pread"),
            OsStr::new("--dir"),
            d.path().as_os_str(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        while !seen.contains(after) {
            let mut line = String::new();
            assert!(err.read_line(&mut line).unwrap() > 0, "bench ended: {seen}");
            seen.push_str(&line);
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(sig), "{status:?}: {seen}{rest}");
        let left: Vec<PathBuf> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "signal {sig}: left {left:?}");
    }
}

/// Peak memory (VmHWM, KiB) of `tensorstream ARGS` once it has filled its stdout pipe
/// and waits for a reader: by then it holds everything it would hold to write the
/// rest. (getrusage's ru_maxrss would count the test process too: Linux carries the
/// high-water mark across the exec of a child spawned by vfork.)
fn peak_when_blocked(args: &[&OsStr]) -> u64 {
    use std::os::fd::AsRawFd;
    let mut child = cmd(args).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let fd = out.as_raw_fd();
    // SAFETY: fcntl and ioctl on a pipe this process owns; `queued` is a valid place.
    let capacity = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    assert!(capacity > 0);
    let status = format!("/proc/{}/status", child.id());
    // Blocked: the pipe full, or its content unchanged for 100 ms (pipe pages are
    // filled unevenly by small writes, so "full" can be less than its capacity).
    let (mut last, mut same) = (-1, 0);
    while same < 10 {
        let mut queued: libc::c_int = 0;
        assert_eq!(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) }, 0);
        if queued >= capacity {
            break;
        }
        same = if queued > 0 && queued == last {
            same + 1
        } else {
            0
        };
        last = queued;
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended before filling the pipe"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let hwm = std::fs::read_to_string(&status)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    std::io::copy(&mut out, &mut std::io::sink()).unwrap();
    assert!(child.wait().unwrap().success());
    hwm
}

/// `inspect --json` streams: on a header of 300,000 tensors it holds no more than the
/// text form, which writes line by line (it used to build the whole document as a
/// serde_json::Value first, at several times that).
#[test]
fn inspect_json_streams_a_huge_header() {
    let d = disk_tempdir();
    let p = d.path().join("wide.safetensors");
    many_tensors(&p, 300_000);
    let text_kib = peak_when_blocked(&[OsStr::new("inspect"), p.as_os_str()]);
    let json_kib = peak_when_blocked(&[OsStr::new("inspect"), p.as_os_str(), OsStr::new("--json")]);
    assert!(
        json_kib * 10 < text_kib * 13,
        "inspect --json held {json_kib} KiB, inspect {text_kib} KiB"
    );
    // And the document is whole.
    let o = run([OsStr::new("inspect"), p.as_os_str(), OsStr::new("--json")]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tensor_count"], 300_000);
    assert_eq!(v["shards"][0]["tensors"].as_array().unwrap().len(), 300_000);
}

/// The new user's list (issue 18): dtype aliases and the names listed, --io and
/// --device listing theirs, no colour codes in redirected -v output, column headers,
/// a legend and progress from bench, and load --help defining its JSON fields.
#[test]
fn usability_of_flags_help_and_output() {
    let d = disk_tempdir();
    let p = d.path().join("m.safetensors");
    small(&p, 14);
    for alias in ["fp16", "F16", "f16", "FP32", "bf16", "Bf16"] {
        let o = run([
            OsStr::new("load"),
            p.as_os_str(),
            OsStr::new("--dtype"),
            OsStr::new(alias),
            OsStr::new("--digest"),
        ]);
        assert_code(&o, 0, alias);
    }
    let o = run([
        OsStr::new("load"),
        p.as_os_str(),
        OsStr::new("--dtype"),
        OsStr::new("fp12"),
    ]);
    assert_code(&o, 2, "--dtype fp12");
    assert!(
        text(&o.stderr).contains("unknown dtype 'fp12' (one of: F32, F16, BF16"),
        "{}",
        text(&o.stderr)
    );
    for (flag, value, lists) in [
        ("--io", "floppy", "pread-direct"),
        ("--device", "tpu", "cuda:N"),
    ] {
        let o = run([
            OsStr::new("load"),
            p.as_os_str(),
            OsStr::new(flag),
            OsStr::new(value),
        ]);
        assert_code(&o, 2, flag);
        assert!(text(&o.stderr).contains(lists), "{}", text(&o.stderr));
    }
    let o = run([OsStr::new("load"), p.as_os_str(), OsStr::new("-v")]);
    assert_code(&o, 0, "-v");
    assert!(
        !o.stderr.is_empty() && !o.stderr.contains(&0x1b),
        "{}",
        text(&o.stderr)
    );
    let o = run([OsStr::new("inspect"), p.as_os_str()]);
    let out = text(&o.stdout);
    let head = out.lines().nth(1).unwrap();
    assert_eq!(
        head.split_whitespace().collect::<Vec<_>>(),
        ["name", "dtype", "shape", "bytes"]
    );
    let o = run([
        OsStr::new("bench"),
        p.as_os_str(),
        OsStr::new("--warm"),
        OsStr::new("--runs"),
        OsStr::new("3"),
        OsStr::new("--backends"),
        OsStr::new("pread"),
    ]);
    assert_code(&o, 0, "bench");
    let out = text(&o.stdout);
    assert!(
        out.contains("# GB/s: tensor bytes loaded / wall seconds"),
        "{out}"
    );
    assert!(
        out.contains("# warm: ") && !out.contains("# cold: "),
        "{out}"
    );
    let row = out.lines().find(|l| l.starts_with("warm")).unwrap();
    assert!(
        row.contains("median of 3") && row.contains("spread"),
        "{row}"
    );
    assert!(
        text(&o.stderr).contains("bench: warm pread run 3/3"),
        "{}",
        text(&o.stderr)
    );
    let o = run(["load", "--help"]);
    let help = text(&o.stdout);
    for w in [
        "read_bytes (bytes read from",
        "in_place_bytes (bytes of the reads",
        "U+FFFD",
    ] {
        assert!(help.contains(w), "no {w:?} in {help}");
    }
    let o = run(["--help"]);
    assert!(
        text(&o.stdout).contains("closed stdout"),
        "{}",
        text(&o.stdout)
    );
}
