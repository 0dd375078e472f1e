"""An example rlhf plugin, installed as its own distribution (``rlhf-example-plugin``).

``rlhf_example_plugin.rrhf`` registers the preference loss ``rrhf`` and
``rlhf_example_plugin.rewards`` the reward function ``brief_sentiment``. Neither is imported
here: rlhf imports each module through its ``rlhf.algorithms`` entry point (``pyproject.toml``).
"""
