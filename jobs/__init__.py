"""Job entry points: jobs/spark for spark-submit, jobs/mapreduce for mrjob."""
