"""mrjob twins of the Spark jobs."""
