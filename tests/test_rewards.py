"""The reward sources' import-time contract (their scoring is tested in tests/actors/test_reward.py)."""

import subprocess
import sys


def test_a_reward_function_actor_imports_no_torch():
    # A reward actor of a reward function starts in each online job: its registries
    # (rlhf.registry) and the embedded task's reward must not pull in torch (about 3 CPU-s of
    # every job's start-up on these machines), Ray's client or the engines.
    code = (
        "import sys, actors.reward; "
        "from rlhf.rewards import reward_functions; "
        "reward_functions.get('sentiment')(['a prompt'], [' a response']); "
        "heavy = {'torch', 'ray', 'vllm', 'deepspeed', 'transformers', 'numpy'}; "
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
