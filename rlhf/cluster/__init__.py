"""Running on a Ray cluster: does the config fit it (``resources``), and the Jobs API (``jobs``).

Nothing here is imported by the training code's import path except ``resources``, which needs
Ray only when it reads the live cluster.
"""
