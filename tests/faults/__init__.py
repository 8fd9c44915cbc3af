"""Fault-injection kit: hostile peers and broken infrastructure that tests of any feature can reuse."""
