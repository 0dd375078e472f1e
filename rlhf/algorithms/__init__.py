"""The algorithm library: pure functions of tensors, and the registries that name them.

Imports torch and the standard library only (no Ray, vLLM or DeepSpeed), so it can be tested and
reused anywhere. The math follows docs/algorithms.md; every function documents its tensor shapes.

- ``preference``: ``dpo_loss`` (sigmoid / cDPO, IPO, hinge), ``plackett_luce_loss``,
  ``preference_metrics``
- ``dpo_variants``: the other DPO losses with a reference (robust, EXO, NCA, BCO, SPPO, AOT,
  APO, DiscoPOP, RPO); ``reference_free``: SimPO, CPO, ORPO and the SFT term
- ``kto``: ``kto_loss`` on unpaired feedback (desirable / undesirable single responses),
  ``unpaired_metrics``
- ``advantages``: ``gae``, ``grpo_advantages``, ``rloo_advantages``, ``reinforce_pp_advantages``
- ``ppo``: ``ppo_policy_loss``, ``ppo_value_loss``, ``truncated_is_weights``
- ``kl``: ``kl_estimate`` (k1, k2, k3), ``sequence_kl`` (exact, from logits),
  ``kl_penalized_rewards``, KL controllers
- ``logprobs``: ``sequence_logps``, ``target_logps``, ``entropy_from_logits``
- ``masked``: ``masked_mean``, ``masked_var``, ``masked_whiten``
- ``registry``: ``get_preference_loss`` (a name, or a weighted sum of losses) /
  ``register_preference_loss``, ``get_advantage`` /
  ``register_advantage``, and the generic ``Registry`` (entry-point group ``rlhf.algorithms``)
- ``types``: ``RankedLogps`` and ``AdvantageInput``, the inputs of the two plug points
"""

from rlhf.algorithms.advantages import (
    discounted_returns,
    gae,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from rlhf.algorithms.dpo_variants import (
    aot_loss,
    aot_unpaired_loss,
    apo_down_loss,
    apo_zero_loss,
    bco_pair_loss,
    discopop_loss,
    exo_pair_loss,
    nca_pair_loss,
    robust_loss,
    rpo_loss,
    sppo_hard_loss,
)
from rlhf.algorithms.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    kl_estimate,
    kl_penalized_rewards,
    sequence_kl,
)
from rlhf.algorithms.kto import kto_loss, mismatched_indices, reference_point, unpaired_metrics
from rlhf.algorithms.logprobs import entropy_from_logits, sequence_logps, target_logps
from rlhf.algorithms.masked import masked_mean, masked_sum, masked_var, masked_whiten
from rlhf.algorithms.ppo import ppo_policy_loss, ppo_value_loss, truncated_is_weights
from rlhf.algorithms.preference import dpo_loss, plackett_luce_loss, preference_metrics
from rlhf.algorithms.reference_free import (
    cpo_loss,
    mean_logps,
    orpo_loss,
    sft_loss,
    simpo_loss,
)
from rlhf.algorithms.registry import (
    ENTRY_POINT_GROUP,
    Entry,
    PluginLoadError,
    Registry,
    UnknownNameError,
    WeightedLosses,
    advantage_estimators,
    get_advantage,
    get_preference_loss,
    load_plugins,
    preference_losses,
    register_advantage,
    register_preference_loss,
)
from rlhf.algorithms.types import (
    AdvantageEstimator,
    AdvantageInput,
    PreferenceLoss,
    RankedLogps,
)

__all__ = [
    "AdaptiveKLController",
    "AdvantageEstimator",
    "AdvantageInput",
    "ENTRY_POINT_GROUP",
    "Entry",
    "FixedKLController",
    "KLController",
    "PluginLoadError",
    "PreferenceLoss",
    "RankedLogps",
    "Registry",
    "UnknownNameError",
    "WeightedLosses",
    "advantage_estimators",
    "aot_loss",
    "aot_unpaired_loss",
    "apo_down_loss",
    "apo_zero_loss",
    "bco_pair_loss",
    "cpo_loss",
    "discopop_loss",
    "discounted_returns",
    "dpo_loss",
    "entropy_from_logits",
    "exo_pair_loss",
    "gae",
    "get_advantage",
    "get_preference_loss",
    "grpo_advantages",
    "kl_estimate",
    "kl_penalized_rewards",
    "sequence_kl",
    "kto_loss",
    "load_plugins",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "mismatched_indices",
    "reference_point",
    "mean_logps",
    "nca_pair_loss",
    "orpo_loss",
    "plackett_luce_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "preference_losses",
    "preference_metrics",
    "register_advantage",
    "register_preference_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "robust_loss",
    "rpo_loss",
    "sequence_logps",
    "sft_loss",
    "simpo_loss",
    "sppo_hard_loss",
    "target_logps",
    "truncated_is_weights",
    "unpaired_metrics",
]
