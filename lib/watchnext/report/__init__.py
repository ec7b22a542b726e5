"""The run report: one self-contained HTML page per run date (``watchnext report``, stages/report.py).

``data`` reduces the run's tables to small pandas frames, ``runs`` reads the stage runs from MLflow,
``plots`` draws them with matplotlib and ``html`` renders the page.
"""
