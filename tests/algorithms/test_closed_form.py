"""The check no implementation can fake (docs/algorithms.md): on a tabular problem the optimum of
the KL-constrained objective is known, pi*(y|x) = pi_ref(y|x) exp(r(x,y)/beta) / Z(x).

DPO on Bradley-Terry pairs, Plackett-Luce DPO on rankings and PPO with a KL-penalised reward
must all reach it: KL(pi* || pi) < 0.02, averaged over prompts.
"""

import pytest
import torch

from rlhf.algorithms import (
    dpo_loss,
    kl_penalized_rewards,
    plackett_luce_loss,
    ppo_policy_loss,
    rloo_advantages,
)

NUM_PROMPTS, NUM_RESPONSES, BETA = 3, 6, 0.5
TOLERANCE = 0.02


def make_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log pi_ref [P, N], rewards r [P, N] and log pi* [P, N] of a fixed random problem."""
    gen = torch.Generator().manual_seed(seed)
    ref_logp = torch.log_softmax(torch.randn(NUM_PROMPTS, NUM_RESPONSES, generator=gen), dim=1)
    reward = torch.randn(NUM_PROMPTS, NUM_RESPONSES, generator=gen)
    optimal_logp = torch.log_softmax(ref_logp + reward / BETA, dim=1)
    return ref_logp, reward, optimal_logp


def kl_to_optimum(optimal_logp: torch.Tensor, logits: torch.Tensor) -> float:
    """KL(pi* || pi) averaged over prompts."""
    logp = torch.log_softmax(logits.detach(), dim=1)
    return (optimal_logp.exp() * (optimal_logp - logp)).sum(dim=1).mean().item()


def fit(loss_fn, init_logits: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """Full-batch Adam on tabular logits [P, N]; loss_fn maps log pi [P, N] to a scalar."""
    logits = init_logits.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(torch.log_softmax(logits, dim=1)).backward()
        optimizer.step()
    return logits.detach()


def bradley_terry_pairs(reward: torch.Tensor, n: int, seed: int):
    """n preference pairs (prompt, y_w, y_l) as distinct rows with their frequencies.

    A uniformly drawn pair of distinct responses is labelled by Bradley-Terry with reward r.
    The mean loss over the samples equals the frequency-weighted loss over distinct rows.
    """
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(NUM_PROMPTS, (n,), generator=gen)
    first = torch.randint(NUM_RESPONSES, (n,), generator=gen)
    second = (first + torch.randint(1, NUM_RESPONSES, (n,), generator=gen)) % NUM_RESPONSES
    p_first = torch.sigmoid(reward[prompt, first] - reward[prompt, second])
    first_wins = torch.rand(n, generator=gen) < p_first
    chosen = torch.where(first_wins, first, second)
    rejected = torch.where(first_wins, second, first)
    rows, counts = torch.unique(
        torch.stack([prompt, chosen, rejected], 1), dim=0, return_counts=True
    )
    prompt, chosen, rejected = rows.unbind(1)
    return prompt, chosen, rejected, counts / n


def train_dpo(swap: bool = False, beta: float = BETA) -> float:
    """Train tabular DPO on Bradley-Terry pairs; return KL(pi* || pi)."""
    ref_logp, reward, optimal_logp = make_problem()
    p, win, lose, weights = bradley_terry_pairs(reward, n=200_000, seed=1)
    if swap:  # the y_w / y_l swap of the DPO paper's appendix A.4
        win, lose = lose, win

    def loss_fn(logp: torch.Tensor) -> torch.Tensor:
        losses, _, _ = dpo_loss(
            logp[p, win], logp[p, lose], ref_logp[p, win], ref_logp[p, lose], beta=beta
        )
        return (weights * losses).sum()

    return kl_to_optimum(optimal_logp, fit(loss_fn, ref_logp, steps=600, lr=0.05))


def test_dpo_on_bradley_terry_pairs_reaches_the_optimum():
    ref_logp, _, optimal_logp = make_problem()
    assert kl_to_optimum(optimal_logp, ref_logp) > 0.3  # the reference is far from pi*
    assert train_dpo() < TOLERANCE


@pytest.mark.parametrize(("swap", "beta"), [(True, BETA), (False, 2 * BETA)])
def test_the_check_catches_mistakes(swap, beta):
    # Swapped preferences, or a beta other than the one of pi*, must end far from pi*.
    assert train_dpo(swap=swap, beta=beta) > 3 * TOLERANCE


def test_plackett_luce_dpo_on_rankings_reaches_the_optimum():
    ref_logp, reward, optimal_logp = make_problem()
    gen = torch.Generator().manual_seed(2)
    n, k = 100_000, 4
    prompt = torch.randint(NUM_PROMPTS, (n,), generator=gen)
    # K of the N responses, uniformly, then ranked by Plackett-Luce with utilities r: sorting
    # r + Gumbel noise in decreasing order samples a Plackett-Luce ranking.
    subset = torch.rand(n, NUM_RESPONSES, generator=gen).argsort(dim=1)[:, :k]
    uniform = torch.rand(n, k, generator=gen).clamp_min(1e-12)
    noisy = reward[prompt.unsqueeze(1), subset] - torch.log(-torch.log(uniform))
    ranking = subset.gather(1, noisy.argsort(dim=1, descending=True))  # [n, K], best first
    rows, counts = torch.unique(
        torch.cat([prompt.unsqueeze(1), ranking], 1), dim=0, return_counts=True
    )
    p, ranked = rows[:, :1], rows[:, 1:]
    weights = counts / n

    def loss_fn(logp: torch.Tensor) -> torch.Tensor:
        losses = plackett_luce_loss(logp[p, ranked], ref_logp[p, ranked], beta=BETA)
        return (weights * losses).sum()

    logits = fit(loss_fn, ref_logp, steps=600, lr=0.05)
    assert kl_to_optimum(optimal_logp, logits) < TOLERANCE


def test_ppo_with_kl_penalty_reaches_the_optimum():
    """Sampled PPO with T = 1: reward r(x, y) - beta * k1, RLOO advantages, clipped loss."""
    ref_logp, reward, optimal_logp = make_problem()
    torch.manual_seed(3)
    group = 512  # samples per prompt and iteration
    prompt = torch.arange(NUM_PROMPTS).repeat_interleave(group)  # rows grouped per prompt
    mask = torch.ones(len(prompt), 1)
    logits = ref_logp.clone().requires_grad_(True)
    iterations = 300
    optimizer = torch.optim.Adam([logits], lr=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 1 - i / iterations)
    for _ in range(iterations):
        with torch.no_grad():
            probs = torch.softmax(logits, dim=1)[prompt]
            response = torch.multinomial(probs, 1).squeeze(1)
            old_logp = torch.log_softmax(logits, dim=1)[prompt, response].unsqueeze(1)
            rewards = kl_penalized_rewards(
                reward[prompt, response],
                old_logp,
                ref_logp[prompt, response].unsqueeze(1),
                mask,
                kl_coef=BETA,
                kind="k1",
            )
            advantages, _ = rloo_advantages(rewards, mask, group_size=group)
        for _ in range(2):  # PPO epochs on the same samples
            logp = torch.log_softmax(logits, dim=1)[prompt, response].unsqueeze(1)
            loss, _ = ppo_policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
    assert kl_to_optimum(optimal_logp, logits) < TOLERANCE
