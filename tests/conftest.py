import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "nfopt",
    max_examples=int(os.environ.get("NFOPT_HYPOTHESIS_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("nfopt")
