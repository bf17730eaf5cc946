"""SPEC §4: distributed training runs on PyTorch's own engine. rnnfused.LSTM under
DistributedDataParallel, 2 gloo processes on the CPU, each with half of the batch:

- at zero rates the gradients of every step are those one process computes on the whole batch;
- with every regularizer on, each process draws the masks its own RNG gives it, so the averaged gradient
  is the mean of what one process computes on each shard with that shard's seed; processes seeded alike
  draw the same masks for their shards, processes seeded differently do not.

The processes rendezvous through a file and talk over the loopback interface only.
"""

import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import rnnfused
from conftest import ALL_RATES, assert_close

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORLD = 2
T, B, I, H = 5, 6, 3, 4
STEPS = 3
SEEDS = {"different": (101, 202), "alike": (101, 101)}   # torch.manual_seed of rank 0, rank 1


def make_model(rates):
    torch.manual_seed(0)
    return rnnfused.LSTM(I, H, num_layers=2, bidirectional=True, dtype=torch.float64, **rates)


def make_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64)
    w = torch.randn(T, B, 2 * H, generator=g, dtype=torch.float64)   # the loss weighs every output
    return x, w


def shard(t, rank):
    return t.tensor_split(WORLD, dim=1)[rank]


def loss_of(model, x, w):
    out, _ = model(x)
    return (out * w).sum()


def grads_of(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def worker(rank, store, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    x, w = make_batch()
    results = {}

    model = make_model({})                          # zero rates: a few SGD steps
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    results["zero"] = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss_of(ddp, shard(x, rank), shard(w, rank)).backward()
        results["zero"].append(grads_of(model))
        optimizer.step()

    for name, seeds in SEEDS.items():               # every regularizer on
        model = make_model(ALL_RATES)
        ddp = DistributedDataParallel(model)
        torch.manual_seed(seeds[rank])
        loss_of(ddp, shard(x, rank), shard(w, rank)).backward()
        with torch.no_grad():                       # the same input on both ranks: only the masks differ
            same_input = ddp(shard(x, 0))[0]
        results[name] = dict(grads=grads_of(model), same_input=same_input)

    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """What each of the two processes computed."""
    out = tmp_path_factory.mktemp("ddp")
    saved = os.environ.get("GLOO_SOCKET_IFNAME")
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"         # gloo's connections stay on the loopback interface
    try:
        context = mp.spawn(worker, args=(str(out / "store"), str(out)), nprocs=WORLD, join=False)
        deadline = time.monotonic() + 240
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                for p in context.processes:
                    p.kill()
                pytest.fail("the DDP processes did not finish within 240 s")
    finally:
        if saved is None:
            os.environ.pop("GLOO_SOCKET_IFNAME")
        else:
            os.environ["GLOO_SOCKET_IFNAME"] = saved
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def test_ddp_gradients_at_zero_rates_equal_one_process_on_the_whole_batch(ranks):
    x, w = make_batch()
    model = make_model({})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    names = [n for n, _ in model.named_parameters()]
    for step in range(STEPS):
        optimizer.zero_grad()
        (loss_of(model, x, w) / WORLD).backward()   # DDP averages the processes' gradients
        for r in range(WORLD):
            for name, got, want in zip(names, ranks[r]["zero"][step], grads_of(model)):
                assert_close(got, want, what=f"step {step}, rank {r}, grad {name}")
        optimizer.step()


@pytest.mark.parametrize("seeding", list(SEEDS))
def test_ddp_gradients_with_rates_average_each_shard_with_its_own_seed(ranks, seeding):
    x, w = make_batch()
    per_shard = []
    for r, seed in enumerate(SEEDS[seeding]):
        model = make_model(ALL_RATES)
        torch.manual_seed(seed)
        loss_of(model, shard(x, r), shard(w, r)).backward()
        per_shard.append(grads_of(model))
    names = [n for n, _ in make_model({}).named_parameters()]
    for r in range(WORLD):
        for name, got, *each in zip(names, ranks[r][seeding]["grads"], *per_shard):
            assert_close(got, sum(each) / WORLD, what=f"rank {r}, grad {name}")


def test_ranks_seeded_alike_draw_the_same_masks_for_their_shards(ranks):
    assert torch.equal(ranks[0]["alike"]["same_input"], ranks[1]["alike"]["same_input"])


def test_ranks_seeded_differently_draw_different_masks(ranks):
    assert not torch.allclose(ranks[0]["different"]["same_input"], ranks[1]["different"]["same_input"])
