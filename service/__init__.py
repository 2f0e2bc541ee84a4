"""The aibatch service: a versioned REST API over the registered models, online
scoring and batch runs (docs/service.md). Start it with `python -m service`
or `./submit.sh serve`."""
