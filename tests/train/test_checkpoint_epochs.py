"""``--checkpoint-epochs N``: last.pt at every N-th epoch end and the last; training and a resume are unchanged."""

import json

import pytest
import torch

from rlmask.cli import main
from rlmask.train import loop

TINY = ["train", "--data", "synthetic:n=16,size=16", "--model", "resnet10t", "--batch-size", "16", "--no-progress"]


class _Crash(Exception):
    pass


def _files(out):  # metrics.json and log.jsonl less each epoch's wall time
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return json.loads((out / "metrics.json").read_text()), [{**r, "train_seconds": None} for r in records]


def test_a_run_checkpointing_every_second_epoch_resumes_to_the_same_result(tmp_path, monkeypatch):
    every = tmp_path / "every"
    assert main([*TINY, "--epochs", "5", "--out", str(every)]) == 0

    cut = tmp_path / "cut"
    real = loop.train_epoch

    def crash_before_the_fourth_epoch(run, progress):
        if progress.epoch == 3:
            raise _Crash
        return real(run, progress)

    monkeypatch.setattr(loop, "train_epoch", crash_before_the_fourth_epoch)
    with pytest.raises(_Crash):
        main([*TINY, "--epochs", "5", "--checkpoint-epochs", "2", "--out", str(cut)])
    assert torch.load(cut / "last.pt", weights_only=False)["epoch"] == 2  # epoch 3's end wrote none
    assert len((cut / "log.jsonl").read_text().splitlines()) == 3
    monkeypatch.setattr(loop, "train_epoch", real)
    args = [*TINY, "--epochs", "5", "--checkpoint-epochs", "2", "--out", str(cut), "--resume", str(cut / "last.pt")]
    assert main(args) == 0
    assert torch.load(cut / "last.pt", weights_only=False)["epoch"] == 5  # the last epoch always writes it
    assert _files(cut) == _files(every)


def test_checkpoint_epochs_must_be_positive(tmp_path, capsys):
    assert main([*TINY, "--checkpoint-epochs", "0", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--checkpoint-epochs" in err
