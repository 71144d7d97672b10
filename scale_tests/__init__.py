"""Capacity and fault scenarios against simulated device fleets, and the `bench` measurements."""
