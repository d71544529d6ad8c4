"""Types of the native module (built from python/src); see its Rust docs."""

import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, final

__all__ = ["Checkpoint", "Loader", "SafetensorError", "has_cuda", "loads_as"]

#: (name, dtype in the file, dtype loaded, shape, bytes)
_Spec = Tuple[str, str, str, List[int], int]
_Progress = Callable[[int, int], object]

class SafetensorError(ValueError): ...

@final
class Checkpoint:
    def __new__(cls, path: "str | os.PathLike[str]") -> "Checkpoint": ...
    def tensors(self) -> List[Tuple[str, str, List[int]]]: ...
    def metadata(self) -> Optional[Dict[str, str]]: ...
    @property
    def path(self) -> str: ...
    @property
    def total_bytes(self) -> int: ...
    def __len__(self) -> int: ...

@final
class Loader:
    def __new__(
        cls,
        *,
        dtype: Optional[str] = None,
        only: Sequence[str] = ...,
        rows: Sequence[str] = ...,
        cols: Sequence[str] = ...,
        io: Optional[str] = None,
        device: Optional[int] = None,
    ) -> "Loader": ...
    def plan(self, ckpt: Checkpoint) -> List[_Spec]: ...
    def load_host(
        self,
        ckpt: Checkpoint,
        regions: Sequence[Tuple[str, Any, str]],
        progress: Optional[_Progress] = None,
    ) -> Dict[str, Any]: ...
    # Only in builds with the cuda feature (python/stubtest-allowlist.txt).
    def load_device(
        self,
        ckpt: Checkpoint,
        regions: Sequence[Tuple[str, Any, str]],
        progress: Optional[_Progress] = None,
    ) -> Dict[str, Any]: ...

def has_cuda() -> bool: ...
def loads_as(file_dtype: str, dtype: str) -> bool: ...
