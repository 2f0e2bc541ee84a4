"""A small Spark application that loads the classes the jobs' drivers load
(infra/cds.py runs it once with -XX:ArchiveClassesAtExit): text and JSON
reads, Arrow to and from pandas, a pandas UDF and mapInPandas, a shuffle, a
broadcast join, a cached frame, Parquet and JSON written and read back.

    spark-submit infra/cds_warmup.py WORK_DIR

(No `from __future__ import annotations`: pandas_udf reads its type hints.)
"""

import json
import sys
from pathlib import Path


def main(work: str) -> None:
    import pandas as pd
    from pyspark import StorageLevel
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    base = Path(work)
    raw = base / "raw.jsonl"
    raw.write_text("".join(json.dumps({"id": i, "text": f"word {i % 7} text", "v": i / 3}) + "\n" for i in range(200)))
    spark = (
        SparkSession.builder.appName("aibatch-cds-warmup")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    lines = spark.read.text(str(raw))
    parsed = spark.read.json(str(raw)).persist(StorageLevel.MEMORY_AND_DISK)

    def upper(batches):
        for frame in batches:
            yield frame.assign(text=frame["text"].str.upper())

    @pandas_udf("double")
    def double(v: pd.Series) -> pd.Series:
        return v * 2

    mapped = parsed.mapInPandas(upper, parsed.schema).withColumn("d", double("v"))
    counts = mapped.groupBy(F.col("text")).agg(F.count("*").alias("n"), F.sum("d").alias("s"))
    small = spark.createDataFrame(pd.DataFrame({"text": ["WORD 1 TEXT"], "tag": ["one"]}))
    joined = counts.join(F.broadcast(small), "text", "left").orderBy("text")
    joined.write.mode("overwrite").parquet(str(base / "out.parquet"))
    mapped.write.mode("overwrite").json(str(base / "out.json"))
    back = spark.read.parquet(str(base / "out.parquet"))
    assert back.count() == 7 and lines.count() == 200
    assert back.toPandas()["n"].sum() == 200
    words = lines.select(F.explode(F.split("value", " ")).alias("w")).distinct().collect()
    assert words
    parsed.unpersist()
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1])
