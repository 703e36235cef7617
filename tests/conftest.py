"""Shared test configuration: hypothesis profiles (``make soak`` runs the long one)."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "soak", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("PYFLANK_HYPOTHESIS_PROFILE", "default"))
