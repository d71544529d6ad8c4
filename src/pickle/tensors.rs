//! From the unpickled tree to tensors: the state dict found and named, each
//! tensor's layout checked against its storage, and strided views gathered
//! into contiguous bytes. Pure: no I/O.

use std::collections::BTreeSet;

use super::unpickle::{Id, Node, TensorRef, Tree};
/// Deepest nesting of dicts followed, and most values visited, while naming tensors.
const MAX_DEPTH: usize = 64;
const MAX_VISITS: usize = 1 << 22;
/// Keys under which a checkpoint commonly nests its state dict.
const NESTED_KEYS: [&str; 4] = ["state_dict", "model", "model_state_dict", "module"];

/// Where a tensor's bytes lie in its storage entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Bytes per element.
    pub elem: u64,
    /// Elements in the tensor.
    pub numel: u64,
    /// First byte of the storage the tensor reads.
    pub first: u64,
    /// Bytes from `first` through the last element the tensor reads.
    pub span: u64,
    /// Whether the elements lie in C order with no gaps (a plain byte range).
    pub contiguous: bool,
}

/// Checks a tensor against its storage (`storage_bytes` long) and says which bytes
/// it reads. Every product and sum is checked.
pub fn layout(t: &TensorRef, storage_bytes: u64) -> Result<Layout, String> {
    if !t.dtype.bits().is_multiple_of(8) {
        return Err(format!("dtype {} is not whole bytes", t.dtype.name()));
    }
    let elem = t.dtype.bits() / 8;
    let declared = match t.storage.dtype {
        Some(d) => t.storage.numel.checked_mul(d.bits() / 8),
        None => Some(t.storage.numel),
    };
    if declared != Some(storage_bytes) {
        return Err(format!(
            "storage {} holds {storage_bytes} bytes, but the pickle declares {} elements",
            t.storage.key, t.storage.numel
        ));
    }
    let overflow = || "the size overflows".to_string();
    let numel = t
        .size
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(overflow)?;
    let mut contiguous = true;
    let mut expect = 1u64;
    let mut last = t.offset;
    for (&d, &s) in t.size.iter().zip(&t.stride).rev() {
        if d != 1 && s != expect {
            contiguous = false;
        }
        expect = expect.checked_mul(d).ok_or_else(overflow)?;
        let reach = d.saturating_sub(1).checked_mul(s).ok_or_else(overflow)?;
        last = last.checked_add(reach).ok_or_else(overflow)?;
    }
    let first = t.offset.checked_mul(elem).ok_or_else(overflow)?;
    if numel == 0 {
        return Ok(Layout {
            elem,
            numel,
            first: 0,
            span: 0,
            contiguous: true,
        });
    }
    let end = last
        .checked_add(1)
        .and_then(|n| n.checked_mul(elem))
        .ok_or_else(overflow)?;
    if end > storage_bytes {
        return Err(format!(
            "reads up to byte {end} of storage {}, which holds {storage_bytes} bytes",
            t.storage.key
        ));
    }
    Ok(Layout {
        elem,
        numel,
        first,
        span: end - first,
        contiguous,
    })
}

/// Copies the elements of a strided view out of `src` (the storage bytes from
/// `layout.first`, `layout.span` long) into `out` in C order. `None` when a
/// length disagrees with the layout (never the case after [`layout`] accepted it).
pub fn gather(t: &TensorRef, l: &Layout, src: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let elem = usize::try_from(l.elem).ok()?;
    let rank = t.size.len();
    let mut index = vec![0u64; rank];
    out.clear();
    out.reserve(usize::try_from(l.numel.checked_mul(l.elem)?).ok()?);
    for _ in 0..l.numel {
        let rel = index
            .iter()
            .zip(&t.stride)
            .try_fold(0u64, |a, (&i, &s)| a.checked_add(i.checked_mul(s)?))?;
        let at = usize::try_from(rel.checked_mul(l.elem)?).ok()?;
        out.extend_from_slice(src.get(at..at.checked_add(elem)?)?);
        for (i, &d) in index.iter_mut().zip(&t.size).rev() {
            *i += 1;
            if *i < d {
                break;
            }
            *i = 0;
        }
    }
    Some(())
}

/// The tensors of a checkpoint, by dotted name, and the entries that are not tensors.
#[derive(Debug, Default)]
pub struct Collected {
    /// Every tensor, by name (unique).
    pub tensors: Vec<(String, TensorRef)>,
    /// Names of the values skipped, each with what it is ("epoch (int)").
    pub skipped: Vec<String>,
}

fn kind(n: Option<&Node>) -> &'static str {
    match n {
        Some(Node::None) => "None",
        Some(Node::Bool(_)) => "bool",
        Some(Node::Int(_)) => "int",
        Some(Node::Float(_)) => "float",
        Some(Node::Str(_)) => "str",
        Some(Node::Bytes(_)) => "bytes",
        Some(Node::Tuple(_)) => "tuple",
        Some(Node::List(_)) => "list",
        Some(Node::Dict(_)) => "dict",
        Some(Node::Global(_)) => "global",
        Some(Node::Storage(_)) => "storage",
        Some(Node::Tensor(_)) => "tensor",
        Some(Node::Object(o)) => o,
        None => "missing value",
    }
}

fn has_tensors(t: &Tree, id: Id, depth: usize, visits: &mut usize) -> bool {
    *visits += 1;
    if depth > MAX_DEPTH || *visits > MAX_VISITS {
        return false;
    }
    match t.get(id) {
        Some(Node::Tensor(_)) => true,
        Some(Node::Dict(d)) => d.iter().any(|&(_, v)| has_tensors(t, v, depth + 1, visits)),
        _ => false,
    }
}

struct Walk<'a> {
    tree: &'a Tree,
    out: Collected,
    names: BTreeSet<String>,
    visits: usize,
}

impl Walk<'_> {
    fn dict(&mut self, id: Id, prefix: &str, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "dicts nested deeper than {MAX_DEPTH} (at {prefix})"
            ));
        }
        let Some(Node::Dict(items)) = self.tree.get(id) else {
            return Ok(());
        };
        for &(k, v) in items {
            self.visits += 1;
            if self.visits > MAX_VISITS {
                return Err("too many values to visit".into());
            }
            let name = match self.tree.get(k) {
                Some(Node::Str(s)) => format!("{prefix}{s}"),
                Some(Node::Int(i)) => format!("{prefix}{i}"),
                other => {
                    self.out
                        .skipped
                        .push(format!("{prefix}<{} key>", kind(other)));
                    continue;
                }
            };
            match self.tree.get(v) {
                Some(Node::Tensor(t)) => {
                    if !self.names.insert(name.clone()) {
                        return Err(format!("two tensors are named {name:?}"));
                    }
                    self.out.tensors.push((name, t.clone()));
                }
                Some(Node::Dict(_)) => self.dict(v, &format!("{name}."), depth + 1)?,
                other => self.out.skipped.push(format!("{name} ({})", kind(other))),
            }
        }
        Ok(())
    }
}

/// Finds the state dict in the tree (the top-level dict, or the dict under
/// `state_dict`, `model`, `model_state_dict` or `module` when the top level holds
/// no tensor of its own) and names its tensors with dotted paths.
pub fn collect(tree: &Tree) -> Result<Collected, String> {
    let Some(Node::Dict(top)) = tree.get(tree.root) else {
        return Err(format!(
            "the pickle holds a {}, not a dict of tensors",
            kind(tree.get(tree.root))
        ));
    };
    let direct = top
        .iter()
        .any(|&(_, v)| matches!(tree.get(v), Some(Node::Tensor(_))));
    let mut root = tree.root;
    let mut skipped = Vec::new();
    if !direct {
        let mut visits = 0;
        let nested = top.iter().find(|&&(k, v)| {
            matches!(tree.get(k), Some(Node::Str(s)) if NESTED_KEYS.contains(&s.as_str()))
                && has_tensors(tree, v, 0, &mut visits)
        });
        if let Some(&(k, v)) = nested {
            root = v;
            for &(k2, v2) in top.iter().filter(|&&(k2, _)| k2 != k) {
                match tree.get(k2) {
                    Some(Node::Str(s)) => skipped.push(format!("{s} ({})", kind(tree.get(v2)))),
                    other => skipped.push(format!("<{} key>", kind(other))),
                }
            }
        }
    }
    let mut w = Walk {
        tree,
        out: Collected {
            tensors: Vec::new(),
            skipped,
        },
        names: BTreeSet::new(),
        visits: 0,
    };
    w.dict(root, "", 0)?;
    Ok(w.out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::dtype::Dtype;
    use crate::pickle::unpickle::StorageRef;

    fn t(size: Vec<u64>, stride: Vec<u64>, offset: u64, numel: u64) -> TensorRef {
        TensorRef {
            storage: StorageRef {
                dtype: Some(Dtype::F32),
                key: "0".into(),
                numel,
            },
            dtype: Dtype::F32,
            offset,
            size,
            stride,
        }
    }

    #[test]
    fn transposed_view_gathers_in_c_order() {
        let x = t(vec![3, 2], vec![1, 3], 0, 6);
        let l = layout(&x, 24).unwrap();
        assert!(!l.contiguous);
        let src: Vec<u8> = (0..24).collect();
        let mut out = Vec::new();
        gather(&x, &l, &src, &mut out).unwrap();
        let want: Vec<u8> = [0, 3, 1, 4, 2, 5]
            .iter()
            .flat_map(|&e| (e * 4..e * 4 + 4).collect::<Vec<u8>>())
            .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn offsets_past_the_storage_are_refused() {
        assert!(layout(&t(vec![2], vec![1], 5, 6), 24).is_err());
        assert!(layout(&t(vec![u64::MAX, 2], vec![2, 1], 0, 6), 24).is_err());
        assert!(layout(&t(vec![2], vec![1], 0, 6), 20).is_err());
        assert!(layout(&t(vec![2], vec![1], 4, 6), 24).unwrap().contiguous);
    }
}
