"""Every benchmark, one after another: ``.venv/bin/python -m bench``.

load_bench (parse floors, HTTP floor, throughput, /healthz under big screens), cds_bench (CDS
Hooks with full prefetch at 1, 4 and 16 concurrent calls) and fetch_bench (EHR fetch depth and
the aiohttp client floor; needs the FHIR test server that ``bash tests/run`` installs)."""

import subprocess
import sys

for module in ("bench.load_bench", "bench.cds_bench", "bench.fetch_bench"):
    print(f"=== python -m {module}", flush=True)
    subprocess.run([sys.executable, "-m", module], check=False)
