"""--channels-last's default: chosen per device and precision, and recorded in config.json with its reason."""

import json

import torch

from rlmask.cli import main
from rlmask.runtime import CHANNELS_LAST, resolve_channels_last

TINY = ["--data", "synthetic:n=24,size=16", "--model", "resnet10t", "--batch-size", "8", "--no-progress", "--seed", "1"]


def test_channels_last_is_chosen_per_device_and_precision_and_recorded(tmp_path):
    cpu = torch.device("cpu")
    for amp in (False, True):
        chosen, reason = resolve_channels_last(None, cpu, amp)
        assert chosen == CHANNELS_LAST["cpu", amp] and ("bf16" if amp else "float32") in reason
        assert resolve_channels_last(False, cpu, amp) == (False, "set by --channels-last/--no-channels-last")
    for flags, expected in (([], CHANNELS_LAST["cpu", False]), (["--no-channels-last"], False)):
        out = tmp_path / f"run{len(flags)}"
        assert main(["train", *TINY, "--epochs", "1", "--no-amp", *flags, "--out", str(out)]) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["channels_last"] is expected and config["channels_last_reason"]
