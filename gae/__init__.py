"""gaeflow: token-level advantage estimation and the RL fine-tuning workflow around it.

Importing this package is cheap on purpose: heavy libraries (torch, prefect,
mlflow, duckdb) are imported by the modules that need them, when they are used.
"""

__version__ = "0.1.0"
