#!/usr/bin/env bash
# Spark GPU discovery script (spark.{worker,executor}.resource.gpu.discoveryScript):
# prints this host's GPUs as Spark's ResourceInformation JSON, e.g.
# {"name": "gpu", "addresses": ["0","1"]}. Needs nvidia-smi on the host.
set -euo pipefail
addresses="$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, - | sed 's/,/","/g')"
echo "{\"name\": \"gpu\", \"addresses\": [\"$addresses\"]}"
