"""The algorithm library: pure functions of tensors, and the registries that name them.

Imports torch and the standard library only (no Ray, vLLM or DeepSpeed), so it can be tested and
reused anywhere. The math follows docs/algorithms.md; every function documents its tensor shapes.

- ``preference``: ``dpo_loss`` (sigmoid / cDPO, IPO, hinge), ``plackett_luce_loss``,
  ``preference_metrics``
- ``advantages``: ``gae``, ``grpo_advantages``, ``rloo_advantages``, ``reinforce_pp_advantages``
- ``ppo``: ``ppo_policy_loss``, ``ppo_value_loss``
- ``kl``: ``kl_estimate`` (k1, k2, k3), ``kl_penalized_rewards``, KL controllers
- ``logprobs``: ``sequence_logps``, ``target_logps``, ``entropy_from_logits``
- ``masked``: ``masked_mean``, ``masked_var``, ``masked_whiten``
- ``registry``: ``get_preference_loss`` / ``register_preference_loss``, ``get_advantage`` /
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
from rlhf.algorithms.kl import (
    AdaptiveKLController,
    FixedKLController,
    KLController,
    kl_estimate,
    kl_penalized_rewards,
)
from rlhf.algorithms.logprobs import entropy_from_logits, sequence_logps, target_logps
from rlhf.algorithms.masked import masked_mean, masked_sum, masked_var, masked_whiten
from rlhf.algorithms.ppo import ppo_policy_loss, ppo_value_loss
from rlhf.algorithms.preference import dpo_loss, plackett_luce_loss, preference_metrics
from rlhf.algorithms.registry import (
    ENTRY_POINT_GROUP,
    Entry,
    PluginLoadError,
    Registry,
    UnknownNameError,
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
    "ENTRY_POINT_GROUP",
    "AdaptiveKLController",
    "AdvantageEstimator",
    "AdvantageInput",
    "Entry",
    "FixedKLController",
    "KLController",
    "PluginLoadError",
    "PreferenceLoss",
    "RankedLogps",
    "Registry",
    "UnknownNameError",
    "advantage_estimators",
    "discounted_returns",
    "dpo_loss",
    "entropy_from_logits",
    "gae",
    "get_advantage",
    "get_preference_loss",
    "grpo_advantages",
    "kl_estimate",
    "kl_penalized_rewards",
    "load_plugins",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "plackett_luce_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "preference_losses",
    "preference_metrics",
    "register_advantage",
    "register_preference_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "sequence_logps",
    "target_logps",
]
