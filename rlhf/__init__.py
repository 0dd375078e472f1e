"""rlhf: DPO, Plackett-Luce and PPO on Ray, with vLLM engines and DeepSpeed trainers."""

__version__ = "0.1.0"
