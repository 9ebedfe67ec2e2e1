"""`featurehead report`: a head's evaluation on a store as one offline HTML page.

`run` is the runner (`run_report`); `data` computes the page's numbers, `plots` its figures and `html` renders it.
"""

from .run import ReportResult, run_report

__all__ = ["ReportResult", "run_report"]
