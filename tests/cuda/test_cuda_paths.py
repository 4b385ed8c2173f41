"""The CUDA paths, for a machine with a GPU: ``pytest -m cuda tests/cuda`` (benchmarks/gpu.sh runs them).

Deselected everywhere else by the ``cuda`` marker (pyproject's addopts), never skipped silently: on a
GPU machine every test here runs and must pass.
"""

import json
import socket
import subprocess
import sys

import pytest
import torch

from rlmask.agents import AGENTS
from rlmask.agents.noise import sample_beta
from rlmask.train.loop import compile_for_training, make_agent_optimizer, make_optimizer
from rlmask.train.step import TrainStep
from rlmask.train.tasks import build_task

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")
S, C, B, K = 32, 3, 8, 4


@pytest.fixture(autouse=True)
def _needs_cuda():
    assert torch.cuda.is_available(), "the cuda tests need a CUDA device (run them with -m cuda on a GPU)"


@pytest.mark.parametrize("a,b", [(0.05, 0.05), (0.5, 2.0), (1.0, 1.0), (5.0, 0.3), (40.0, 60.0)])
def test_gpu_beta_sampler_matches_its_cpu_statistics(a, b):
    n = 400_000
    gpu = (
        sample_beta(
            torch.full((n,), a, device=CUDA),
            torch.full((n,), b, device=CUDA),
            torch.Generator(device=CUDA).manual_seed(0),
        )
        .cpu()
        .double()
    )
    cpu = sample_beta(torch.full((n,), a), torch.full((n,), b), torch.Generator().manual_seed(0)).double()
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    for x in (gpu, cpu):
        assert abs(x.mean() - mean) < 5 * (var / n) ** 0.5 + 1e-4
        assert abs(x.var() - var) / var < 0.05
    assert torch.isfinite(gpu).all()


def _step_setup(name: str, compile: bool = False):
    spec = AGENTS[name]
    task = build_task(spec.task)
    torch.manual_seed(0)
    model = task.build_model("resnet18", K, C, small_stem=True).to(CUDA, memory_format=torch.channels_last)
    agent = spec.build(S, C, seed=0).to(CUDA, memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), "sgd", 0.01, 0.9, 1e-4)
    agent_opt = make_agent_optimizer(agent)
    step_model = compile_for_training(model, agent) if compile else model
    return agent, TrainStep(step_model, task.loss, opt, agent, agent_opt, device=CUDA, amp=True, total_steps=10)


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, S, S, generator=g).to(CUDA, memory_format=torch.channels_last)
    return x, torch.randint(0, K, (B,), generator=g).to(CUDA)


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_every_agent_steps_on_cuda_in_bf16(name):
    agent, ctx = _step_setup(name)
    for step in range(3):
        logs = agent.train_step(ctx.begin(0, step), *_batch())
    assert all(torch.isfinite(v).all() for v in logs.values())


def test_compile_on_and_off_give_the_same_loss():
    losses = {}
    for compile in (False, True):
        agent, ctx = _step_setup("pgnm", compile=compile)
        losses[compile] = [float(agent.train_step(ctx.begin(0, s), *_batch())["losses/ce"]) for s in range(3)]
    assert losses[True] == pytest.approx(losses[False], rel=0.05, abs=0.02)


def test_sync_batchnorm_under_a_one_process_nccl_group():
    from torch import distributed as dist
    from torch import nn

    from rlmask import runtime

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = build_task("classify").build_model("resnet10t", K, C, small_stem=True).to(CUDA)
        synced = runtime.convert_sync_batchnorm(__import__("copy").deepcopy(plain), CUDA)
        assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
        ddp = nn.parallel.DistributedDataParallel(synced, device_ids=[0])
        x, _ = _batch()
        plain.train()
        assert torch.allclose(ddp(x.contiguous()), plain(x.contiguous()), atol=1e-3, rtol=1e-3)
    finally:
        dist.destroy_process_group()


def test_pretrain_resumes_on_cuda(tmp_path):
    def cmd(out, epochs, *extra):
        return [
            sys.executable,
            "-m",
            "rlmask",
            "pretrain",
            "--method",
            "pgnm",
            "--device",
            "cuda",
            "--data",
            "synthetic:n=64,size=32",
            "--model",
            "resnet10t",
            "--batch-size",
            "32",
            "--epochs",
            str(epochs),
            "--no-progress",
            "--out",
            str(out),
            *extra,
        ]

    subprocess.run(cmd(tmp_path / "whole", 2), check=True, capture_output=True)
    subprocess.run(cmd(tmp_path / "cut", 1), check=True, capture_output=True)
    subprocess.run(
        cmd(tmp_path / "cut", 2, "--resume", str(tmp_path / "cut" / "last.pt")), check=True, capture_output=True
    )
    whole = [json.loads(line) for line in (tmp_path / "whole" / "log.jsonl").read_text().splitlines()]
    cut = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in cut] == [0, 1] and cut[0]["step"] == whole[0]["step"]
    # cuDNN's backward is not bitwise deterministic: the resumed run follows the same course, closely
    assert cut[1]["losses/ce"] == pytest.approx(whole[1]["losses/ce"], rel=0.1)
