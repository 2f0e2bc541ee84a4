"""What both engines apply to records, as plain Python over batches.

Only udfs/spark.py imports pyspark; nothing here imports mrjob or jobs/.
"""
