//! A restricted unpickler: interprets the pickle opcodes that `torch.save` writes
//! into a tree of values, accepts only an allowlist of globals, and never executes
//! or imports anything.

use std::collections::HashMap;

use crate::format::dtype::Dtype;

/// Index of a value in the [`Tree`].
pub type Id = usize;

/// Most values one pickle may create.
const MAX_NODES: usize = 1 << 24;
/// Deepest stack and most memo entries.
const MAX_STACK: usize = 1 << 20;
const MAX_MEMO: usize = 1 << 20;
/// Most nested MARKs.
const MAX_MARKS: usize = 4096;
/// Most dimensions a tensor may have.
const MAX_RANK: usize = 64;

/// The globals a `torch.save` state dict may name; everything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildV2,
    /// `torch._utils._rebuild_tensor_v3` (takes a dtype; the storage counts bytes).
    RebuildV3,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state`: a parameter with Python
    /// attributes, which are ignored (they may not hold tensors).
    RebuildParameterWithState,
    /// `torch.<X>Storage`: a typed storage class (`None`: `UntypedStorage`, bytes).
    Storage(Option<Dtype>),
    /// `torch.<dtype>`, an argument of `_rebuild_tensor_v3`.
    TorchDtype(Dtype),
    /// `torch.device`.
    Device,
}

/// Maps `module.name` to an allowed global, or `None` when it is refused.
pub fn allowed(module: &str, name: &str) -> Option<Global> {
    use Dtype::*;
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildV2,
        ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildV3,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch", "device") => Global::Device,
        // torch.save names `torch.storage.UntypedStorage` (the class's home).
        ("torch" | "torch.storage", "UntypedStorage") => Global::Storage(None),
        ("torch", s) if s.ends_with("Storage") => Global::Storage(Some(match s {
            "DoubleStorage" => F64,
            "FloatStorage" => F32,
            "HalfStorage" => F16,
            "BFloat16Storage" => BF16,
            "LongStorage" => I64,
            "IntStorage" => I32,
            "ShortStorage" => I16,
            "CharStorage" => I8,
            "ByteStorage" => U8,
            "BoolStorage" => BOOL,
            "ComplexFloatStorage" => C64,
            _ => return None,
        })),
        ("torch", d) => Global::TorchDtype(match d {
            "float64" => F64,
            "float32" => F32,
            "float16" => F16,
            "bfloat16" => BF16,
            "int64" => I64,
            "int32" => I32,
            "int16" => I16,
            "int8" => I8,
            "uint8" => U8,
            "uint16" => U16,
            "uint32" => U32,
            "uint64" => U64,
            "bool" => BOOL,
            "complex64" => C64,
            "float8_e4m3fn" => F8_E4M3,
            "float8_e5m2" => F8_E5M2,
            "float8_e4m3fnuz" => F8_E4M3FNUZ,
            "float8_e5m2fnuz" => F8_E5M2FNUZ,
            "float8_e8m0fnu" => F8_E8M0,
            _ => return None,
        }),
        _ => return None,
    };
    Some(g)
}

/// A storage named by a persistent id: `('storage', type, key, location, numel)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// The element type (`None`: untyped, counted in bytes).
    pub dtype: Option<Dtype>,
    /// The entry name under `<prefix>/data/`.
    pub key: String,
    /// Elements of `dtype` (bytes when untyped).
    pub numel: u64,
}

/// A tensor as `_rebuild_tensor_v2/v3` describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// Its storage.
    pub storage: StorageRef,
    /// Its element type.
    pub dtype: Dtype,
    /// Offset into the storage, in elements of `dtype`.
    pub offset: u64,
    /// Shape.
    pub size: Vec<u64>,
    /// Strides, in elements.
    pub stride: Vec<u64>,
}

/// One value of the tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `None`.
    None,
    /// A boolean.
    Bool(bool),
    /// An integer that fits 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Id>),
    /// A list.
    List(Vec<Id>),
    /// A dict or OrderedDict, in insertion order.
    Dict(Vec<(Id, Id)>),
    /// An allowed global, not yet called.
    Global(Global),
    /// A storage (persistent id).
    Storage(StorageRef),
    /// A tensor (or parameter).
    Tensor(TensorRef),
    /// Anything else that was built from allowed parts (a `torch.device`).
    Object(&'static str),
}

/// The values a pickle built; `root` is what STOP returned.
#[derive(Debug)]
pub struct Tree {
    /// Every value, by [`Id`].
    pub nodes: Vec<Node>,
    /// The pickle's result.
    pub root: Id,
}

impl Tree {
    /// The node `id`, or `None` for an id out of range.
    pub fn get(&self, id: Id) -> Option<&Node> {
        self.nodes.get(id)
    }
}

/// Why a pickle was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PickleError {
    /// A global outside the allowlist (`module.name`).
    Global(String),
    /// Anything else, in words, with the byte offset.
    Malformed(String),
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PickleError::Global(g) => write!(
                f,
                "refused global {g}: only what torch.save writes for tensors is accepted \
                 (nothing was executed)"
            ),
            PickleError::Malformed(m) => f.write_str(m),
        }
    }
}

type R<T> = std::result::Result<T, PickleError>;

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
}

impl<'a> Machine<'a> {
    fn err<T>(&self, what: impl std::fmt::Display) -> R<T> {
        Err(PickleError::Malformed(format!(
            "pickle byte {}: {what}",
            self.pos
        )))
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let data = self.data;
        match self
            .pos
            .checked_add(n)
            .and_then(|end| data.get(self.pos..end))
        {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => self.err("the pickle ends early"),
        }
    }

    fn byte(&mut self) -> R<u8> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    fn le<const N: usize>(&mut self) -> R<[u8; N]> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn len_of(&mut self, n: u64) -> R<usize> {
        match usize::try_from(n) {
            Ok(n) if n <= self.data.len() => Ok(n),
            _ => self.err(format!("declared length {n} is longer than the pickle")),
        }
    }

    fn push(&mut self, n: Node) -> R<()> {
        if self.nodes.len() >= MAX_NODES || self.stack.len() >= MAX_STACK {
            return self.err("too many values");
        }
        self.nodes.push(n);
        self.stack.push(self.nodes.len() - 1);
        Ok(())
    }

    fn pop(&mut self) -> R<Id> {
        match self.stack.pop() {
            Some(id) => Ok(id),
            None => self.err("stack underflow"),
        }
    }

    fn top(&self) -> R<Id> {
        match self.stack.last() {
            Some(&id) => Ok(id),
            None => self.err("stack underflow"),
        }
    }

    fn pop_mark(&mut self) -> R<Vec<Id>> {
        let Some(m) = self.marks.pop() else {
            return self.err("no MARK to pop to");
        };
        if m > self.stack.len() {
            return self.err("MARK above the stack");
        }
        Ok(self.stack.split_off(m))
    }

    fn node(&self, id: Id) -> R<&Node> {
        match self.nodes.get(id) {
            Some(n) => Ok(n),
            None => self.err("dangling value"),
        }
    }

    fn node_mut(&mut self, id: Id) -> R<&mut Node> {
        let pos = self.pos;
        self.nodes
            .get_mut(id)
            .ok_or_else(|| PickleError::Malformed(format!("pickle byte {pos}: dangling value")))
    }

    fn string(&mut self, n: u64) -> R<()> {
        let n = self.len_of(n)?;
        let s = self.take(n)?;
        match std::str::from_utf8(s) {
            Ok(s) => self.push(Node::Str(s.to_string())),
            Err(_) => self.err("a string is not UTF-8"),
        }
    }

    fn bytes(&mut self, n: u64) -> R<()> {
        let n = self.len_of(n)?;
        let s = self.take(n)?.to_vec();
        self.push(Node::Bytes(s))
    }

    fn line(&mut self) -> R<String> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.err("GLOBAL without a newline");
        };
        let s = self.take(n)?;
        self.take(1)?;
        match std::str::from_utf8(s) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => self.err("a global's name is not UTF-8"),
        }
    }

    fn global(&mut self, module: &str, name: &str) -> R<()> {
        match allowed(module, name) {
            Some(g) => self.push(Node::Global(g)),
            None => Err(PickleError::Global(format!(
                "{}.{}",
                crate::error::escape(module),
                crate::error::escape(name)
            ))),
        }
    }

    fn memo_put(&mut self, key: u32) -> R<()> {
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
            return self.err("memo too large");
        }
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> R<()> {
        let Some(&id) = self.memo.get(&key) else {
            return self.err(format!("memo key {key} was never stored"));
        };
        if self.stack.len() >= MAX_STACK {
            return self.err("stack too deep");
        }
        self.stack.push(id);
        Ok(())
    }

    fn tuple(&mut self, n: usize) -> R<()> {
        if self.stack.len() < n {
            return self.err("stack underflow");
        }
        let items = self.stack.split_off(self.stack.len() - n);
        self.push(Node::Tuple(items))
    }

    fn set_items(&mut self, items: Vec<Id>) -> R<()> {
        if !items.len().is_multiple_of(2) {
            return self.err("SETITEMS with an odd number of values");
        }
        let dict = self.top()?;
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        match self.node_mut(dict)? {
            Node::Dict(d) => {
                d.extend(pairs);
                Ok(())
            }
            _ => self.err("SETITEM(S) on a value that is not a dict"),
        }
    }

    fn append(&mut self, items: Vec<Id>) -> R<()> {
        let list = self.top()?;
        match self.node_mut(list)? {
            Node::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => self.err("APPEND(S) on a value that is not a list"),
        }
    }

    fn long1(&mut self) -> R<()> {
        let n = usize::from(self.byte()?);
        let b = self.take(n)?;
        if n > 8 {
            return self.err("an integer wider than 64 bits");
        }
        let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
            0xFF
        } else {
            0
        };
        let mut a = [fill; 8];
        for (d, s) in a.iter_mut().zip(b) {
            *d = *s;
        }
        self.push(Node::Int(i64::from_le_bytes(a)))
    }

    fn persid(&mut self) -> R<()> {
        let pid = self.pop()?;
        let storage = storage_from_pid(self, pid);
        match storage {
            Ok(s) => self.push(Node::Storage(s)),
            Err(e) => self.err(e),
        }
    }

    fn reduce(&mut self) -> R<()> {
        let args = self.pop()?;
        let f = self.pop()?;
        let Node::Global(g) = *self.node(f)? else {
            return self.err("REDUCE of a value that is not an allowed global");
        };
        let Node::Tuple(a) = self.node(args)? else {
            return self.err("REDUCE arguments are not a tuple");
        };
        let a = a.clone();
        let node = match g {
            Global::OrderedDict if a.is_empty() => Node::Dict(Vec::new()),
            Global::RebuildV2 | Global::RebuildV3 => match tensor_from_args(self, g, &a) {
                Ok(t) => Node::Tensor(t),
                Err(e) => return self.err(e),
            },
            Global::RebuildParameter => match a.first().map(|&t| self.node(t)) {
                Some(Ok(n @ Node::Tensor(_))) => n.clone(),
                _ => return self.err("_rebuild_parameter of a value that is not a tensor"),
            },
            Global::RebuildParameterWithState => {
                if let Err(e) = self.plain_state(a.get(3).copied()) {
                    return self.err(e);
                }
                match a.first().map(|&t| self.node(t)) {
                    Some(Ok(n @ Node::Tensor(_))) => n.clone(),
                    _ => {
                        return self
                            .err("_rebuild_parameter_with_state of a value that is not a tensor")
                    }
                }
            }
            Global::Device => Node::Object("torch.device"),
            _ => return self.err(format!("{g:?} called with these arguments")),
        };
        self.push(node)
    }

    /// Checks the state of a parameter (`_rebuild_parameter_with_state`): its Python
    /// attributes, as `__getstate__` gives them (a dict, or a tuple of the dict and a
    /// dict of slots). They are ignored, so none may be a tensor or a storage.
    fn plain_state(&self, state: Option<Id>) -> Result<(), String> {
        let dicts = match state.map(|s| self.node(s)) {
            Some(Ok(Node::Dict(_))) => vec![state],
            Some(Ok(Node::Tuple(t))) if t.len() == 2 => t.iter().map(|&d| Some(d)).collect(),
            Some(Ok(Node::None)) => Vec::new(),
            _ => return Err("a parameter's state is not a dict of attributes".into()),
        };
        for d in dicts {
            let items = match d.map(|d| self.node(d)) {
                Some(Ok(Node::Dict(items))) => items,
                Some(Ok(Node::None)) => continue,
                _ => return Err("a parameter's state is not a dict of attributes".into()),
            };
            for &(_, v) in items {
                if matches!(self.node(v), Ok(Node::Tensor(_) | Node::Storage(_))) {
                    return Err(
                        "a parameter's attributes hold a tensor, which would be lost".into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Pushes the value of literal opcode `op` (a string, bytes, a number, a bool or
    /// None); `Ok(false)` when `op` is not a literal.
    fn literal(&mut self, op: u8) -> R<bool> {
        match op {
            b'X' => {
                let n = u32::from_le_bytes(self.le()?);
                self.string(u64::from(n))?
            }
            0x8d => {
                let n = u64::from_le_bytes(self.le()?);
                self.string(n)?
            }
            0x8c => {
                let n = self.byte()?;
                self.string(u64::from(n))?
            }
            b'C' => {
                let n = self.byte()?;
                self.bytes(u64::from(n))?
            }
            b'B' => {
                let n = u32::from_le_bytes(self.le()?);
                self.bytes(u64::from(n))?
            }
            0x8e => {
                let n = u64::from_le_bytes(self.le()?);
                self.bytes(n)?
            }
            b'J' => {
                let v = i32::from_le_bytes(self.le()?);
                self.push(Node::Int(i64::from(v)))?
            }
            b'K' => {
                let v = self.byte()?;
                self.push(Node::Int(i64::from(v)))?
            }
            b'M' => {
                let v = u16::from_le_bytes(self.le()?);
                self.push(Node::Int(i64::from(v)))?
            }
            0x8a => self.long1()?,
            b'G' => {
                let v = f64::from_be_bytes(self.le()?);
                self.push(Node::Float(v))?
            }
            0x88 => self.push(Node::Bool(true))?,
            0x89 => self.push(Node::Bool(false))?,
            b'N' => self.push(Node::None)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Runs one opcode; `Ok(true)` at STOP.
    fn step(&mut self) -> R<bool> {
        let op = self.byte()?;
        if self.literal(op)? {
            return Ok(false);
        }
        match op {
            0x80 => {
                let v = self.byte()?;
                if v > 5 {
                    return self.err(format!("pickle protocol {v} (at most 5 is known)"));
                }
            }
            0x95 => {
                self.take(8)?;
            }
            b'}' => self.push(Node::Dict(Vec::new()))?,
            b']' => self.push(Node::List(Vec::new()))?,
            b')' => self.push(Node::Tuple(Vec::new()))?,
            b'(' => {
                if self.marks.len() >= MAX_MARKS {
                    return self.err("MARKs nested too deep");
                }
                self.marks.push(self.stack.len());
            }
            b't' => {
                let items = self.pop_mark()?;
                self.push(Node::Tuple(items))?
            }
            0x85 => self.tuple(1)?,
            0x86 => self.tuple(2)?,
            0x87 => self.tuple(3)?,
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![k, v])?
            }
            b'u' => {
                let items = self.pop_mark()?;
                self.set_items(items)?
            }
            b'a' => {
                let v = self.pop()?;
                self.append(vec![v])?
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.append(items)?
            }
            b'q' => {
                let k = self.byte()?;
                self.memo_put(u32::from(k))?
            }
            b'r' => {
                let k = u32::from_le_bytes(self.le()?);
                self.memo_put(k)?
            }
            0x94 => {
                let k = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                self.memo_put(k)?
            }
            b'h' => {
                let k = self.byte()?;
                self.memo_get(u32::from(k))?
            }
            b'j' => {
                let k = u32::from_le_bytes(self.le()?);
                self.memo_get(k)?
            }
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.global(&module, &name)?
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Node::Str(m), Node::Str(n)) = (self.node(module)?, self.node(name)?) else {
                    return self.err("STACK_GLOBAL of values that are not strings");
                };
                let (m, n) = (m.clone(), n.clone());
                self.global(&m, &n)?
            }
            b'R' | 0x81 => self.reduce()?,
            b'b' => {
                // The state (an OrderedDict's `_metadata`) is dropped: tensors need none.
                self.pop()?;
                self.top()?;
            }
            b'Q' => self.persid()?,
            b'0' => {
                self.pop()?;
            }
            b'.' => return Ok(true),
            _ => return self.err(format!("opcode 0x{op:02x} is not accepted")),
        }
        Ok(false)
    }
}

/// Lets the argument rules read values while the machine runs.
trait Values {
    /// The value `id`.
    fn value(&self, id: Id) -> Option<&Node>;
}

impl Values for Machine<'_> {
    fn value(&self, id: Id) -> Option<&Node> {
        self.nodes.get(id)
    }
}

fn int(v: &impl Values, id: Id, what: &str) -> Result<u64, String> {
    match v.value(id) {
        Some(Node::Int(i)) => u64::try_from(*i).map_err(|_| format!("{what} is negative ({i})")),
        _ => Err(format!("{what} is not an integer")),
    }
}

fn ints(v: &impl Values, id: Id, what: &str) -> Result<Vec<u64>, String> {
    let Some(Node::Tuple(items)) = v.value(id) else {
        return Err(format!("{what} is not a tuple"));
    };
    if items.len() > MAX_RANK {
        return Err(format!(
            "{what} has {} dimensions (limit {MAX_RANK})",
            items.len()
        ));
    }
    items.iter().map(|&i| int(v, i, what)).collect()
}

/// Reads a persistent id `('storage', type, key, location, numel)`.
fn storage_from_pid(v: &impl Values, pid: Id) -> Result<StorageRef, String> {
    let Some(Node::Tuple(t)) = v.value(pid) else {
        return Err("a persistent id that is not a tuple".into());
    };
    let [tag, ty, key, _location, numel] = t.as_slice() else {
        return Err(format!("a persistent id of {} items (5 expected)", t.len()));
    };
    if !matches!(v.value(*tag), Some(Node::Str(s)) if s == "storage") {
        return Err("a persistent id that is not a storage".into());
    }
    let Some(Node::Global(Global::Storage(dtype))) = v.value(*ty) else {
        return Err("a storage whose type is not a torch storage class".into());
    };
    let Some(Node::Str(key)) = v.value(*key) else {
        return Err("a storage whose key is not a string".into());
    };
    if key.is_empty() || key.contains('/') || key == "." || key == ".." {
        return Err(format!("a storage key {:?} that is not a plain name", key));
    }
    Ok(StorageRef {
        dtype: *dtype,
        key: key.clone(),
        numel: int(v, *numel, "a storage's element count")?,
    })
}

/// Reads the arguments of `_rebuild_tensor_v2` (storage, offset, size, stride, ...)
/// or `_rebuild_tensor_v3` (the same, then the dtype).
fn tensor_from_args(v: &impl Values, g: Global, args: &[Id]) -> Result<TensorRef, String> {
    let (Some(&s), Some(&off), Some(&size), Some(&stride)) =
        (args.first(), args.get(1), args.get(2), args.get(3))
    else {
        return Err("a tensor rebuilt from too few arguments".into());
    };
    let Some(Node::Storage(storage)) = v.value(s) else {
        return Err("a tensor whose storage is not a persistent storage".into());
    };
    let dtype = match g {
        Global::RebuildV3 => match args.get(6).and_then(|&d| v.value(d)) {
            Some(Node::Global(Global::TorchDtype(d))) => *d,
            _ => return Err("_rebuild_tensor_v3 without a known torch dtype".into()),
        },
        _ => storage
            .dtype
            .ok_or("_rebuild_tensor_v2 of an untyped storage")?,
    };
    let size = ints(v, size, "a tensor's size")?;
    let stride = ints(v, stride, "a tensor's stride")?;
    if size.len() != stride.len() {
        return Err("a tensor's size and stride differ in length".into());
    }
    Ok(TensorRef {
        storage: storage.clone(),
        dtype,
        offset: int(v, off, "a tensor's storage offset")?,
        size,
        stride,
    })
}

/// Interprets `data` as a pickle and returns the tree it builds. Never executes or
/// imports anything; refuses any global outside the allowlist
/// (`collections.OrderedDict`, the `torch._utils` rebuild functions, `torch` storage
/// classes, dtypes and `torch.device`).
pub fn unpickle(data: &[u8]) -> std::result::Result<Tree, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    while !m.step()? {}
    let root = m.pop()?;
    Ok(Tree {
        nodes: m.nodes,
        root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_os_system() {
        let p = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00echo\x85R.";
        assert_eq!(
            unpickle(p).unwrap_err(),
            PickleError::Global("os.system".into())
        );
    }

    #[test]
    fn builds_a_dict() {
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x05X\x01\x00\x00\x00bJ\xff\xff\xff\xffu.";
        let t = unpickle(p).unwrap();
        let Node::Dict(d) = &t.nodes[t.root] else {
            panic!()
        };
        assert_eq!(d.len(), 2);
        assert_eq!(t.nodes[d[1].1], Node::Int(-1));
    }

    #[test]
    fn never_panics_on_prefixes() {
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x05\x8a\x02\xff\x7fh\x00u0h\x05.";
        for n in 0..p.len() {
            let _ = unpickle(&p[..n]);
        }
    }
}
