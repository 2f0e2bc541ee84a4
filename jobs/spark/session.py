"""Starting the driver's SparkSession, with one retry for a race in Spark's
YARN client mode.

In client mode the YARN application master, once registered, sends the
driver its web UI filter (YARN's AmIpFilter), and the driver's RPC thread
adds it to every UI handler while the driver's main thread, told by the
ResourceManager that the application runs, may be attaching and starting
those same handlers (`SparkUI.attachAllHandlers`, which takes no lock).
When the two meet, SparkContext's start fails with
`java.util.ConcurrentModificationException` in Jetty's
`ServletHandler.initialize`, before any job code has run. Seen here on the
local YARN beside a busy test worker (Spark 4.2.0: the driver's log had
"Error initializing SparkContext." with that trace, the application
master's "RpcEnv already stopped"). No work has started then, so the
session is started once more, as a new YARN application, and the log says
so; any other failure is raised as it is."""

from __future__ import annotations

import logging

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Both must appear in the Java trace Py4J carries in the exception's text.
UI_FILTER_RACE = ("java.util.ConcurrentModificationException", "ServletHandler.initialize")


def is_ui_filter_race(exc: BaseException) -> bool:
    """Whether exc is SparkContext's start failing on the UI filter race."""
    text = str(exc)
    return all(marker in text for marker in UI_FILTER_RACE)


def start(app_name: str, attempts: int = 2) -> SparkSession:
    """SparkSession.builder.appName(app_name).getOrCreate(), started again
    (up to attempts in all) only where the start lost the UI filter race."""
    for attempt in range(1, attempts):
        try:
            return SparkSession.builder.appName(app_name).getOrCreate()
        except Exception as exc:
            if not is_ui_filter_race(exc):
                raise
            log.warning(
                "Spark's start lost the YARN UI filter race (java.util.ConcurrentModificationException in "
                "ServletHandler.initialize, before any work): starting the session again (attempt %d of %d)",
                attempt + 1,
                attempts,
            )
    return SparkSession.builder.appName(app_name).getOrCreate()
