//! Header parsing, differential against the reference `safetensors` crate: on valid
//! files and on mutated ones, `Header::parse_prefix` and `Header::read` accept exactly
//! what `safetensors::SafeTensors::deserialize` accepts (except duplicate tensor
//! names, which we reject and the reference silently collapses), and on agreement
//! they describe the same tensors.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use common::{random_bytes, rng, whole_bytes};
use proptest::prelude::*;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use tensorstream::{Dtype, ErrorKind, Header};

/// Unknown fields a writer might add to a tensor entry; both parsers ignore them.
const EXTRA_FIELDS: [&str; 4] = [
    r#""extra":1"#,
    r#""note":"written by a test""#,
    r#""nested":{"a":[1,2,{"b":null}],"c":true}"#,
    r#""quant":[0.5,-1e3]"#,
];

#[derive(Debug, Clone)]
enum MetaGen {
    Absent,
    Null,
    Map(BTreeMap<String, String>),
}

#[derive(Debug, Clone)]
struct GenTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<u64>,
    extras: Vec<usize>,
    field_order: usize,
}

/// A valid file, described so that it can be rendered with any key order, layout
/// order and whitespace, and mutated structurally before rendering.
#[derive(Debug, Clone)]
struct GenFile {
    tensors: Vec<GenTensor>,
    key_order: Vec<usize>,
    layout_order: Vec<usize>,
    metadata: MetaGen,
    metadata_pos: usize,
    lead_ws: String,
    sep: &'static str,
    pad: usize,
    seed: u64,
}

#[derive(Debug, Clone)]
enum Mutation {
    None,
    /// XOR a byte of the prefix or header.
    Flip {
        pos: usize,
        xor: u8,
    },
    /// Move one tensor's begin or end.
    Shift {
        tensor: usize,
        end: bool,
        delta: i64,
    },
    /// Change (or add) one dimension of a tensor's shape.
    Shape {
        tensor: usize,
        dim: usize,
        value: u64,
    },
    /// Keep only the first `keep`/1000 of the file.
    Truncate {
        keep: usize,
    },
    /// Append bytes after the data.
    Trailing {
        n: usize,
    },
    /// Make the length prefix lie by `delta`.
    LengthLie {
        delta: i64,
    },
    /// Replace the length prefix.
    HugeLength {
        n: u64,
    },
    /// Give tensor `to` the name of tensor `from` (textually: two entries, one name).
    RenameDup {
        from: usize,
        to: usize,
    },
    /// Insert a verbatim copy of tensor `tensor`'s entry at position `at`.
    CopyEntry {
        tensor: usize,
        at: usize,
    },
}

fn name_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z_]{1,6}(\\.[a-z0-9_]{1,6}){0,3}",
        1 => "[ -~é😀\\\\\"\\n\\t]{0,6}",
    ]
}

fn tensor_strategy(name: String) -> impl Strategy<Value = GenTensor> {
    (
        0..Dtype::ALL.len(),
        prop::collection::vec(0u64..6, 0..4),
        prop::collection::vec(0..EXTRA_FIELDS.len(), 0..3),
        0usize..6,
    )
        .prop_map(move |(d, shape, extras, field_order)| {
            let dtype = Dtype::ALL[d];
            GenTensor {
                name: name.clone(),
                dtype,
                shape: whole_bytes(dtype, shape),
                extras,
                field_order,
            }
        })
}

fn file_strategy() -> impl Strategy<Value = GenFile> {
    prop::collection::btree_set(name_strategy(), 0..=12)
        .prop_flat_map(|names| {
            let n = names.len();
            let tensors: Vec<_> = names.into_iter().map(tensor_strategy).collect();
            let perm: Vec<usize> = (0..n).collect();
            let metadata = prop_oneof![
                2 => Just(MetaGen::Absent),
                1 => Just(MetaGen::Null),
                3 => prop::collection::btree_map("[a-z_]{1,8}", "[ -~é]{0,10}", 0..4).prop_map(MetaGen::Map),
            ];
            (
                tensors,
                Just(perm.clone()).prop_shuffle(),
                Just(perm).prop_shuffle(),
                metadata,
                0..=n,
                "[ \\n\\t\\r]{0,3}",
                prop_oneof![Just(""), Just(" "), Just("\n  ")],
                0usize..20,
                any::<u64>(),
            )
        })
        .prop_map(
            |(tensors, key_order, layout_order, metadata, metadata_pos, lead_ws, sep, pad, seed)| GenFile {
                tensors,
                key_order,
                layout_order,
                metadata,
                metadata_pos,
                lead_ws,
                sep,
                pad,
                seed,
            },
        )
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => Just(Mutation::None),
        3 => (any::<usize>(), 1u8..=255).prop_map(|(pos, xor)| Mutation::Flip { pos, xor }),
        2 => (
            any::<usize>(),
            any::<bool>(),
            prop_oneof![4 => -9i64..=9, 1 => Just(i64::MAX), 1 => Just(i64::MIN)]
        )
            .prop_map(|(tensor, end, delta)| Mutation::Shift { tensor, end, delta }),
        2 => (
            any::<usize>(),
            0usize..4,
            prop_oneof![4 => 0u64..8, 1 => Just(1u64 << 32), 1 => Just(u64::MAX), 1 => Just(1u64 << 61)]
        )
            .prop_map(|(tensor, dim, value)| Mutation::Shape { tensor, dim, value }),
        1 => (0usize..1000).prop_map(|keep| Mutation::Truncate { keep }),
        1 => (1usize..20).prop_map(|n| Mutation::Trailing { n }),
        1 => prop_oneof![-9i64..=9, Just(i64::MIN)].prop_map(|delta| Mutation::LengthLie { delta }),
        1 => prop_oneof![
            Just(100_000_001u64),
            Just(100_000_000u64),
            Just(u64::MAX),
            Just(1u64 << 63)
        ]
        .prop_map(|n| Mutation::HugeLength { n }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(from, to)| Mutation::RenameDup { from, to }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(tensor, at)| Mutation::CopyEntry { tensor, at }),
    ]
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Renders the file to bytes, applying the mutation.
fn render(f: &GenFile, m: &Mutation) -> Vec<u8> {
    let count = f.tensors.len();
    let mut tensors = f.tensors.clone();
    if let (Mutation::Shape { tensor, dim, value }, true) = (m, count > 0) {
        let t = &mut tensors[tensor % count];
        match t.shape.get_mut(*dim) {
            Some(d) => *d = *value,
            None => t.shape.push(*value),
        }
    }
    // Offsets follow the layout order, independent of the JSON key order.
    let mut offsets = vec![(0u64, 0u64); count];
    let mut total = 0u64;
    for &i in &f.layout_order {
        let t = &f.tensors[i];
        let len = common::byte_len(t.dtype, &t.shape) as u64;
        offsets[i] = (total, total + len);
        total += len;
    }
    if let (Mutation::Shift { tensor, end, delta }, true) = (m, count > 0) {
        let o = &mut offsets[tensor % count];
        let v = if *end { &mut o.1 } else { &mut o.0 };
        *v = (*v as i128 + *delta as i128).clamp(0, u64::MAX as i128) as u64;
    }
    if let (Mutation::RenameDup { from, to }, true) = (m, count > 1) {
        let name = tensors[from % count].name.clone();
        tensors[to % count].name = name;
    }
    let sep = f.sep;
    let entry = |i: usize| -> String {
        let t = &tensors[i];
        let (b, e) = offsets[i];
        let mut fields = vec![
            format!(r#""dtype":{sep}"{}""#, t.dtype.name()),
            format!(r#""shape":{}"#, serde_json::to_string(&t.shape).unwrap()),
            format!(r#""data_offsets":[{b},{sep}{e}]"#),
        ];
        fields.rotate_left(t.field_order % 3);
        if t.field_order >= 3 {
            fields.swap(0, 1);
        }
        for (k, &x) in t.extras.iter().enumerate() {
            let at = (k * 2 + t.field_order) % (fields.len() + 1);
            fields.insert(at, EXTRA_FIELDS[x].to_string());
        }
        format!("{}:{sep}{{{}}}", json_str(&t.name), fields.join(","))
    };
    let mut entries: Vec<String> = f.key_order.iter().map(|&i| entry(i)).collect();
    if let (Mutation::CopyEntry { tensor, at }, true) = (m, count > 0) {
        let copy = entry(tensor % count);
        entries.insert(at % (entries.len() + 1), copy);
    }
    let meta = match &f.metadata {
        MetaGen::Absent => None,
        MetaGen::Null => Some("null".to_string()),
        MetaGen::Map(map) => Some(serde_json::to_string(map).unwrap()),
    };
    if let Some(meta) = meta {
        entries.insert(
            f.metadata_pos.min(entries.len()),
            format!(r#""__metadata__":{sep}{meta}"#),
        );
    }
    let join = format!(",{sep}");
    let json = format!(
        "{}{{{sep}{}{sep}}}{}",
        f.lead_ws,
        entries.join(&join),
        " ".repeat(f.pad)
    );
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    let mut r = rng(f.seed);
    bytes.extend(random_bytes(&mut r, total as usize));
    match *m {
        Mutation::Flip { pos, xor } => {
            let at = pos % (8 + json.len());
            bytes[at] ^= xor;
        }
        Mutation::Truncate { keep } => {
            let len = bytes.len() * keep / 1000;
            bytes.truncate(len);
        }
        Mutation::Trailing { n } => bytes.extend(random_bytes(&mut r, n)),
        Mutation::LengthLie { delta } => {
            let n = (json.len() as i128 + delta as i128).clamp(0, u64::MAX as i128) as u64;
            bytes[..8].copy_from_slice(&n.to_le_bytes());
        }
        Mutation::HugeLength { n } => bytes[..8].copy_from_slice(&n.to_le_bytes()),
        _ => {}
    }
    bytes
}

/// True when the JSON header of `bytes` is a valid JSON object with a tensor name
/// (any key but `__metadata__`) that appears more than once.
fn has_duplicate_tensor_name(bytes: &[u8]) -> bool {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                keys.push(k);
            }
            Ok(keys)
        }
    }
    let Some(n) = bytes
        .get(..8)
        .map(|p| u64::from_le_bytes(p.try_into().unwrap()))
    else {
        return false;
    };
    let Some(json) = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .and_then(|end| bytes.get(8..end))
    else {
        return false;
    };
    let Ok(text) = std::str::from_utf8(json) else {
        return false;
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let Ok(keys) = (&mut de).deserialize_map(Keys) else {
        return false;
    };
    if de.end().is_err() {
        return false;
    }
    let mut seen = HashSet::new();
    keys.iter()
        .filter(|k| k.as_str() != "__metadata__")
        .any(|k| !seen.insert(k.clone()))
}

/// The reference's verdict; a panic inside it (it has unchecked additions) counts as
/// a rejection and is reported.
fn reference_accepts(bytes: &[u8]) -> bool {
    match catch_unwind(AssertUnwindSafe(|| {
        safetensors::SafeTensors::deserialize(bytes).is_ok()
    })) {
        Ok(ok) => ok,
        Err(_) => {
            eprintln!("note: the reference crate panicked on this input; counted as rejected");
            false
        }
    }
}

type Described = BTreeMap<String, (String, Vec<u64>, u64, u64)>;

fn ours_described(h: &Header) -> Described {
    h.tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                (t.dtype.name().to_string(), t.shape.clone(), t.begin, t.end),
            )
        })
        .collect()
}

fn reference_described(bytes: &[u8]) -> (usize, Described, Option<BTreeMap<String, String>>) {
    let (n, meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let tensors = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            (
                name,
                (
                    info.dtype.to_string(),
                    info.shape.iter().map(|&d| d as u64).collect(),
                    info.data_offsets.0 as u64,
                    info.data_offsets.1 as u64,
                ),
            )
        })
        .collect();
    let m = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    (n, tensors, m)
}

/// Checks our verdicts (pure and from a file) against the reference on `bytes`.
fn check_against_reference(bytes: &[u8], file: &Path) -> Result<(), TestCaseError> {
    let ours = Header::parse_prefix(Path::new("f"), bytes, bytes.len() as u64);
    std::fs::write(file, bytes).unwrap();
    let ours_read = Header::read(file);
    prop_assert_eq!(
        ours.is_ok(),
        ours_read.is_ok(),
        "parse_prefix: {:?}\nread: {:?}",
        ours.as_ref().err().map(ToString::to_string),
        ours_read.as_ref().err().map(ToString::to_string)
    );
    let text = String::from_utf8_lossy(bytes.get(8..).unwrap_or_default());
    if has_duplicate_tensor_name(bytes) {
        prop_assert!(
            ours.is_err(),
            "a duplicate tensor name was accepted: {}",
            text
        );
        return Ok(());
    }
    let reference = reference_accepts(bytes);
    prop_assert_eq!(
        reference,
        ours.is_ok(),
        "reference accepts: {}, ours: {:?}\nfile ({} bytes): {:?}",
        reference,
        ours.as_ref().err().map(ToString::to_string),
        bytes.len(),
        text
    );
    if let (Ok(h), Ok(hr)) = (&ours, &ours_read) {
        let (n, tensors, meta) = reference_described(bytes);
        prop_assert_eq!(h.header_len, n as u64);
        prop_assert_eq!(h.file_len, bytes.len() as u64);
        prop_assert_eq!(&ours_described(h), &tensors);
        prop_assert_eq!(&ours_described(hr), &tensors);
        prop_assert_eq!(&h.metadata, &meta);
        prop_assert_eq!(&hr.metadata, &meta);
        // Sorted by offset, and every name looks up its own entry.
        prop_assert!(h
            .tensors
            .windows(2)
            .all(|w| (w[0].begin, w[0].end) <= (w[1].begin, w[1].end)));
        for t in &h.tensors {
            prop_assert_eq!(h.tensor(&t.name), Some(t));
        }
        prop_assert_eq!(h.data_start() + h.data_len(), bytes.len() as u64);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Unmutated generated files are valid: both parsers accept them.
    #[test]
    fn generated_files_are_accepted_by_both(f in file_strategy()) {
        let bytes = render(&f, &Mutation::None);
        prop_assert!(reference_accepts(&bytes), "generator made an invalid file: {:?}", String::from_utf8_lossy(&bytes[8..]));
        let dir = tempfile::tempdir().unwrap();
        check_against_reference(&bytes, &dir.path().join("f.safetensors"))?;
        prop_assert!(Header::parse_prefix(Path::new("f"), &bytes, bytes.len() as u64).is_ok());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Mutated files: same verdict as the reference, same tensors when both accept.
    #[test]
    fn mutated_files_get_the_reference_verdict(f in file_strategy(), m in mutation_strategy()) {
        let bytes = render(&f, &m);
        let dir = tempfile::tempdir().unwrap();
        check_against_reference(&bytes, &dir.path().join("f.safetensors"))?;
    }

    /// Several byte flips at once in the prefix and header.
    #[test]
    fn multiple_flips_get_the_reference_verdict(
        f in file_strategy(),
        flips in prop::collection::vec((any::<usize>(), 1u8..=255), 1..6),
    ) {
        let mut bytes = render(&f, &Mutation::None);
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for (pos, xor) in flips {
            bytes[pos % (8 + n)] ^= xor;
        }
        let dir = tempfile::tempdir().unwrap();
        check_against_reference(&bytes, &dir.path().join("f.safetensors"))?;
    }
}

// ---------------------------------------------------------------------------
// Regression cases.
// ---------------------------------------------------------------------------

fn file_with(json: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (json.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(json.as_bytes());
    v.extend_from_slice(data);
    v
}

fn parse(bytes: &[u8]) -> tensorstream::Result<Header> {
    Header::parse_prefix(Path::new("m.safetensors"), bytes, bytes.len() as u64)
}

/// Both the pure parser and `Header::read` on a real file; asserts they agree.
fn parse_both(bytes: &[u8]) -> tensorstream::Result<Header> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let a = parse(bytes);
    let b = Header::read(&p);
    assert_eq!(
        a.is_ok(),
        b.is_ok(),
        "parse_prefix {:?} vs read {:?}",
        a.as_ref().err().map(ToString::to_string),
        b.as_ref().err().map(ToString::to_string)
    );
    a
}

#[test]
fn header_length_over_the_limit_is_rejected_before_reading() {
    let mut r = rng(1);
    let data = random_bytes(&mut r, 4);
    let mut bytes = file_with(
        r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
        &data,
    );
    bytes[..8].copy_from_slice(&100_000_001u64.to_le_bytes());
    assert!(!reference_accepts(&bytes));
    let e = parse_both(&bytes).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidHeader);
    assert!(e.to_string().contains("exceeds the format's limit"), "{e}");
    // Even when the file is long enough to hold such a header: a sparse file.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.safetensors");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(200_000_000).unwrap();
    drop(f);
    let mut head = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    std::io::Write::write_all(&mut head, &100_000_001u64.to_le_bytes()).unwrap();
    drop(head);
    let e = Header::read(&p).unwrap_err();
    assert!(e.to_string().contains("exceeds the format's limit"), "{e}");
    assert!(e.to_string().contains("big.safetensors"), "{e}");
    // The pure parser, told the file is huge but given only the prefix.
    let e = Header::parse_prefix(Path::new("f"), &bytes[..8], 200_000_000).unwrap_err();
    assert!(e.to_string().contains("exceeds the format's limit"), "{e}");
}

#[test]
fn header_length_past_eof_is_rejected() {
    let mut r = rng(2);
    let data = random_bytes(&mut r, 4);
    let json = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    let mut bytes = file_with(json, &data);
    for n in [
        bytes.len() as u64 - 7,
        bytes.len() as u64,
        u64::MAX - 7,
        u64::MAX,
    ] {
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        assert!(!reference_accepts(&bytes), "n = {n}");
        let e = parse_both(&bytes).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidHeader, "n = {n}: {e}");
    }
    // Files shorter than the prefix.
    for len in 0..8 {
        assert!(!reference_accepts(&bytes[..len]));
        assert!(
            parse_both(&bytes[..len]).is_err(),
            "{len}-byte file accepted"
        );
    }
}

#[test]
fn non_utf8_header_is_rejected() {
    let mut r = rng(3);
    let data = random_bytes(&mut r, 4);
    let json = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    let mut bytes = file_with(json, &data);
    // Inside the tensor name, where only the encoding is wrong.
    bytes[8 + 2] = 0xFF;
    assert!(!reference_accepts(&bytes));
    let e = parse_both(&bytes).unwrap_err();
    assert!(e.to_string().contains("UTF-8"), "{e}");
    assert!(e.to_string().contains("m.safetensors"), "{e}");
}

#[test]
fn metadata_with_non_string_values_is_rejected() {
    let mut r = rng(4);
    let data = random_bytes(&mut r, 4);
    for meta in [
        r#"{"a":1}"#,
        r#"{"a":{"b":"c"}}"#,
        r#"{"a":null}"#,
        r#"{"a":["x"]}"#,
        r#""pt""#,
        "[]",
    ] {
        let json = format!(
            r#"{{"__metadata__":{meta},"t":{{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}}}"#
        );
        let bytes = file_with(&json, &data);
        assert!(!reference_accepts(&bytes), "{json}");
        assert!(parse_both(&bytes).is_err(), "accepted {json}");
    }
    // String values are fine, and kept.
    let json = r#"{"__metadata__":{"format":"pt","é":"\u00e9\n"},"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
    let bytes = file_with(json, &data);
    assert!(reference_accepts(&bytes));
    let h = parse_both(&bytes).unwrap();
    let m = h.metadata.unwrap();
    assert_eq!(m["format"], "pt");
    assert_eq!(m["é"], "é\n");
}

#[test]
fn duplicate_metadata_key_gets_the_reference_verdict() {
    let mut r = rng(5);
    let data = random_bytes(&mut r, 4);
    let json = r#"{"__metadata__":{"a":"b"},"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"__metadata__":{"c":"d"}}"#;
    let bytes = file_with(json, &data);
    assert_eq!(parse_both(&bytes).is_ok(), reference_accepts(&bytes));
}

#[test]
fn empty_header_with_no_data_is_valid() {
    for json in [
        "{}",
        "{}      ",
        "  {}",
        "\n{ }\t",
        r#"{"__metadata__":{}}"#,
    ] {
        let bytes = file_with(json, &[]);
        assert!(reference_accepts(&bytes), "{json:?}");
        let h = parse_both(&bytes).unwrap();
        assert!(h.tensors.is_empty());
        assert_eq!(h.data_len(), 0);
        assert_eq!(h.header_len, json.len() as u64);
    }
    // ... but not with data after it.
    let bytes = file_with("{}", &[0x5A]);
    assert!(!reference_accepts(&bytes));
    let e = parse_both(&bytes).unwrap_err();
    assert!(e.to_string().contains("trailing bytes"), "{e}");
}

#[test]
fn duplicate_tensor_name_is_rejected_though_the_reference_accepts_it() {
    let mut r = rng(6);
    let data = random_bytes(&mut r, 4);
    let entry = r#""a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}"#;
    let bytes = file_with(&format!("{{{entry},{entry}}}"), &data);
    assert!(
        reference_accepts(&bytes),
        "the reference collapses duplicates (last wins)"
    );
    let e = parse_both(&bytes).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidTensor);
    assert_eq!(e.tensor(), Some("a"));
    assert!(e.to_string().contains("appears twice"), "{e}");
}

#[test]
fn offsets_gaps_overlaps_and_reversed_are_rejected_with_the_tensor_named() {
    let mut r = rng(7);
    let data = random_bytes(&mut r, 8);
    let cases = [
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[3,7]}}"#,
            "b",
            "overlap",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[3],"data_offsets":[5,8]}}"#,
            "b",
            "gap",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[1,5]},"b":{"dtype":"U8","shape":[3],"data_offsets":[5,8]}}"#,
            "a",
            "gap",
        ),
        (
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[8,4]}}"#,
            "a",
            "end before",
        ),
        (
            r#"{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}}"#,
            "a",
            "needs 6 bytes",
        ),
    ];
    for (json, tensor, what) in cases {
        let bytes = file_with(json, &data);
        assert!(!reference_accepts(&bytes), "{json}");
        let e = parse_both(&bytes).unwrap_err();
        assert_eq!(e.tensor(), Some(tensor), "{json}: {e}");
        assert!(e.to_string().contains(what), "{json}: {e}");
    }
}

#[test]
fn sub_byte_dtypes_need_whole_bytes() {
    let mut r = rng(8);
    for (dtype, n, ok) in [
        ("F4", 2u64, true),
        ("F4", 3, false),
        ("F6_E2M3", 4, true),
        ("F6_E3M2", 2, false),
        ("F6_E3M2", 8, true),
    ] {
        let bits = if dtype == "F4" { 4 } else { 6 };
        let len = (n * bits).div_ceil(8);
        let data = random_bytes(&mut r, len as usize);
        let json =
            format!(r#"{{"x":{{"dtype":"{dtype}","shape":[{n}],"data_offsets":[0,{len}]}}}}"#);
        let bytes = file_with(&json, &data);
        assert_eq!(reference_accepts(&bytes), ok, "{json}");
        assert_eq!(parse_both(&bytes).is_ok(), ok, "{json}");
    }
    // A scalar F4 is half a byte.
    let bytes = file_with(
        r#"{"x":{"dtype":"F4","shape":[],"data_offsets":[0,0]}}"#,
        &[],
    );
    assert!(!reference_accepts(&bytes));
    assert!(parse_both(&bytes).is_err());
}

/// Eight U8 tensors of 2^61 - 8 bytes each (the most whose bit count fits 64 bits),
/// tiling the data section up to 2^64 - 64.
fn near_max_json() -> String {
    let size = (1u64 << 61) - 8;
    let entries: Vec<String> = (0..8u64)
        .map(|i| {
            let off = i * size;
            format!(
                r#""t{i}":{{"dtype":"U8","shape":[{size}],"data_offsets":[{off},{}]}}"#,
                off + size
            )
        })
        .collect();
    format!("{{{}}}", entries.join(","))
}

/// Offsets that tile the data section up to just below 2^64: the length check must
/// not overflow (the reference's unchecked addition would panic in a debug build).
#[test]
fn data_length_near_u64_max_is_rejected_without_overflow() {
    let json = near_max_json();
    let bytes = file_with(&json, &[1, 2, 3]);
    let e = parse_both(&bytes).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidHeader, "{e}");
}

/// The message for a data section whose end overflows 64 bits should call the file
/// truncated (it can only be too short), not say it has trailing bytes.
#[test]
fn data_length_overflow_is_reported_as_truncated() {
    let json = near_max_json();
    let e = parse(&file_with(&json, &[1, 2, 3]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn shape_overflow_is_rejected() {
    let json = r#"{"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#;
    let bytes = file_with(json, &[1, 2, 3, 4]);
    assert!(!reference_accepts(&bytes));
    let e = parse_both(&bytes).unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
    assert_eq!(e.tensor(), Some("x"));
}

#[test]
fn two_hundred_thousand_tiny_tensors_parse() {
    const N: usize = 200_000;
    let mut json = String::with_capacity(N * 64);
    json.push('{');
    for i in 0..N {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(
            r#""t.{i}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{}]}}"#,
            i + 1
        ));
    }
    json.push('}');
    let mut r = rng(9);
    let data = random_bytes(&mut r, N);
    let bytes = file_with(&json, &data);
    assert!(bytes.len() < 100_000_000);
    assert!(reference_accepts(&bytes));
    let h = parse_both(&bytes).unwrap();
    assert_eq!(h.tensors.len(), N);
    for i in [0, 1, 12_345, N - 1] {
        let t = h.tensor(&format!("t.{i}")).unwrap();
        assert_eq!((t.begin, t.end), (i as u64, i as u64 + 1));
        assert_eq!(t.dtype, Dtype::U8);
    }
    assert_eq!(h.data_len(), N as u64);
}

/// Every dtype, written by the reference crate itself, parses to the same tensors.
#[test]
fn every_dtype_written_by_the_reference_parses() {
    let mut r = rng(10);
    let tensors: Vec<common::Spec> = Dtype::ALL
        .iter()
        .enumerate()
        .map(|(i, &d)| common::Spec::random(format!("t{i}.{}", d.name()), d, &[3, 5], &mut r))
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = common::serialize(&tensors, Some(meta));
    let dir = tempfile::tempdir().unwrap();
    check_against_reference(&bytes, &dir.path().join("f.safetensors")).unwrap();
    let h = parse(&bytes).unwrap();
    assert_eq!(h.tensors.len(), 22);
    for t in &tensors {
        let ours = h.tensor(&t.name).unwrap();
        assert_eq!(ours.dtype, t.dtype);
        assert_eq!(ours.shape, t.shape);
        assert_eq!(ours.len() as usize, t.data.len());
        let start = (h.data_start() + ours.begin) as usize;
        assert_eq!(&bytes[start..start + t.data.len()], &t.data[..]);
    }
}

/// Unusual but well-formed JSON shapes of a tensor entry: same verdict as the reference.
#[test]
fn unusual_entry_forms_get_the_reference_verdict() {
    let mut r = rng(11);
    let data = random_bytes(&mut r, 4);
    let entries = [
        r#"["U8",[4],[0,4]]"#,
        r#"{"dtype":"U8","shape":[4],"data_offsets":[0,4,4]}"#,
        r#"{"dtype":"U8","shape":[4],"data_offsets":[0]}"#,
        r#"{"dtype":"u8","shape":[4],"data_offsets":[0,4]}"#,
        r#"{"dtype":"U8","shape":null,"data_offsets":[0,4]}"#,
        r#"{"dtype":"U8","shape":[4.0],"data_offsets":[0,4]}"#,
        r#"{"dtype":"U8","shape":[4],"data_offsets":[0,4e0]}"#,
        r#"{"dtype":"U8","shape":[-0,4],"data_offsets":[0,0]}"#,
        r#"{"dtype":"U8","shape":[4],"data_offsets":[0,4],"dtype":"U8"}"#,
        r#"{"dtype":"U8","shape":[4]}"#,
        r#"{"dtype":"U8","shape":[4],"data_offsets":{"0":0,"1":4}}"#,
        r#"{"dtype":{"U8":null},"shape":[4],"data_offsets":[0,4]}"#,
        r#"{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,4]}"#,
        r#"{"dtype":"U8","shape":[2,2],"data_offsets":[0,4],"data_offsets_extra":[9]}"#,
        r#"{"DTYPE":"U8","dtype":"U8","shape":[4],"data_offsets":[0,4]}"#,
        "4",
        "null",
    ];
    for entry in entries {
        let json = format!(r#"{{"t":{entry}}}"#);
        let bytes = file_with(&json, &data);
        assert_eq!(
            parse_both(&bytes).is_ok(),
            reference_accepts(&bytes),
            "{json}: ours {:?}",
            parse(&bytes).err().map(|e| e.to_string())
        );
    }
    // Top-level shapes.
    for json in ["[]", "null", "\"x\"", "{} {}", "{}\0", "{\"t\":{}}"] {
        let bytes = file_with(json, &[]);
        assert_eq!(
            parse_both(&bytes).is_ok(),
            reference_accepts(&bytes),
            "{json:?}"
        );
    }
}
