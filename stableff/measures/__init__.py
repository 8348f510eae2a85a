"""What training and analysis both compute (docs/method.md): the edge-feature correlation matrix R
and corr_l, prediction over a dataset, and the error metrics. Sits above models (it runs them) and
below train, md and analysis (which all use it)."""
