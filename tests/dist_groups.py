"""Run under torchrun by test_distributed.py: group advantages when a group's samples sit on different
processes. Each rank holds a fixed share of the samples; rank 0 writes the advantages it gathered."""

import json
import sys

import torch

from prorl.algos import batch_advantages
from prorl.dist import gather_varlen, make_accelerator, rank_offset

REWARDS = [1.0, 0.0, 0.5, 2.0, 1.0, 1.0, 3.0, 0.0, 1.0, 1.0, 0.5, 0.5]
GROUPS = [7, 7, 7, 2, 2, 2, 9, 9, 9, 9, 4, 4]  # groups 2, 9 and 4 straddle the split below
SPLITS = {1: [slice(0, 12)], 2: [slice(0, 5), slice(5, 12)]}

acc = make_accelerator()
mine = SPLITS[acc.num_processes][acc.process_index]
rewards, groups = torch.tensor(REWARDS[mine]), torch.tensor(GROUPS[mine])
all_rewards = gather_varlen(acc, rewards)  # gathered as the trainer gathers them, then its own function
offset = rank_offset(acc, rewards.numel(), rewards.device)
adv, keep, _ = batch_advantages(all_rewards, all_rewards, gather_varlen(acc, groups),
                                torch.arange(offset, offset + rewards.numel()), sys.argv[2])
adv, keep = gather_varlen(acc, adv), gather_varlen(acc, keep.long())
if acc.is_main_process:
    with open(sys.argv[1], "w") as fh:
        json.dump({"adv": adv.tolist(), "keep": keep.tolist(), "world": acc.num_processes}, fh)
acc.end_training()
