"""Ways to run the runtime inside engines that are not ours (Apache Flink).

Nothing here is imported by ``runtime/``; each integration needs its engine's own packages.
"""
