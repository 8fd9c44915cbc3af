"""Coordinators: the family of backends that give one fetch per cluster. base.py is the contract."""
