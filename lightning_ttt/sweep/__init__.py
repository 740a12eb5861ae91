"""The context-length sweep (``ttt sweep``): the sweep file, its plan, the runner and the report.

``spec`` reads the file, ``plan`` turns it into steps, ``run`` executes them one process each, and
``report`` rebuilds the summary and figures from the finished evaluations on disk.
"""
