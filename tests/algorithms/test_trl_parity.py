"""The same batch gives the same DPO loss as TRL's DPOTrainer.

TRL (1.16) computes its loss inside ``DPOTrainer._compute_loss(model, inputs)``, from the
per-token log-probs its fused LM head returns. The tests call that code path itself:

- on given log-probs: a stub model hands TRL chosen per-token log-probs, the reference
  log-probs come in the batch (``precompute_ref_log_probs=True``), and our ``dpo_loss`` gets the
  same numbers summed over the response; the losses and their gradients must agree;
- on a real batch of the embedded model: TRL tokenizes and collates the pairs and runs its
  (perturbed) policy and its reference; we go through our own data path (``load_preferences``,
  ``collate``) and the trainer's log-prob and loss functions on the same two models.

Known differences, pinned here so that they stay deliberate:

- TRL's ``ipo`` divides each response's log-ratio by its number of tokens; ours is the paper's
  eq. 17 on summed log-probs. Ours equals TRL's when given per-token-mean log-probs.
- TRL's ``sft`` (and so RPO, ``["sigmoid", "sft"]``) and the NLL terms of its CPO and ORPO
  average over all chosen tokens of the batch; ours average each response's NLL per token,
  the papers' form. The two agree when every chosen response has the same length, which the
  parity batches for them have; ``test_sft_differs_from_trl_when_chosen_lengths_differ`` pins
  the difference.
- TRL 1.16's ``bco_pair`` has no reward shift: ours with ``delta=0``.
- TRL's ``sigmoid`` ignores ``label_smoothing`` (TRL uses it for ``robust`` and ``exo_pair``
  only), so our conservative DPO (sigmoid with label_smoothing eps) is checked as the mix
  (1 - eps) * TRL(pairs) + eps * TRL(pairs with chosen and rejected swapped), which is its
  definition.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("trl")
# TRL's trainers are built on the embedded model (a heavy fixture): the integration tier.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning"),
]

from rlhf.algorithms import RankedLogps, dpo_loss, get_preference_loss  # noqa: E402

B = 6  # pairs in the synthetic batch
PROMPT_LEN = 5


class _FixedLogps(torch.nn.Module):
    """Stands in for TRL's fused-LM-head model: returns the given per-token log-probs."""

    def __init__(self, token_logps: torch.Tensor) -> None:
        super().__init__()
        self.token_logps = token_logps  # [2B, T - 1], 0 off the completion

    def forward(self, **_: object) -> SimpleNamespace:
        zeros = torch.zeros_like(self.token_logps)
        return SimpleNamespace(
            log_probs=self.token_logps,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=zeros.bool(),
        )


def _trl_trainer(
    model_path: str, out, loss_type, beta: float, precompute: bool, model=None, **config
):
    """A real DPOTrainer on the tiny model (its dataset: two pairs, only to construct it).

    ``loss_type``: one TRL loss type or a list of them; ``config``: more DPOConfig fields.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=2,
        beta=beta,
        loss_type=loss_type if isinstance(loss_type, list) else [loss_type],
        precompute_ref_log_probs=precompute,
        gradient_checkpointing=False,
        bf16=False,
        report_to="none",
        disable_tqdm=True,
        **config,
    )
    data = Dataset.from_dict(
        {
            "prompt": [" i saw it", " we saw it"],
            "chosen": [" good ."] * 2,
            "rejected": [" bad ."] * 2,
        }
    )
    return DPOTrainer(
        model=model if model is not None else AutoModelForCausalLM.from_pretrained(model_path),
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(model_path),
    )


def _synthetic_batch(
    seed: int, equal_chosen_lengths: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """TRL's batch layout ([chosen; rejected] rows) with random per-token log-probs.

    Returns the batch (reference log-probs included), the policy's per-token log-probs
    [2B, T - 1] (a leaf that requires grad) and the completion lengths [2B].
    ``equal_chosen_lengths``: every chosen response has the same length (rejected ones vary).
    """
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (2 * B,), generator=gen)
    if equal_chosen_lengths:
        lengths[:B] = 7
    width = PROMPT_LEN + int(lengths.max())
    positions = torch.arange(width)
    completion = (positions >= PROMPT_LEN) & (positions < PROMPT_LEN + lengths[:, None])
    attention = positions < PROMPT_LEN + lengths[:, None]
    token_logps = -3 * torch.rand(2 * B, width - 1, generator=gen, dtype=torch.float64)
    token_logps = (token_logps * completion[:, 1:]).requires_grad_(True)
    ref = token_logps.detach().sum(1) + torch.randn(2 * B, generator=gen, dtype=torch.float64)
    batch = {
        "input_ids": torch.randint(3, 300, (2 * B, width), generator=gen) * attention,
        "attention_mask": attention.long(),
        "completion_mask": completion.long(),
        "ref_chosen_logps": ref[:B],
        "ref_rejected_logps": ref[B:],
    }
    return batch, token_logps, lengths


def _swapped(batch: dict[str, torch.Tensor], token_logps: torch.Tensor):
    """The same pairs with chosen and rejected exchanged."""

    def swap(x):
        return torch.cat([x[B:], x[:B]])

    out = {k: swap(v) for k, v in batch.items() if not k.startswith("ref_")}
    out["ref_chosen_logps"], out["ref_rejected_logps"] = (
        batch["ref_rejected_logps"],
        batch["ref_chosen_logps"],
    )
    return out, swap(token_logps)


def _ours(token_logps, batch, beta, loss_type, label_smoothing=0.0, per_token_mean=False):
    logps = token_logps.sum(1)
    ref = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]])
    if per_token_mean:
        lengths = batch["completion_mask"].sum(1)
        logps, ref = logps / lengths, ref / lengths
    losses, _, _ = dpo_loss(
        logps[:B], logps[B:], ref[:B], ref[B:], beta, loss_type, label_smoothing
    )
    return losses.mean()


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_same_loss_and_gradient_as_trl_on_given_logps(
    embedded_model_path, tmp_path, loss_type, beta
):
    trainer = _trl_trainer(embedded_model_path, tmp_path, loss_type, beta, precompute=True)
    batch, token_logps, _ = _synthetic_batch(seed=int(beta * 10) + len(loss_type))

    theirs = trainer._compute_loss(_FixedLogps(token_logps), batch, return_outputs=False)
    (their_grad,) = torch.autograd.grad(theirs, token_logps)
    # TRL's IPO works on per-token means (see the module docstring); the rest on sums.
    ours = _ours(token_logps, batch, beta, loss_type, per_token_mean=loss_type == "ipo")
    (our_grad,) = torch.autograd.grad(ours, token_logps)

    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-9)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-6, atol=1e-9)
    if loss_type == "ipo":  # on summed log-probs the two IPOs differ
        summed = _ours(token_logps, batch, beta, "ipo")
        assert summed.item() != pytest.approx(theirs.item(), rel=1e-3)


@pytest.mark.parametrize("label_smoothing", [0.1, 0.3])
def test_conservative_dpo_is_the_label_mix_of_trl_sigmoid(
    embedded_model_path, tmp_path, label_smoothing
):
    trainer = _trl_trainer(embedded_model_path, tmp_path, "sigmoid", 0.1, precompute=True)
    batch, token_logps, _ = _synthetic_batch(seed=7)
    swapped, swapped_logps = _swapped(batch, token_logps)

    kept = trainer._compute_loss(_FixedLogps(token_logps), batch, return_outputs=False)
    flipped = trainer._compute_loss(_FixedLogps(swapped_logps), swapped, return_outputs=False)
    theirs = (1 - label_smoothing) * kept + label_smoothing * flipped
    (their_grad,) = torch.autograd.grad(theirs, token_logps)
    ours = _ours(token_logps, batch, 0.1, "sigmoid", label_smoothing)
    (our_grad,) = torch.autograd.grad(ours, token_logps)

    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-6, atol=1e-9)


# --- the DPO variants, the SFT term and weighted sums: DPOTrainer's own loss code ------------

# (our loss: a name or a mapping of names to weights, our options, TRL's loss_type list,
#  more DPOConfig fields, whether every chosen response has the same length)
VARIANTS = [
    ("robust", {"label_smoothing": 0.2}, ["robust"], {"label_smoothing": 0.2}, False),
    ("exo_pair", {"label_smoothing": 1e-3}, ["exo_pair"], {"label_smoothing": 1e-3}, False),
    ("exo_pair", {"label_smoothing": 0.2}, ["exo_pair"], {"label_smoothing": 0.2}, False),
    ("nca_pair", {}, ["nca_pair"], {}, False),
    ("bco_pair", {"delta": 0.0}, ["bco_pair"], {}, False),
    ("sppo_hard", {}, ["sppo_hard"], {}, False),
    ("aot", {}, ["aot"], {}, False),
    ("aot", {"label_smoothing": 0.1}, ["aot"], {"label_smoothing": 0.1}, False),
    ("aot_unpaired", {"label_smoothing": 0.1}, ["aot_unpaired"], {"label_smoothing": 0.1}, False),
    ("apo_zero", {}, ["apo_zero"], {}, False),
    ("apo_down", {}, ["apo_down"], {}, False),
    ("discopop", {}, ["discopop"], {}, False),
    ("discopop", {"tau": 0.5}, ["discopop"], {"discopop_tau": 0.5}, False),
    # TRL's SFT term averages over all chosen tokens of the batch; ours per response: the same
    # when every chosen response has the same length (test_sft_differs_... pins the rest).
    ("sft", {}, ["sft"], {}, True),
    ("rpo", {"alpha": 0.5}, ["sigmoid", "sft"], {"loss_weights": [1.0, 0.5]}, True),
    ({"sigmoid": 1.0, "sft": 0.2}, {}, ["sigmoid", "sft"], {"loss_weights": [1.0, 0.2]}, True),
    (
        {"hinge": 0.5, "nca_pair": 1.0, "apo_zero": 2.0},
        {},
        ["hinge", "nca_pair", "apo_zero"],
        {"loss_weights": [0.5, 1.0, 2.0]},
        False,
    ),
]


def _completion(batch) -> torch.Tensor:
    """[2B, T - 1] True where a log-prob belongs to a response token."""
    return batch["completion_mask"][:, 1:].bool()


def _our_variant(token_logps, batch, beta, name, options):
    """Our registered loss on the same numbers, summed over each response: the batch mean."""
    lengths = batch["completion_mask"].sum(1)
    summed = (token_logps * _completion(batch)).sum(1)  # as the trainer's loss mask does
    logps = RankedLogps(
        policy=torch.stack(summed.chunk(2), dim=1),
        reference=torch.stack([batch["ref_chosen_logps"], batch["ref_rejected_logps"]], dim=1),
        lengths=torch.stack(lengths.chunk(2), dim=1),
    )
    return get_preference_loss(name)(logps, beta, **options).mean()


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize(
    ("name", "options", "trl_types", "trl_config", "equal_chosen"),
    VARIANTS,
    ids=[str(v[0]) + "-" + "-".join(f"{k}={x}" for k, x in v[1].items()) for v in VARIANTS],
)
def test_variants_same_loss_and_gradient_as_trl(
    embedded_model_path, tmp_path, name, options, trl_types, trl_config, equal_chosen, beta
):
    trainer = _trl_trainer(
        embedded_model_path, tmp_path, trl_types, beta, precompute=True, **trl_config
    )
    batch, token_logps, _ = _synthetic_batch(seed=len(str(name)), equal_chosen_lengths=equal_chosen)

    theirs = trainer._compute_loss(_FixedLogps(token_logps), batch, return_outputs=False)
    (their_grad,) = torch.autograd.grad(theirs, token_logps)
    ours = _our_variant(token_logps, batch, beta, name, options)
    (our_grad,) = torch.autograd.grad(ours, token_logps)

    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-9)
    # Off the responses the stand-in's log-probs are zeros that TRL sums (or not, for sft)
    # and we mask: the gradients that matter are the response tokens'.
    mask = _completion(batch)
    torch.testing.assert_close(our_grad[mask], their_grad[mask], rtol=1e-6, atol=1e-9)


def test_sft_differs_from_trl_when_chosen_lengths_differ(embedded_model_path, tmp_path):
    trainer = _trl_trainer(embedded_model_path, tmp_path, ["sft"], 0.1, precompute=True)
    batch, token_logps, lengths = _synthetic_batch(seed=3)
    assert len(set(lengths[:B].tolist())) > 1
    theirs = trainer._compute_loss(_FixedLogps(token_logps), batch, return_outputs=False)
    ours = _our_variant(token_logps, batch, 0.1, "sft", {})
    # TRL: the mean over all chosen tokens; ours: the mean over responses of their token means.
    chosen, mask = token_logps[:B].detach(), _completion(batch)[:B]
    assert theirs.item() == pytest.approx(-chosen[mask].mean().item(), rel=1e-9)
    per_response = -(chosen * mask).sum(1) / mask.sum(1)
    assert ours.item() == pytest.approx(per_response.mean().item(), rel=1e-9)
    assert ours.item() != pytest.approx(theirs.item(), rel=1e-3)


# --- reference-free: CPOTrainer.cpo_loss and ORPOTrainer.odds_ratio_loss ---------------------
# Both are methods of trainers that need a model to construct; they read a few attributes of
# the trainer only, which a namespace gives them. Their NLL term is the cross-entropy over all
# chosen tokens of the batch (``-mean`` of those log-probs, as computed below); the batch has
# chosen responses of one length, where that equals our per-response mean.


def _reference_free_inputs(seed: int):
    batch, token_logps, lengths = _synthetic_batch(seed, equal_chosen_lengths=True)
    mask = _completion(batch)
    sums = (token_logps * mask).sum(1)
    means = sums / lengths
    nll = -token_logps[:B][mask[:B]].mean()  # TRL's cross_entropy over the chosen tokens
    logps = RankedLogps(
        torch.stack(sums.chunk(2), dim=1), None, torch.stack(lengths.chunk(2), dim=1)
    )
    return token_logps, sums, means, nll, logps


def _trainer_attributes(**values):
    return SimpleNamespace(accelerator=SimpleNamespace(device="cpu"), **values)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("ours", "options", "loss_type", "alpha", "gamma"),
    [
        ("cpo", {"alpha": 1.0}, "sigmoid", 1.0, 0.0),
        ("cpo", {"alpha": 0.3}, "sigmoid", 0.3, 0.0),
        ("simpo", {"gamma": 0.5}, "simpo", 0.0, 0.5),
        ("simpo", {"gamma": 1.5}, "simpo", 0.0, 1.5),
    ],
)
@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_cpo_and_simpo_same_loss_and_gradient_as_trl(ours, options, loss_type, alpha, gamma, beta):
    from trl.experimental.cpo import CPOTrainer

    token_logps, sums, means, nll, logps = _reference_free_inputs(seed=11)
    trainer = _trainer_attributes(
        beta=beta, alpha=0.0, loss_type=loss_type, simpo_gamma=gamma, label_smoothing=0.0
    )
    # TRL's CPO reads summed log-probs, its SimPO per-token means (average_log_prob).
    given = means if loss_type == "simpo" else sums
    losses, _, _ = CPOTrainer.cpo_loss(trainer, given[:B], given[B:])
    theirs = losses.mean() + alpha * nll
    (their_grad,) = torch.autograd.grad(theirs, token_logps, retain_graph=True)
    mine = get_preference_loss(ours)(logps, beta, **options).mean()
    (our_grad,) = torch.autograd.grad(mine, token_logps)

    assert mine.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-9)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-6, atol=1e-9)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_orpo_same_loss_and_gradient_as_trl(beta):
    from trl.experimental.orpo import ORPOTrainer

    token_logps, _, means, nll, logps = _reference_free_inputs(seed=12)
    losses, *_ = ORPOTrainer.odds_ratio_loss(_trainer_attributes(beta=beta), means[:B], means[B:])
    theirs = nll - losses.mean()  # ORPOTrainer: policy_nll_loss - losses.mean()
    (their_grad,) = torch.autograd.grad(theirs, token_logps, retain_graph=True)
    mine = get_preference_loss("orpo")(logps, beta).mean()
    (our_grad,) = torch.autograd.grad(mine, token_logps)

    assert mine.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-9)
    torch.testing.assert_close(our_grad, their_grad, rtol=1e-6, atol=1e-9)


# --- a real batch of the embedded model -------------------------------------------------------

PAIRS = [
    (" it was great and the acting was wonderful .", " it was boring ."),
    (" i loved it .", " the plot was a mess and i hated the ending ."),
    (" not bad at all , a fun movie .", " terrible ."),
    (" the music was beautiful .", " the film was not good ."),
]


@pytest.fixture(scope="module")
def real_pairs():
    from rlhf.task import make_prompts

    prompts = make_prompts(len(PAIRS), seed=3)
    return [
        {"prompt": p, "chosen": c, "rejected": r} for p, (c, r) in zip(prompts, PAIRS, strict=True)
    ]


@pytest.fixture(scope="module")
def models(embedded_model_path):
    """(reference, policy): the embedded model and a copy with every weight perturbed."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(embedded_model_path).eval()
    policy = AutoModelForCausalLM.from_pretrained(embedded_model_path).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=gen))
    return reference, policy


def _our_batch_logps(real_pairs, model_path, tmp_path, models):
    """Our data path and the trainer's log-prob function: [B, 2] policy and reference logps."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from rlhf.data.config import DataConfig
    from rlhf.data.loader import collate
    from rlhf.data.prepare import load_preferences
    from rlhf.models.hf import batch_logps

    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(real_pairs), path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    table, _ = load_preferences(str(path), tokenizer, DataConfig(path=str(path)))
    batch = collate(table, tokenizer.pad_token_id)
    with torch.no_grad():
        reference, policy = (
            batch_logps(m, batch.input_ids, batch.attention_mask, batch.loss_mask)[0].view(-1, 2)
            for m in models
        )
    return table, RankedLogps(policy, reference, batch.response_lengths.view(-1, 2))


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
def test_same_loss_as_trl_on_a_real_batch(
    embedded_model_path, tmp_path, real_pairs, models, loss_type
):
    from datasets import Dataset

    reference, policy = models
    trainer = _trl_trainer(  # TRL patches its model's forward: give it a copy
        embedded_model_path, tmp_path, loss_type, 0.1, precompute=False, model=copy.deepcopy(policy)
    )
    # TRL loads its reference from the policy's model path: the unperturbed embedded model.
    dataset = trainer._prepare_dataset(
        Dataset.from_list(real_pairs), trainer.processing_class, trainer.args, "parity"
    )
    collated = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        theirs = trainer._compute_loss(trainer.model, collated, return_outputs=False)

    table, logps = _our_batch_logps(real_pairs, embedded_model_path, tmp_path, models)
    ours = get_preference_loss(loss_type)(logps, 0.1).mean()

    # Same tokens: TRL's prompt / chosen / rejected ids are ours.
    assert table.column("prompt_ids").to_pylist() == dataset["prompt_ids"]
    responses = table.column("response_ids").to_pylist()
    assert [r[0] for r in responses] == dataset["chosen_ids"]
    assert [r[1] for r in responses] == dataset["rejected_ids"]
    # The policy really differs from the reference, so the loss is not the trivial ln 2.
    assert (logps.policy - logps.reference).abs().max() > 0.1
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
