"""The reward actor serves each kind of reward source through the same call."""

import pytest

pytestmark = pytest.mark.integration

# The judge's reward actor imports this module (sentiment_judge): it imports no torch (3 CPU-s
# at that actor's start; a function or judge reward needs none), only the tests do.


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, embedded_model_path):
    """A tiny Llama sequence-classification reward model with the embedded tokenizer."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(embedded_model_path)
    config.num_labels = 1
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(embedded_model_path).save_pretrained(out)
    return out


def _actor(**cfg):
    from actors.group import spawn
    from actors.reward import RewardActor
    from rlhf.rewards import RewardConfig

    return spawn(RewardActor, RewardConfig(**cfg), num_cpus=1)


def test_reward_model_scores_match_a_direct_forward(ray_cluster, reward_model_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    prompts = ["the film was", "i saw it and"]
    groups = [[" great .", " awful and boring ."], [" loved it .", " hated it ."]]
    actor = _actor(kind="model", model=str(reward_model_dir))
    got = ray_cluster.get(actor.score_groups.remote(prompts, groups))
    ray_cluster.kill(actor)
    tokenizer = AutoTokenizer.from_pretrained(reward_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    with torch.no_grad():
        want = [
            [model(**tokenizer(p + r, return_tensors="pt")).logits[0, 0].item() for r in g]
            for p, g in zip(prompts, groups, strict=True)
        ]
    assert [len(g) for g in got] == [2, 2]
    flat = [s for g in got for s in g]
    assert flat == pytest.approx([s for g in want for s in g], abs=1e-5)  # padding changes nothing


def test_function_and_judge_sources(ray_cluster):
    from rlhf.task import sentiment_reward

    prompts, groups = ["the film was"], [[" great .", " awful .", " fine ."]]
    actor = _actor(kind="function", function="sentiment")
    assert ray_cluster.get(actor.score_groups.remote(prompts, groups)) == [
        sentiment_reward(prompts * 3, groups[0])
    ]
    judge = _actor(kind="judge", judge="tests.actors.test_reward:sentiment_judge")
    scores = ray_cluster.get(judge.score_groups.remote(prompts, groups))[0]
    assert scores[0] > scores[2] > scores[1]  # the judge agrees with the sentiment order
    ray_cluster.kill(actor)
    ray_cluster.kill(judge)


def sentiment_judge(prompt: str, a: str, b: str) -> float:
    """A pairwise judge for the test: P(a better) from the task's sentiment scores."""
    from rlhf.task import sentiment_score

    return 1.0 / (1.0 + 2.718281828 ** (20 * (sentiment_score(b) - sentiment_score(a))))
