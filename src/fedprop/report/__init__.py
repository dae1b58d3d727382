"""The HTML report of a federated propensity job, for the bank's data team.

:func:`render_report_html` turns the results dictionary written by ``fedprop demo``
(``results.json``) into one self-contained HTML page; :func:`write_report` writes that
page to ``report.html`` in an output folder. Charts are drawn by
:mod:`fedprop.report.plots`.
"""

from fedprop.report.html import render_report_html, write_report
from fedprop.report.plots import ReportDataError

__all__ = ["ReportDataError", "render_report_html", "write_report"]
