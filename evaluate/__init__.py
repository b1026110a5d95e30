"""cascadevsr.evaluate: metrics, evaluation runs, baselines and leaderboard ingest.

Layering, bottom up: ``weights`` (pinned offline files) → ``pixel``, ``niqe``, ``nets``, ``temporal``,
``pyiqa_bridge`` (the measurements) → ``metrics`` (the table of specs, ``create_metric``) → ``clips``,
``methods``, ``realesrgan`` (what gets scored) → ``run`` (resumable parquet runs) → ``command`` (the CLI).
Imports only the core (``cascadevsr.paths``, ``cascadevsr.video``, ``cascadevsr.errors``).
"""
