"""DIAYN's skills and discriminator: learnable through the policy's log-probs, dead without their gradient."""

import math

import pytest
import torch
from torch import Tensor, nn

from trainer.algorithms.diayn import DIAYN, Skills

K, A, T, OBS = 4, 5, 8, 3


def train_toy(stop_grad: bool, features: str = "taken", steps: int = 120, margin: float = 0.0) -> dict:
    """A policy over random observations plus one_hot(z), trained only on the DIAYN loss."""
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(OBS + K, 32), nn.Tanh(), nn.Linear(32, A))
    policy[-1].weight.data.mul_(0.01)
    diayn = DIAYN(K, T, n_actions=A, every=2, features=features, stop_grad=stop_grad, margin=margin)
    optimizer = torch.optim.Adam([*policy.parameters(), *diayn.parameters()], lr=1e-2)
    for _ in range(steps):
        skills = torch.randint(K, (64, 1)).expand(64, T)
        x = torch.cat([torch.randn(64, T, OBS), nn.functional.one_hot(skills, K).float()], -1)
        with torch.no_grad():
            actions = torch.distributions.Categorical(logits=policy(x)).sample()
        logits = policy(x)
        logprobs = torch.log_softmax(logits, -1).gather(-1, actions[..., None]).squeeze(-1)
        loss, stats = diayn.loss(logprobs, logits, skills)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return stats


def test_accuracy_rises_above_chance_through_the_policys_log_probs():
    stats = train_toy(stop_grad=False)
    assert stats["diayn_chance"] == 1 / K
    assert stats["diayn_accuracy"] > 2 / K and stats["diayn_loss"] < 0.8 * math.log(K)


def test_stop_grad_control_stays_at_chance():
    stats = train_toy(stop_grad=True)
    assert stats["diayn_accuracy"] < 2 / K and stats["diayn_loss"] > 0.9 * math.log(K)


def test_full_distribution_features_are_an_easier_task():
    assert train_toy(stop_grad=False, features="full", steps=60)["diayn_accuracy"] > 3 / K


def margin_grads(margin: float, push: float = 1.0, plain: bool = False) -> tuple[Tensor, list[Tensor], Tensor]:
    """The gradients of DIAYN.loss (or, `plain`, of the unsplit cross-entropy) on the policy's logits
    and on the discriminator, and each segment's cross-entropy."""
    torch.manual_seed(2)
    diayn = DIAYN(K, T, n_actions=A, features="full", margin=margin)
    logits = torch.randn(16, T, A, requires_grad=True)
    skills = torch.randint(K, (16, 1)).expand(16, T)
    if plain:
        x, keep, labels = diayn.inputs(torch.zeros(16, T), logits, skills)
        loss = nn.functional.cross_entropy(diayn.scores(x, keep), labels)
    else:
        loss, _ = diayn.loss(torch.zeros(16, T), logits, skills, push)
    loss.backward()
    with torch.no_grad():
        x, keep, labels = diayn.inputs(torch.zeros(16, T), logits, skills)
        ce = nn.functional.cross_entropy(diayn.scores(x, keep), labels, reduction="none")
    return logits.grad, [p.grad for p in diayn.parameters()], ce


def test_margin_stops_pushing_the_policy_on_well_classified_segments_only():
    full_policy, full_discriminator, ce = margin_grads(0.0)
    plain_policy, plain_discriminator, _ = margin_grads(0.0, plain=True)
    torch.testing.assert_close(full_policy, plain_policy)  # the split has the unsplit loss's gradients
    for ours, theirs in zip(full_discriminator, plain_discriminator):
        torch.testing.assert_close(ours, theirs)
    margin = float(ce.median())
    policy, discriminator, _ = margin_grads(margin)
    for ours, theirs in zip(discriminator, full_discriminator):
        torch.testing.assert_close(ours, theirs)  # the discriminator learns from every segment
    well = ce < margin
    assert 0 < int(well.sum()) < len(ce)
    assert torch.all(policy[well] == 0) and torch.all(policy[~well].abs().sum((1, 2)) > 0)
    torch.testing.assert_close(policy[~well], full_policy[~well])
    assert margin_grads(0.0, push=0.0)[0] is None  # the warm-up: no gradient reaches the policy


def test_margin_keeps_accuracy_above_chance_at_a_smaller_push():
    free, capped = train_toy(stop_grad=False, features="full", steps=60), train_toy(stop_grad=False, features="full", steps=60, margin=0.7)
    assert capped["diayn_accuracy"] > 2 / K
    assert capped["diayn_pushed"] < 0.5 < free["diayn_pushed"] == 1


def test_rest_features_leave_the_greedy_action_alone():
    logits = torch.randn(3, T, A, requires_grad=True)
    seen, _, _ = DIAYN(K, T, n_actions=A, features="rest").inputs(torch.zeros(3, T), logits, torch.zeros(3, T, dtype=torch.long))
    greedy = nn.functional.one_hot(logits.argmax(-1), A).bool()
    others = torch.log_softmax(logits.masked_fill(greedy, -math.inf), -1)[~greedy].view(3, T, A - 1)
    torch.testing.assert_close(seen, others.sort(-1, descending=True).values)  # the rest's distribution, sorted
    (seen * torch.randn_like(seen)).sum().backward()
    assert torch.all(logits.grad[greedy] == 0) and torch.all(logits.grad[~greedy] != 0)


def test_sum_pool_adds_up_the_evidence_of_the_kept_steps():
    torch.manual_seed(3)
    diayn = DIAYN(K, 6, n_actions=A, features="full", pool="sum")
    logits, skills = torch.randn(2, 6, A), torch.tensor([[1, 1, 1, 1, 1, 1], [2, 2, 2, 3, 3, 3]])
    x, keep, _ = diayn.inputs(torch.zeros(2, 6), logits, skills)
    per_step = diayn.net(torch.log_softmax(logits, -1))
    torch.testing.assert_close(diayn.scores(x, keep), torch.stack([per_step[0].sum(0), per_step[1, :3].sum(0)]))


def test_entropy_pool_weighs_the_steps_where_the_policy_is_undecided():
    diayn = DIAYN(K, 3, n_actions=A, features="full", pool="entropy")
    logits = torch.tensor([[[0.0] * A, [30.0] + [0.0] * (A - 1), [0.0] * A]])
    _, weight, _ = diayn.inputs(torch.zeros(1, 3), logits, torch.tensor([[1, 1, 2]]))
    assert weight[0, 0].item() == pytest.approx(1.0) and weight[0, 1].item() < 1e-9 and weight[0, 2].item() == 0.0


def test_one_skill_is_handled():
    diayn = DIAYN(1, T)
    loss, stats = diayn.loss(torch.randn(4, T), None, torch.zeros(4, T, dtype=torch.long))
    assert loss.item() == 0.0 and {k: float(v) for k, v in stats.items()} == {"diayn_loss": 0.0, "diayn_accuracy": 1.0, "diayn_chance": 1.0,
                                                                                      "diayn_pushed": 0.0}
    assert torch.all(diayn.bonus(torch.randn(4, T), None, torch.zeros(4, T, dtype=torch.long)) == 0)
    assert Skills(3, 1).inputs().tolist() == [[1.0]] * 3


def test_every_nth_step_and_later_skills_are_masked():
    diayn = DIAYN(K, 6, every=2)
    logprobs = torch.arange(12.0).reshape(2, 6)
    skills = torch.tensor([[1, 1, 1, 1, 1, 1], [2, 2, 2, 3, 3, 3]])
    x, keep, labels = diayn.inputs(logprobs, None, skills)
    assert labels.tolist() == [1, 2]
    assert x.flatten(1).tolist() == [[0.0, 2.0, 4.0], [6.0, 8.0, 0.0]]  # steps 0, 2, 4; row 2's step 4 has skill 3
    assert keep.tolist() == [[1.0] * 3, [1.0, 1.0, 0.0]]


def test_bonus_is_log_q_minus_log_p():
    torch.manual_seed(1)
    diayn = DIAYN(K, T, mode="reward")
    logprobs, skills = torch.randn(3, T), torch.randint(K, (3, 1)).expand(3, T)
    x, keep, labels = diayn.inputs(logprobs, None, skills)
    log_q = torch.log_softmax(diayn.net(x.flatten(1)), -1)[torch.arange(3), labels]
    torch.testing.assert_close(diayn.bonus(logprobs, None, skills), log_q.detach() + math.log(K))
    assert diayn.stop_grad  # the reward form never shapes the policy through the loss


def test_bonus_of_a_partial_segment_counts_only_the_steps_taken():
    torch.manual_seed(4)
    diayn = DIAYN(K, T, mode="reward", pool="sum")
    logprobs = torch.randn(2, T)
    skills = torch.tensor([[1] * 3 + [2] * (T - 3), [3] * 3 + [0] * (T - 3)])  # 3 steps taken, the rest marked away
    log_q = torch.log_softmax(diayn.net(logprobs[:, :3, None]).sum(1), -1)[torch.arange(2), skills[:, 0]]
    torch.testing.assert_close(diayn.bonus(logprobs, None, skills), log_q + math.log(K))


def test_skills_per_segment_or_episode_and_their_state_round_trips():
    segment = Skills(64, K, "segment", seed=3)
    before = segment.z.clone()
    segment.start_segment()
    assert not torch.equal(before, segment.z)
    segment.end_episodes(torch.ones(64, dtype=torch.bool))
    episode = Skills(64, K, "episode", seed=3)
    first = episode.z.clone()
    episode.start_segment()
    assert torch.equal(first, episode.z)
    done = torch.arange(64) % 2 == 0
    episode.end_episodes(done)
    assert torch.equal(episode.z[~done], first[~done]) and not torch.equal(episode.z[done], first[done])
    state = episode.state_dict()
    restored = Skills(64, K, "episode", seed=99)
    restored.load_state_dict(state)
    assert torch.equal(restored.z, episode.z)
    episode.start_segment(), restored.start_segment()
    episode.end_episodes(~done), restored.end_episodes(~done)
    assert torch.equal(restored.z, episode.z)  # the draws continue identically
    with pytest.raises(ValueError, match="segment"):
        Skills(2, K, "step")


def test_config_rejects_the_reward_mode_over_full_distributions():
    from trainer import config

    with pytest.raises(config.ConfigError, match="diayn_features=full must be taken"):
        config.resolve({"train": {"diayn_coef": 0.1, "diayn_mode": "reward", "diayn_features": "full"}})
    with pytest.raises(config.ConfigError, match="diayn_features must be full or rest"):
        config.resolve({"train": {"diayn_coef": 0.1, "diayn_pool": "entropy", "diayn_features": "taken"}})
    with pytest.raises(config.ConfigError, match="diayn_skills"):
        config.resolve({"train": {"diayn_skills": "step"}})
