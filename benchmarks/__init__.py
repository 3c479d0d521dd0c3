"""Side-by-side benchmarks of velopyro against velovi 0.3.1 (run as ``python -m benchmarks.run_all``)."""
