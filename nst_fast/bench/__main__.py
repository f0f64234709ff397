"""One isolated step measurement, as :func:`nst_fast.bench.measure_step_isolated` runs it:
``python -m nst_fast.bench '{"backend": ..., "precision": ..., ...}'`` prints the measurement as JSON."""

import json
import sys
from dataclasses import asdict

from .steps import measure_step

print(json.dumps(asdict(measure_step(**json.loads(sys.argv[1])))))
