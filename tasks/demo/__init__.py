"""Demos that run the whole system for real on data made here: the synthetic world (``world.py``)."""
