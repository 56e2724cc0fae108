"""The Appendix A.6 study: forms of Q fitted on a frozen model and measured exactly (``python -m experiments.a6``)."""
