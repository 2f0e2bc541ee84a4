"""Local infrastructure the project starts itself: the Hadoop home and a
single-node HDFS. Nothing here is imported by the jobs or the UDFs."""
