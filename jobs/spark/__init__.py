"""spark-submit entry points (run them through ./submit.sh)."""
