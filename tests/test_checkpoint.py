import json

import pytest
import torch

from prorl.checkpoint import (
    checkpoint_dir, list_checkpoints, load_optimizer_state, optimizer_from_safetensors, optimizer_to_safetensors,
    resolve_resume, save_checkpoint,
)
from prorl.config import ConfigError


def _adam_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
    return model, opt


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    from safetensors.torch import load_file, save_file

    model, opt = _adam_state()
    tensors, meta = optimizer_to_safetensors(opt.state_dict())
    assert all(torch.is_tensor(t) for t in tensors.values())
    save_file(tensors, str(tmp_path / "o.safetensors"))
    restored = optimizer_from_safetensors(load_file(str(tmp_path / "o.safetensors")), json.loads(json.dumps(meta)))
    model2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    model2.load_state_dict(model.state_dict())
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3, betas=(0.9, 0.95))
    opt2.load_state_dict(restored)
    x = torch.randn(5, 3)
    for m, o in ((model, opt), (model2, opt2)):  # one more identical step from each
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


class _Saveable:
    """Stands in for a model/tokenizer: writes one file (save_checkpoint's own logic is what is tested)."""

    def __init__(self, name, fail=False):
        self.name, self.fail = name, fail

    def save_pretrained(self, folder, **kw):
        if self.fail:
            raise OSError("disk full")
        (folder / self.name).write_text("x")


def test_atomic_save_and_listing(tmp_path):
    _, opt = _adam_state()
    p = save_checkpoint(checkpoint_dir(tmp_path, 2), model=_Saveable("w"), model_state=None, tokenizer=_Saveable("t"),
                        optimizer_state=opt.state_dict(), trainer_state={"step": 2})
    assert p.name == "checkpoint-000002" and (p / "trainer_state.json").exists()
    assert load_optimizer_state(p) is not None
    # a save that dies half-way leaves the earlier checkpoint as the latest and no checkpoint-* folder
    with pytest.raises(OSError):
        save_checkpoint(checkpoint_dir(tmp_path, 4), model=_Saveable("w", fail=True), model_state=None,
                        tokenizer=_Saveable("t"), optimizer_state=None, trainer_state={"step": 4})
    assert list_checkpoints(tmp_path) == [p]
    assert not checkpoint_dir(tmp_path, 4).exists()
    assert resolve_resume("latest", str(tmp_path)) == p


def test_resume_errors(tmp_path):
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        resolve_resume("latest", str(tmp_path))
    (tmp_path / "not_a_ckpt").mkdir()
    with pytest.raises(ConfigError, match="is not a prorl checkpoint"):
        resolve_resume(str(tmp_path / "not_a_ckpt"), str(tmp_path))


def test_prune_keeps_newest(tmp_path):
    from prorl.checkpoint import prune_checkpoints

    for step in (1, 2, 3):
        save_checkpoint(checkpoint_dir(tmp_path, step), model=_Saveable("w"), model_state=None, tokenizer=_Saveable("t"),
                        optimizer_state=None, trainer_state={"step": step})
    assert [p.name for p in prune_checkpoints(tmp_path, 2)] == ["checkpoint-000001"]
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-000002", "checkpoint-000003"]
    prune_checkpoints(tmp_path, 1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-000003"]
    assert prune_checkpoints(tmp_path, None) == []
    assert not list(tmp_path.glob(".deleting-*"))
