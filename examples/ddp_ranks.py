"""A small transformer trained with DDP (gloo on CPU, NCCL on GPUs), for attnprof under torchrun.

    torchrun --nproc-per-node 2 -m attnprof trace examples/ddp_ranks.py --straggler 1 --sleep-ms 40
    attnprof trace --nproc-per-node 2 examples/ddp_ranks.py --model gpt2 --fsdp

--straggler R --sleep-ms T: rank R sleeps T ms between q's layout copy and every attention call, inside the call's
window (a planted straggler of known size). --overlap: an all-reduce runs asynchronously
across the first layer's attention in every step (a planted collective overlap). --tb DIR: profile with
torch.profiler's tensorboard_trace_handler instead (a run not made by attnprof). --model gpt2: Hugging Face GPT-2
from a config (sdpa attention) instead of the hand-written blocks. --fsdp: FullyShardedDataParallel, not DDP.
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--model", choices=["blocks", "gpt2"], default="blocks")
parser.add_argument("--fsdp", action="store_true")
parser.add_argument("--straggler", type=int, default=-1)
parser.add_argument("--sleep-ms", type=float, default=0.0)
parser.add_argument("--overlap", action="store_true")
parser.add_argument("--tb", default=None)
args = parser.parse_args()

cuda = torch.cuda.is_available() and "LOCAL_RANK" in os.environ
if cuda:
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl" if cuda else "gloo")
rank = dist.get_rank()
device = torch.device("cuda") if cuda else torch.device("cpu")
torch.manual_seed(0)
pending = []  # the planted all-reduce, waited for after the first layer


class Block(nn.Module):
    def __init__(self, layer: int, dim: int = 64, heads: int = 4):
        super().__init__()
        self.layer, self.heads = layer, heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        B, L, D = x.shape
        if self.layer == 0 and args.overlap:  # before the call's first op: c10d's launch op would end its window
            # 64 MB: tens of ms over gloo's loopback even on a fast machine, so it is still running during the call
            pending.append(dist.all_reduce(torch.ones(1 << 24, device=x.device), async_op=True))
            time.sleep(0.005)  # gloo's thread can take a while to pick the work up: let it be running by the call
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).unbind(2)
        q = q.transpose(1, 2).contiguous()
        if rank == args.straggler:
            time.sleep(args.sleep_ms / 1e3)
        y = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, L, D))
        if pending:  # after the output's layout copy, so the wait is outside the call's window
            pending.pop().wait()
        return x + self.mlp(x)


if args.model == "gpt2":
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=256, attn_implementation="sdpa")
    model = GPT2LMHeadModel(config).to(device)
    batch = torch.randint(0, 256, (4, 32), device=device)
    loss_of = lambda m: m(batch, labels=batch).loss  # noqa: E731
else:
    model = nn.Sequential(Block(0), Block(1)).to(device)
    batch = torch.randn(4, 32, 64, device=device)
    loss_of = lambda m: m(batch).square().mean()  # noqa: E731

if args.fsdp:  # FSDP2: shards each layer, then the rest (FSDP1 needs an accelerator; this runs on CPU with gloo)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in (model.transformer.h if args.model == "gpt2" else model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
else:
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(model)
opt = torch.optim.SGD(model.parameters(), lr=1e-3)


def step():
    opt.zero_grad()
    loss_of(model).backward()
    opt.step()


if args.tb:
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities, schedule=torch.profiler.schedule(wait=0, warmup=1, active=2),
                                on_trace_ready=torch.profiler.tensorboard_trace_handler(args.tb),
                                record_shapes=True, with_stack=True) as prof:
        for _ in range(3):
            step()
            prof.step()
else:
    for _ in range(args.steps):
        step()
if rank == 0:
    print(f"trained {args.steps} steps on {dist.get_world_size()} ranks")
dist.destroy_process_group()
