"""Training loops by name: ``algorithm: dpo`` in a config picks the loop ``rlhf train`` runs.

A loop is a function ``run(cfg, resume=False)`` registered with its config class::

    @register_loop("my_algo", config=MyConfig, stages=my_stages, schedule=my_schedule)
    def run(cfg: MyConfig, resume: bool = False) -> Path: ...

``rlhf train CONFIG --dry-run`` (``rlhf.driver.plan``) reads two optional entries:
``stages(cfg)``, the Ray roles the job holds at the same time, one list per stage (as given to
``ray_session``); and ``schedule(cfg, model_path)``, which reads and checks the job's data or
prompts and returns lines that say how long it runs (steps, rounds).

Plugins register theirs through the ``rlhf.algorithms`` entry points like any other kind.
"""

from __future__ import annotations

from rlhf.algorithms.registry import Registry

training_loops = Registry("training_loop", ("cfg", "resume"), returns="the run directory")
register_loop = training_loops.register
get_loop = training_loops.get

# The built-in loops register themselves when imported.
BUILTIN_LOOPS = ("rlhf.driver.dpo", "rlhf.driver.online_dpo", "rlhf.driver.ppo")
