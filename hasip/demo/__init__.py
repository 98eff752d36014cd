"""The demo: a node on its embedded defaults between SIPp caller and
answering nodes. The SIPp scenarios in ``sipp/`` are shared with the tests and
the benchmark."""

from pathlib import Path

SCENARIOS = Path(__file__).parent / "sipp"
