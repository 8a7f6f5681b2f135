"""`launcher bench`: throughput of a recipe's model and data shape, ours beside HF Trainer.

Every configuration (runner x strategy x batch) runs as its own torchrun job on one node and
writes one result (RESULT_FIELDS in launcher/engine/step_timer.py, which both runners use);
`report.py` turns the results into REPORT.md, report.json, plots and a table. FLOPs are counted
by launcher/engine/flops.py (the engine counts them too, and imports nothing from here).
"""
