"""Delegation: who may act on which BAL, with which rights."""
