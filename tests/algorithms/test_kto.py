"""KTO's loss against values worked out by hand from its paper, and against TRL's KTOTrainer."""

import math
from types import SimpleNamespace

import pytest
import torch

from rlhf.algorithms.kto import kto_loss, mismatched_indices


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# Three responses, beta 0.5: log-ratios r = 2, -1, 0.5 (desirable, undesirable, desirable).
POLICY, REFERENCE = t(-10.0, -12.0, -7.5), t(-12.0, -11.0, -8.0)
DESIRABLE = torch.tensor([True, False, True])


def test_kto_by_hand():
    # Mismatched pairs: log-ratios 1.0 and 0.2, so z0 = 0.6.
    losses = kto_loss(POLICY, REFERENCE, DESIRABLE, t(-9.0, -5.0), t(-10.0, -5.2), beta=0.5)
    expected = [1 - sig(0.5 * (2 - 0.6)), 1 - sig(0.5 * (0.6 - -1)), 1 - sig(0.5 * (0.5 - 0.6))]
    assert losses.tolist() == pytest.approx(expected)
    weighted = kto_loss(POLICY, REFERENCE, DESIRABLE, t(-9.0, -5.0), t(-10.0, -5.2), 0.5, 2.0, 0.5)
    assert weighted.tolist() == pytest.approx([2 * expected[0], 0.5 * expected[1], 2 * expected[2]])


def test_the_reference_point_is_clamped_at_zero_and_takes_no_gradient():
    # Mismatched log-ratios -3 and -1: their mean -2 is clamped to z0 = 0 (a KL is >= 0).
    mismatched = t(-13.0, -6.0).requires_grad_(True)
    losses = kto_loss(POLICY, REFERENCE, DESIRABLE, mismatched, t(-10.0, -5.0), beta=0.5)
    expected = [1 - sig(0.5 * 2), 1 - sig(0.5 * 1), 1 - sig(0.5 * 0.5)]
    assert losses.tolist() == pytest.approx(expected)
    assert not losses.requires_grad  # nothing but the detached z0 needed a gradient here


def test_mismatched_indices_pair_each_prompt_with_another_response():
    assert mismatched_indices(4).tolist() == [3, 0, 1, 2]
    with pytest.raises(ValueError, match="at least 2"):
        mismatched_indices(1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": 0.0}, "beta"),
        ({"desirable_weight": -1.0}, "kto: desirable_weight"),
        ({"undesirable_weight": math.nan}, "kto: undesirable_weight"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        kto_loss(POLICY, REFERENCE, DESIRABLE, t(-1.0), t(-1.0), **kwargs)
    with pytest.raises(ValueError, match="desirable must be a bool"):
        kto_loss(POLICY, REFERENCE, DESIRABLE.long(), t(-1.0), t(-1.0))


# --- TRL's KTOTrainer._compute_loss on the same numbers ------------------------------------------

B, WIDTH, PROMPT = 6, 12, 3


class _FixedLogps(torch.nn.Module):
    """Stands in for TRL's fused-LM-head model: the given per-token log-probs, those of the
    main sequences or of the mismatched (KL) ones, told apart by their input ids."""

    def __init__(self, main: torch.Tensor, mismatched: torch.Tensor, main_ids: torch.Tensor):
        super().__init__()
        self.main, self.mismatched, self.main_ids = main, mismatched, main_ids

    def forward(self, input_ids=None, **_: object) -> SimpleNamespace:
        logps = self.main if torch.equal(input_ids, self.main_ids) else self.mismatched
        zeros = torch.zeros_like(logps)
        return SimpleNamespace(
            log_probs=logps, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
        )


def _trl_kto_trainer(model_path: str, out, beta: float, desirable: float, undesirable: float):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    args = KTOConfig(
        output_dir=str(out),
        per_device_train_batch_size=2,
        beta=beta,
        desirable_weight=desirable,
        undesirable_weight=undesirable,
        precompute_ref_log_probs=True,
        gradient_checkpointing=False,
        bf16=False,
        report_to="none",
        disable_tqdm=True,
    )
    data = Dataset.from_dict(
        {"prompt": [" i saw it", " we saw it"], "completion": [" good .", " bad ."]}
        | {"label": [True, False]}
    )
    return KTOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_path),
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(model_path),
    )


@pytest.mark.integration  # TRL's trainer is built on the embedded model
@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")
@pytest.mark.parametrize(
    ("beta", "desirable", "undesirable", "shift"),
    [(0.1, 1.0, 1.0, 0.0), (0.5, 1.33, 0.7, 0.0), (0.1, 1.0, 1.0, -5.0)],
)
def test_same_loss_and_gradient_as_trl(
    embedded_model_path, tmp_path, beta, desirable, undesirable, shift
):
    pytest.importorskip("trl")
    trainer = _trl_kto_trainer(embedded_model_path, tmp_path, beta, desirable, undesirable)
    gen = torch.Generator().manual_seed(int(beta * 10))
    lengths = torch.randint(1, WIDTH - PROMPT, (B,), generator=gen)
    positions = torch.arange(WIDTH)
    completion = (positions >= PROMPT) & (positions < PROMPT + lengths[:, None])
    main_ids = torch.randint(3, 300, (B, WIDTH), generator=gen)
    mismatched_ids = main_ids[mismatched_indices(B)]  # prompt i with response i - 1
    main = (-3 * torch.rand(B, WIDTH - 1, generator=gen, dtype=torch.float64)) * completion[:, 1:]
    main.requires_grad_(True)
    mismatched = (-3 * torch.rand(B, WIDTH - 1, generator=gen, dtype=torch.float64)) * completion[
        :, 1:
    ]
    reference = main.detach().sum(1) + torch.randn(B, generator=gen, dtype=torch.float64)
    # shift < 0 makes the mismatched log-ratios negative on average: z0 clamps to 0
    mismatched_reference = mismatched.sum(1) + torch.randn(B, generator=gen, dtype=torch.float64)
    mismatched_reference = mismatched_reference - shift
    labels = torch.tensor([True, False, True, True, False, False])
    batch = {
        "input_ids": main_ids,
        "attention_mask": torch.ones(B, WIDTH, dtype=torch.long),
        "completion_mask": completion.long(),
        "KL_input_ids": mismatched_ids,
        "KL_attention_mask": torch.ones(B, WIDTH, dtype=torch.long),
        "KL_completion_mask": completion.long(),
        "label": labels,
        "ref_logps": reference,
        "ref_KL_logps": mismatched_reference,
    }
    theirs = trainer._compute_loss(
        _FixedLogps(main, mismatched, main_ids), batch, return_outputs=False
    )
    (their_grad,) = torch.autograd.grad(theirs, main)
    ours = kto_loss(
        main.sum(1),
        reference,
        labels,
        mismatched.sum(1),
        mismatched_reference,
        beta,
        desirable,
        undesirable,
    ).mean()
    (our_grad,) = torch.autograd.grad(ours, main)

    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-9)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-6, atol=1e-9)


# --- the registered loss: unpaired feedback in a RankedLogps -----------------------------------


def test_registered_kto_reads_the_response_and_its_mismatched_pair():
    from rlhf.algorithms import RankedLogps, get_preference_loss

    entry = get_preference_loss("kto")
    assert entry.unpaired is True and entry.needs_reference is True
    # column 0: the responses of POLICY / REFERENCE; column 1: mismatched pairs (z0 = 0.6 as in
    # test_kto_by_hand, over three of them: log-ratios 1.0, 0.2, 0.6)
    policy = torch.stack([POLICY, t(-9.0, -5.0, -4.0)], dim=1)
    reference = torch.stack([REFERENCE, t(-10.0, -5.2, -4.6)], dim=1)
    logps = RankedLogps(policy, reference, torch.ones(3, 2), labels=DESIRABLE)
    expected = [1 - sig(0.5 * (2 - 0.6)), 1 - sig(0.5 * (0.6 + 1)), 1 - sig(0.5 * (0.5 - 0.6))]
    assert entry(logps, 0.5).tolist() == pytest.approx(expected)
    assert entry(logps, 0.5, undesirable_weight=2.0).tolist() == pytest.approx(
        [expected[0], 2 * expected[1], expected[2]]
    )
    with pytest.raises(ValueError, match=r"'kto' takes unpaired feedback.*labels=None"):
        entry(RankedLogps(policy, reference, torch.ones(3, 2)), 0.5)
    with pytest.raises(ValueError, match="RankedLogps.labels must be a bool tensor"):
        RankedLogps(policy, reference, torch.ones(3, 2), labels=torch.ones(3))


def test_a_weighted_sum_does_not_mix_unpaired_and_paired_losses():
    from rlhf.algorithms import get_preference_loss

    with pytest.raises(ValueError, match=r"cannot mix.*kto \(unpaired\), sft \(ranked\)"):
        get_preference_loss({"kto": 1.0, "sft": 0.1})
    assert get_preference_loss({"kto": 1.0}).unpaired is True


def test_unpaired_metrics_by_hand():
    from rlhf.algorithms import RankedLogps, unpaired_metrics

    # Columns: the labelled completion, the mismatched pair. Completion log-ratios 2, -1, 0.5;
    # mismatched log-ratios 1.0, 0.2, 0.6, so z0 = 0.6; beta 0.5.
    policy = torch.stack((POLICY, t(-9.0, -5.0, -4.0)), dim=1)
    reference = torch.stack((REFERENCE, t(-10.0, -5.2, -4.6)), dim=1)
    logps = RankedLogps(policy, reference, torch.ones(3, 2), labels=DESIRABLE)
    metrics = unpaired_metrics(logps, 0.5)
    assert metrics == pytest.approx(
        {
            "kl": 0.6,
            "rewards/desirable_sum": (0.5 * 2 + 0.5 * 0.5) / 3,
            "rewards/undesirable_sum": 0.5 * -1 / 3,
            "logps/desirable_sum": (-10.0 + -7.5) / 3,
            "logps/undesirable_sum": -12.0 / 3,
            "share/desirable": 2 / 3,
            "share/undesirable": 1 / 3,
            # r = 2 > z0 (desirable), -1 < z0 (undesirable), 0.5 < z0 (desirable: wrong side)
            "rewards/accuracies": 2 / 3,
        }
    )
    with pytest.raises(ValueError, match="unpaired feedback"):
        unpaired_metrics(RankedLogps(policy, reference, torch.ones(3, 2)), 0.5)
