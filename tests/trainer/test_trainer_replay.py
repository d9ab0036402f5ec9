"""The replay factor (trainer/algorithms/replay.py): retention by refreshed priority, capacity,
ages and eviction, what a retained row keeps, checkpoints, the ratio buffer, replay 0 = baseline."""

import pytest
import torch

from trainer import checkpoint, config, losses
from trainer.algorithms import Algorithm, Minibatch, Outputs
from trainer.algorithms.replay import Replay
from trainer.train import Trainer

MEMORY = {"env": {"name": "puffer:memory", "num_envs": 8, "kwargs": {"length": 3}},
          "policy": {"lstm": True, "hidden_size": 16, "lstm_hidden_size": 16},
          "train": {"bptt_horizon": 8, "batch_size": 128, "minibatch_size": 32, "optimizer": "adam",
                    "learning_rate": 0.01, "replay_factor": 0.5}}


def make(overrides, **train):
    torch.set_num_threads(1)
    overrides = {section: dict(values) for section, values in overrides.items()}
    overrides["train"].update(train)
    return Trainer(config.resolve(overrides))


def expected_retention(trainer):
    """What end_phase must keep: the top rows by priority under the current policy."""
    replay, experience = trainer.algorithm, trainer.experience
    values, logprobs = replay.refresh()
    ratio = (logprobs - experience.logprobs[:experience.rows]).exp()
    advantages, _ = trainer.estimate(values, ratio)
    priority = advantages.abs().sum(dim=1)
    return priority, values, ratio


def test_retention_keeps_the_top_priority_rows_and_never_exceeds_capacity():
    trainer = make(MEMORY)
    replay, experience = trainer.algorithm, trainer.experience
    assert isinstance(replay, Replay) and replay.retained_rows == 8 and experience.capacity == 24
    for phase in range(4):
        trainer.evaluate()
        trainer.train()
        assert experience.retained == 8 and experience.rows == 24  # full after the first phase
    trainer.evaluate()
    with torch.no_grad():
        priority, values, ratio = expected_retention(trainer)
    top = torch.topk(priority, 8).indices
    snapshot = {name: getattr(experience, name)[top].clone()
                for name in ("obs", "actions", "logprobs", "rewards", "terminations", "lstm_h", "lstm_c",
                             "next_rewards", "next_values", "next_dones")}
    ages = experience.ages[top] + 1
    replay.end_phase()
    kept = slice(16, 24)
    for name, expected in snapshot.items():  # as collected: behaviour log-probs and LSTM start states too
        assert torch.equal(getattr(experience, name)[kept], expected), name
    assert torch.equal(experience.values[kept], values[top])  # refreshed under the current policy
    assert torch.equal(experience.importance[kept], ratio[top])
    assert torch.equal(experience.ages[kept], ages)
    assert priority[top].min() >= priority[~torch.isin(torch.arange(24), top)].max()
    assert experience.retained == 8


def test_ages_advance_and_max_age_evicts():
    trainer = make(MEMORY)
    experience = trainer.experience
    oldest = []
    for _ in range(6):
        trainer.evaluate()
        trainer.train()
        oldest.append(int(experience.ages[16:24].max()))
        assert int(experience.ages[:16].max()) == 0  # the new batch is always age 0
        assert int(experience.ages[16:24].min()) >= 1
    assert oldest[0] == 1 and all(b <= a + 1 for a, b in zip(oldest, oldest[1:]))
    young = make(MEMORY, replay_max_age=1)
    for _ in range(4):
        young.evaluate()
        stats = young.train()
        assert young.experience.retained == 8 and stats["replay_age_max"] == 1.0
        assert torch.equal(young.experience.ages[16:24], torch.ones(8, dtype=torch.int64))


def test_retained_rows_survive_a_checkpoint_and_resume_exactly(tmp_path):
    trainer = make(MEMORY)
    for _ in range(3):
        trainer.evaluate()
        trainer.train()
    path = tmp_path / checkpoint.save(tmp_path, trainer.epoch, trainer.state_dict(), keep=1)["path"]
    uninterrupted = []
    for _ in range(2):
        trainer.evaluate()
        uninterrupted.append(trainer.train())
    resumed = make(MEMORY)
    assert resumed.experience.retained == 0
    assert resumed.load_state_dict(checkpoint.load(path))  # also rewinds the RNG both share here
    assert resumed.experience.retained == 8
    state = checkpoint.load(path)["algorithm"]["retained"]
    for name in ("obs", "actions", "logprobs", "values", "lstm_h", "lstm_c", "importance", "ages", "next_values"):
        assert torch.equal(getattr(resumed.experience, name)[16:], state[name]), name
    assert (state["ages"] >= 1).all() and (state["importance"] != 1).any()
    for expected in uninterrupted:
        resumed.evaluate()
        assert resumed.train() == expected


def test_the_ratio_buffer_starts_at_one_for_new_rows_and_at_the_refreshed_ratio_for_retained_rows(monkeypatch):
    from trainer import advantage

    trainer = make(MEMORY, update_epochs=2)
    seen = []
    real = advantage.compute

    def compute(values, rewards, dones, importance=None, **kwargs):
        seen.append(importance.clone())
        return real(values, rewards, dones, importance, **kwargs)

    trainer.evaluate()
    trainer.train()
    retained_start = trainer.experience.importance[16:24].clone()
    assert (retained_start != 1).any()  # the policy moved since these rows were collected
    trainer.evaluate()
    monkeypatch.setattr(advantage, "compute", compute)
    trainer.train()
    assert len(seen) == 2 * 24 // 4 + 1  # minibatches, then the retention's refresh
    assert torch.equal(seen[0][:16], torch.ones(16, 8)) and torch.equal(seen[0][16:], retained_start)
    # written back each minibatch (after the first, which runs before any update: its new rows' ratios
    # are exactly 1 where training computes the log-probs bit for bit as collection did)
    assert all((after != before).any() for before, after in zip(seen[1:], seen[2:-1]))


@pytest.mark.parametrize("lstm", [False, True])
def test_replay_factor_zero_is_the_baseline_bit_for_bit(lstm):
    base = {"env": {"name": "gym:CartPole-v1", "num_envs": 8}, "policy": {"lstm": lstm, "lstm_hidden_size": 16},
            "train": {"bptt_horizon": 16, "minibatch_size": 64, "seed": 3}}

    def run(**train):  # one after the other: trainers in one process share torch's global RNG
        trainer = make(base, **train)
        assert type(trainer.algorithm) is Algorithm  # the no-op seams: no replay hook runs at all
        epochs = []
        for _ in range(3):
            trainer.evaluate()
            epochs.append(trainer.train())
        return epochs, [p.detach().clone() for p in trainer.policy.parameters()]

    baseline_losses, baseline_params = run()
    epochs, params = run(replay_factor=0.0, replay_max_age=2, replay_value_weight=0.0)
    assert epochs == baseline_losses
    assert all(torch.equal(a, b) for a, b in zip(params, baseline_params))


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0])
def test_value_weight_scales_the_retained_rows_share_of_the_value_loss(weight):
    cfg = config.resolve({"train": {"replay_factor": 0.5, "replay_value_weight": weight, "vf_coef": 2.0,
                                    "bptt_horizon": 4, "batch_size": 64, "minibatch_size": 16},
                          "env": {"num_envs": 4}})
    replay = Replay(cfg, num_envs=4, segments=16, device=torch.device("cpu"))
    errors = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]], requires_grad=True)
    ages = torch.tensor([0, 3])
    batch = Minibatch(rows=torch.tensor([0, 20]), obs=None, actions=None, logprobs=None, values=None,
                      advantages=None, returns=None, weights=torch.ones(2), ages=ages, state=None)
    ratio = torch.tensor([[1.0, 1.5, 0.5, 1.0], [2.0, 1.0, 1.0, 1.0]])
    value_loss = losses.value_loss(errors)
    out = Outputs(None, None, None, None, ratio, errors, torch.tensor(0.0), value_loss)
    extra = replay.loss(batch, out)
    total = 2.0 * value_loss + (0.0 if extra is None else extra)
    expected = 2.0 * 0.5 * (errors[0].sum() + weight * errors[1].sum()) / 8
    torch.testing.assert_close(total, expected)
    total.backward()
    assert errors.grad[1].eq(2.0 * 0.5 * weight / 8).all()  # 0: no gradient from retained rows at all
    stats = replay.stats.read()
    assert stats["offpolicy_frac"] == 0.5 and stats["ratio_max"] == 2.0
    assert stats["rho_clipfrac"] == pytest.approx(2 / 8) and stats["value_loss_retained"] == pytest.approx(12.5)
    assert stats["value_loss_onpolicy"] == pytest.approx(1.25)
