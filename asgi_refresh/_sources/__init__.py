"""Sources: the family of things a refresher fetches from. base.py is the contract."""
