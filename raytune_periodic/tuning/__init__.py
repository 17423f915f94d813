"""Ray Tune integration: methods (searches), the period trainable, MLflow callback, runner.

``methods`` is importable without Ray (config validation uses it); everything that needs Ray
imports it inside functions or in ``trainable``/``mlflow_callback``/``runner``.
"""
