"""Each sensor's LSTM stream in Apache Flink's keyed state; see docs/flink.md.

``records`` and ``batch`` need numpy and the runtime only; ``operators``, ``job``
and ``bench`` need PyFlink (``make flink-env`` builds ``.venv-flink`` for them).
"""
