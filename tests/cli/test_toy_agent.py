"""A new agent defined in this file alone (no edit to the loop, compare or the CLI) trains, resumes exactly
after SIGKILL, takes its own flags and appears in ``rlmask compare``.

Run as a script (``python test_toy_agent.py ARGS``) it is the rlmask command line with the toy agent
registered, which is how the SIGKILL test starts it in a separate process.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import torch

from rlmask.agents import AgentOptimizer, EvalView, MaskAgent, register_agent
from rlmask.cli import main
from rlmask.config import option


@dataclass
class ToyOptions:
    """Options of the toy agent."""

    floor: float = option(0.25, "lowest keep-weight of the learned global mask")


@register_agent("toy-dim", options=ToyOptions)
class ToyDimAgent(MaskAgent):
    """Toy: one learned global keep-weight, two updates per batch (classifier, then agent)."""

    def __init__(self, cfg: ToyOptions, image_size: int, in_chans: int, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.logit = torch.nn.Parameter(torch.zeros(()))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def keep(self) -> torch.Tensor:
        return self.cfg.floor + (1 - self.cfg.floor) * torch.sigmoid(self.logit)

    def train_step(self, ctx, x, y):
        with ctx.autocast():  # 1: the classifier on dimmed images (the keep-weight fixed)
            ce = ctx.loss(x * self.keep().detach(), y).mean()
        ctx.update(ce, agent=False)
        with ctx.autocast():  # 2: the agent, adversarially: dim where it hurts the updated classifier
            adv = -ctx.loss(x * self.keep(), y).mean()
        ctx.update(adv, model=False)
        self.steps += 1
        return {
            "losses/ce": ce.detach(),
            "policy/keep": self.keep().detach(),
            "policy/progress": torch.tensor(ctx.progress),
        }

    def optimizer_options(self):
        return AgentOptimizer(lr=0.5, momentum=0.0, weight_decay=0.0, optimizer="sgd", schedule="constant")

    def eval_views(self):
        return {"dim": EvalView(lambda x, generator: x * self.keep())}

    @torch.no_grad()
    def sample_masks(self, x, generator):
        return {"mask": self.keep().expand(x.shape[0], 1, *x.shape[-2:]).clone()}


TINY = [
    "--data",
    "synthetic:n=24,size=16",
    "--model",
    "resnet10t",
    "--batch-size",
    "16",
    "--eval-batch-size",
    "64",
    "--no-progress",
    "--seed",
    "3",
]


def test_toy_agent_trains_with_its_own_flag_and_logs(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["pretrain", "--method", "toy-dim", "--floor", "0.5", *TINY, "--epochs", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == "toy-dim" and config["agent"] == {"floor": 0.5}
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert "policy/keep" in log[0] and "val_dim/macro_f1" in log[0]
    assert 0 < log[0]["policy/progress"] < 1
    assert (out / "heated.pt").is_file() and (out / "policy.pt").is_file()
    # The agent's flag is its own: another method rejects it, naming the owner.
    code = main(["pretrain", "--method", "random-mask", "--floor", "0.5", *TINY, "--out", str(tmp_path / "x")])
    assert code == 2
    assert (
        capsys.readouterr().err.strip() == "error: pretrain: floor is an option of method toy-dim, not of random-mask"
    )


def test_toy_agent_resumes_exactly_after_sigkill(sigkill_resume):
    def cmd(out, *extra):
        return [
            sys.executable,
            __file__,
            "pretrain",
            "--method",
            "toy-dim",
            *TINY,
            "--epochs",
            "2",
            "--checkpoint-every",
            "2",
            "--out",
            str(out),
            *extra,
        ]

    whole, cut = sigkill_resume(cmd)
    a, b = torch.load(whole / "policy.pt")["agent"], torch.load(cut / "policy.pt")["agent"]
    assert torch.equal(a["logit"], b["logit"]) and int(a["steps"]) == int(b["steps"]) == 2 * 18  # 2 epochs, 18 batches


def test_toy_agent_appears_in_compare(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--methods",
            "plain",
            "toy-dim",
            *TINY,
            "--epochs",
            "1",
            "--finetune-epochs",
            "1",
            "--seeds",
            "1",
            "--method-option",
            "toy-dim:floor=0.75",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "comparison.json").read_text())
    assert "toy-dim" in result["methods"] and any(m.startswith("plain") for m in result["methods"])
    assert json.loads((out / "toy-dim" / "seed0" / "pretrain" / "config.json").read_text())["agent"] == {"floor": 0.75}
    assert (out / "masks.png").is_file()
    assert "| toy-dim |" in (out / "comparison.md").read_text()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
