"""A weights iterator for an inference server: each tensor-parallel rank streams only
its shard of every weight into a PyTorch model's `load_weights` loop (the form vLLM's
model classes take), with fused q/k/v and gate/up parameters.

    python examples/python/serve_weights.py [CHECKPOINT] [--world 2] [--device cuda:0]

Without CHECKPOINT it writes a small random Llama-layout checkpoint first. Every rank
builds its model, loads its shard, and checks each parameter against the full tensors
sliced by hand.
"""

import argparse
import os
import tempfile

import torch

import tensorstream
from tensorstream.torch import load_file

# Column-parallel weights: a rank keeps rows rank/world; row-parallel: columns.
COLUMN_PARALLEL = ["*.q_proj.weight", "*.k_proj.weight", "*.v_proj.weight",
                   "*.gate_proj.weight", "*.up_proj.weight", "*.embed_tokens.weight",
                   "lm_head.weight"]
ROW_PARALLEL = ["*.o_proj.weight", "*.down_proj.weight"]
# Checkpoint name -> (fused parameter, shard index), as vLLM's stacked_params_mapping.
STACKED = [(".q_proj", ".qkv_proj", 0), (".k_proj", ".qkv_proj", 1), (".v_proj", ".qkv_proj", 2),
           (".gate_proj", ".gate_up_proj", 0), (".up_proj", ".gate_up_proj", 1)]


def weights_iterator(path, rank, world, device):
    """(name, tensor) of this rank's shard of every weight, in file order, each on
    `device` as soon as it lands."""
    part = f"{rank}/{world}"
    return tensorstream.iter_tensors(
        path, device=device,
        rows={g: part for g in COLUMN_PARALLEL},
        cols={g: part for g in ROW_PARALLEL})


class Layer(torch.nn.Module):
    def __init__(self, hidden, inter, world):
        super().__init__()
        self.input_layernorm = torch.nn.RMSNorm(hidden)
        self.qkv_proj = torch.nn.Linear(hidden, 3 * hidden // world, bias=False)
        self.o_proj = torch.nn.Linear(hidden // world, hidden, bias=False)
        self.post_attention_layernorm = torch.nn.RMSNorm(hidden)
        self.gate_up_proj = torch.nn.Linear(hidden, 2 * inter // world, bias=False)
        self.down_proj = torch.nn.Linear(inter // world, hidden, bias=False)


class TinyLlama(torch.nn.Module):
    def __init__(self, vocab, hidden, inter, layers, world):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(vocab // world, hidden)
        self.layers = torch.nn.ModuleList(Layer(hidden, inter, world) for _ in range(layers))
        self.norm = torch.nn.RMSNorm(hidden)
        self.lm_head = torch.nn.Linear(hidden, vocab // world, bias=False)

    def param_name(self, name):
        """The module's name for a checkpoint name ("model." prefix and sublayers dropped)."""
        return name.removeprefix("model.").replace(".self_attn", "").replace(".mlp", "")

    @torch.no_grad()
    def load_weights(self, weights):
        """Copies each (name, shard) into its parameter, fused ones at their offset."""
        params = dict(self.named_parameters())
        loaded = set()
        for name, tensor in weights:
            name = self.param_name(name)
            for part, fused, index in STACKED:
                if part in name:
                    name = name.replace(part, fused)
                    rows = tensor.shape[0]
                    params[name][index * rows:(index + 1) * rows].copy_(tensor)
                    break
            else:
                params[name].copy_(tensor)
            loaded.add(name)
        return loaded


def write_checkpoint(directory, vocab, hidden, inter, layers):
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(0)
    t = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g),
         "model.norm.weight": torch.randn(hidden, generator=g),
         "lm_head.weight": torch.randn(vocab, hidden, generator=g)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = torch.randn(hidden, generator=g)
        t[p + "post_attention_layernorm.weight"] = torch.randn(hidden, generator=g)
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"]:
            t[p + f"self_attn.{n}.weight"] = torch.randn(hidden, hidden, generator=g)
        t[p + "mlp.gate_proj.weight"] = torch.randn(inter, hidden, generator=g)
        t[p + "mlp.up_proj.weight"] = torch.randn(inter, hidden, generator=g)
        t[p + "mlp.down_proj.weight"] = torch.randn(hidden, inter, generator=g)
    path = os.path.join(directory, "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in t.items()}, path)
    return path


def check(model, full, rank, world):
    """Each parameter equals the rank's slice of the full tensors."""
    def part(t, dim):
        n = t.shape[dim] // world
        return t.narrow(dim, rank * n, n)
    for name, t in full.items():
        pname = model.param_name(name)
        for piece, fused, index in STACKED:
            if piece in pname:
                p = dict(model.named_parameters())[pname.replace(piece, fused)]
                rows = t.shape[0] // world
                got = p[index * rows:(index + 1) * rows]
                assert torch.equal(got.cpu(), part(t, 0).to(p.dtype)), name
                break
        else:
            p = dict(model.named_parameters())[pname]
            want = part(t, 1) if any(s in name for s in ("o_proj", "down_proj")) else \
                part(t, 0) if name.endswith(("embed_tokens.weight", "lm_head.weight")) else t
            assert torch.equal(p.cpu(), want.to(p.dtype)), name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    vocab, hidden, inter, layers = 512, 128, 256, 2
    tmp = None
    if a.checkpoint is None:
        tmp = tempfile.TemporaryDirectory()
        a.checkpoint = write_checkpoint(tmp.name, vocab, hidden, inter, layers)
    full = load_file(a.checkpoint)
    for rank in range(a.world):  # one process per rank in a server; here in turn
        model = TinyLlama(vocab, hidden, inter, layers, a.world).to(torch.bfloat16).to(a.device)
        loaded = model.load_weights(weights_iterator(a.checkpoint, rank, a.world, a.device))
        missing = set(dict(model.named_parameters())) - loaded
        assert not missing, missing
        check(model, full, rank, a.world)
        print(f"rank {rank}/{a.world}: {len(loaded)} parameters loaded on {a.device} and checked")


if __name__ == "__main__":
    main()
