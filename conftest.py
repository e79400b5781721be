"""Test-session settings shared by the unit tests and the nbval notebook runs.

nbval executes notebooks as committed; their `scale = None` default reads $PURIFY_SCALE, which the suite
sets to `smoke` (kernels inherit this process's environment).
"""
import os

os.environ.setdefault("PURIFY_SCALE", "smoke")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")
