"""Stage functions: ``run(spark, cfg, run_date) -> summary dict``.

The CLI, the spark-submit jobs, the Airflow tasks and the tests all call these.
"""
